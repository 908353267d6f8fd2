"""The BLS model's request handling: a text request in, its stream of text responses out, over
the engine model; `stop=true` ends the request with its id, even one that arrives after it.

Requests queue here, not in the engine, once `max_pending` engine calls are waiting for their
first response. In Triton 2.51 each such call holds a thread of the Python backend's pool (32
per model instance) until that response comes, and the BLS's own responses and `stop` calls
need the same pool: a deep engine queue used to stall every stream, stops included, until the
running requests had finished. Past `max_in_flight`, requests are refused as "unavailable".
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from moe_engine.python_backend.bls_images import (
    ImageModels,
    StepFailed,
    check_text_only,
    has_images,
    with_images,
)
from moe_engine.python_backend.bls_stream import Chunk, Client, TextState, relay
from moe_engine.python_backend.inflight import Inflight
from moe_engine.python_backend.responses import ResponseKit, Sender
from moe_engine.python_backend.serving import InputError, scalar
from moe_engine.python_backend.text import TokenizerInfo, encode
from moe_engine.sampler import MAX_NUM_LOGPROBS

logger = logging.getLogger(__name__)

# Inputs forwarded to `tensorrt_llm` unchanged (name here -> name there, dtype).
_FORWARD = {
    "temperature": ("temperature", np.float32),
    "top_k": ("runtime_top_k", np.int32),
    "top_p": ("runtime_top_p", np.float32),
    "seed": ("seed", np.uint64),
    "presence_penalty": ("presence_penalty", np.float32),
    "frequency_penalty": ("frequency_penalty", np.float32),
    "repetition_penalty": ("repetition_penalty", np.float32),
    "min_tokens": ("min_tokens", np.int32),
    "ignore_eos": ("ignore_eos", np.bool_),
    "return_log_probs": ("return_log_probs", np.bool_),
    "end_id": ("end_id", np.int32),
    "pad_id": ("pad_id", np.int32),
    "num_logprobs": ("num_logprobs", np.int32),
    "guided_decoding_guide_type": ("guided_decoding_guide_type", np.object_),
    "guided_decoding_guide": ("guided_decoding_guide", np.object_),
}
# Stop strings are matched on every delta, on the thread that serves every request: bound the work.
MAX_STOP_STRINGS = 32
MAX_STOP_CHARS = 256


@dataclass(frozen=True)
class Generation:
    """One BLS request, parsed: what to ask the engine model and how to answer the client."""

    request_id: str  # the engine request's id (ours, unique)
    inputs: dict[str, np.ndarray]  # the engine model's input tensors
    outputs: list[str]  # the engine model's outputs to ask for
    max_tokens: int
    prompt_tokens: int
    stream: bool
    logprobs: bool
    stop: list[str]
    num_logprobs: int = 0  # top alternatives per token, forwarded and relayed


class EngineModel(Protocol):
    """The engine model as the BLS calls it."""

    def generate(self, generation: Generation) -> AsyncIterator[Chunk]: ...

    async def stop(self, request_id: str) -> None: ...


def parse_generation(
    inputs: Mapping[str, np.ndarray], tok: TokenizerInfo, *, max_prompt_chars: int = 0
) -> Generation:
    """The engine request for a BLS request's inputs; InputError (a ValueError) names what is
    wrong. `max_prompt_chars` (> 0) refuses, before tokenising, a text too long to fit."""
    text = inputs.get("text_input")
    if text is None or text.size == 0:
        raise InputError("input 'text_input' is required")
    if text.size > 1:
        raise InputError(f"text_input holds a batch of {text.size} prompts; send one each")
    prompt = scalar(inputs, "text_input")
    if max_prompt_chars > 0 and len(prompt) > max_prompt_chars:
        raise InputError(
            f"text_input of {len(prompt)} characters is longer than the context can hold"
        )
    max_tokens = scalar(inputs, "max_tokens")
    if max_tokens is None or int(max_tokens) < 1:
        raise InputError("max_tokens must be a positive integer")
    stop = [s.decode("utf-8") for s in inputs.get("stop_words", np.empty(0)).reshape(-1)]
    if len(stop) > MAX_STOP_STRINGS:
        raise InputError(f"at most {MAX_STOP_STRINGS} stop_words are accepted, got {len(stop)}")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise InputError(f"stop_words must be at most {MAX_STOP_CHARS} characters each")
    ids = encode(tok, prompt)
    if not ids:
        raise InputError("text_input encodes to no tokens")
    logprobs = bool(scalar(inputs, "return_log_probs", False))
    num_logprobs = int(scalar(inputs, "num_logprobs", 0))
    if not 0 <= num_logprobs <= MAX_NUM_LOGPROBS:
        raise InputError(f"num_logprobs must be in [0, {MAX_NUM_LOGPROBS}], got {num_logprobs}")
    tensors = {
        "input_ids": np.asarray([ids], dtype=np.int32),
        "input_lengths": np.asarray([[len(ids)]], dtype=np.int32),
        "request_output_len": np.asarray([[int(max_tokens)]], dtype=np.int32),
        "streaming": np.asarray([[True]], dtype=np.bool_),
    }
    for name, (target, dtype) in _FORWARD.items():
        value = scalar(inputs, name)
        if value is not None:
            value = value.encode("utf-8") if isinstance(value, str) else value
            tensors[target] = np.asarray([[value]], dtype=dtype)
    return Generation(
        request_id=uuid.uuid4().hex,
        inputs=tensors,
        outputs=[
            "output_ids",
            *(["output_log_probs"] if logprobs else []),
            *(["top_token_ids", "top_log_probs"] if num_logprobs else []),
        ],
        max_tokens=int(max_tokens),
        prompt_tokens=len(ids),
        stream=bool(scalar(inputs, "stream", False)),
        logprobs=logprobs,
        stop=stop,
        num_logprobs=num_logprobs,
    )


def stop_inputs() -> dict[str, np.ndarray]:
    """The engine model's inputs of a `stop=true` request (its id says which one it ends)."""
    return {
        "input_ids": np.zeros((1, 1), dtype=np.int32),
        "input_lengths": np.ones((1, 1), dtype=np.int32),
        "request_output_len": np.ones((1, 1), dtype=np.int32),
        "stop": np.asarray([[True]], dtype=np.bool_),
    }


class BlsRequests:
    """Serves BLS requests on one event loop; `handle` is a request's whole life."""

    def __init__(
        self,
        tok: TokenizerInfo,
        engine: EngineModel,
        kit: ResponseKit,
        *,
        max_context_len: int = 0,
        max_in_flight: int = 1024,
        max_pending: int = 16,
        cancel_poll_interval_s: float = 0.02,
        images: ImageModels | None = None,
        image_token_id: int | None = None,
    ) -> None:
        self._tok = tok
        self._engine = engine
        self._images = images  # None: a text-only model, image inputs refused
        self._image_token = image_token_id
        self._kit = kit
        self._poll_s = cancel_poll_interval_s
        # No token is longer than the longest vocabulary entry, so a text longer than this
        # cannot fit the context, and is refused without the cost of tokenising it.
        longest = max((len(t) for t in tok.tokenizer.get_vocab()), default=1)
        self._max_prompt_chars = max_context_len * longest if max_context_len > 0 else 0
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        # In-flight requests by client id, for `stop` requests (the gateway's cancellation).
        self._clients: Inflight[Client] = Inflight()
        self._admission = Admission(max_pending, cancel_poll_interval_s)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def handle(
        self, client_id: str, inputs: Mapping[str, np.ndarray], sender: Sender
    ) -> None:
        """Serve one request; whatever fails, its engine request stops and a final is sent."""
        final = self._kit.final_flag
        client = Client(sender, final, self._engine.stop, poll_interval_s=self._poll_s)
        if scalar(inputs, "stop", False):
            await self._stop_client(client_id)
            client.send(None, final)
            return
        if self._max_in_flight > 0 and self._in_flight >= self._max_in_flight:
            message = f"{self._in_flight} requests in flight, the limit; retry later"
            client.send(self._kit.error(message, "unavailable"), final)
            return
        if not self._clients.add(client_id, client):
            client.send(None, final)  # stopped before it got here
            return
        self._in_flight += 1
        try:
            await self._serve(inputs, client)
        except Exception as exc:
            logger.error("tensorrt_llm_bls: request failed: %r", exc)
            with contextlib.suppress(Exception):
                await client.stop_engine()
            if not client.closed:
                with contextlib.suppress(Exception):
                    error = self._kit.error(f"generation failed: {exc}", "internal")
                    client.send(error, final)
        finally:
            self._in_flight -= 1
            self._clients.remove(client_id, client)

    async def _stop_client(self, client_id: str) -> None:
        """End the in-flight requests with this client id: a `stop` request arrived for them."""
        for client in self._clients.stop(client_id):
            client.stopped = True
            self._admission.drop(client)
            await client.stop_engine()

    async def _serve(self, inputs: Mapping[str, np.ndarray], client: Client) -> None:
        final = self._kit.final_flag
        try:
            call = parse_generation(inputs, self._tok, max_prompt_chars=self._max_prompt_chars)
            if has_images(inputs):
                call = await with_images(call, inputs, self._images)
            else:
                check_text_only(call, self._image_token)
        except ValueError as exc:  # InputError, and UnicodeDecodeError of a stop word
            client.send(self._kit.error(str(exc), "invalid"), final)
            return
        except StepFailed as exc:  # preprocessing or the encoder refused or failed
            client.send(self._kit.error(exc.message, exc.kind), final)
            return
        state = TextState(
            self._tok.tokenizer,
            call.stop,
            call.max_tokens,
            stream=call.stream,
            logprobs=call.logprobs,
            num_logprobs=call.num_logprobs,
        )
        if not await self._admission.enter(client):
            client.send(None, final)  # gone while it waited
            return
        permit = _Permit(self._admission)
        try:
            if client.stopped:
                client.send(None, final)
                return
            client.engine_id = call.request_id
            await relay(
                self._engine.generate(call),
                state,
                client,
                self._kit,
                prompt_tokens=call.prompt_tokens,
                on_first=permit.release,
            )
        finally:
            permit.release()


class Admission:
    """At most `limit` requests at a time between being sent to the engine and its first
    response; the others wait in arrival order, their clients asked in turns (`poll_batch` per
    period) whether they went away."""

    def __init__(self, limit: int, poll_interval_s: float = 0.02, poll_batch: int = 32) -> None:
        self._free = max(1, limit)
        self._waiting: dict[Client, asyncio.Future[bool]] = {}  # in arrival order
        self._interval_s = poll_interval_s
        self._batch = poll_batch
        self._turn = 0
        self._poller: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def enter(self, client: Client) -> bool:
        """Wait for a place; False if the client went away meanwhile (no place taken)."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return True
        future = asyncio.get_running_loop().create_future()
        self._waiting[client] = future
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll())
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.result():
                self.leave()  # given a place just as it was cancelled: pass it on
            raise
        finally:
            self._waiting.pop(client, None)

    def leave(self) -> None:
        """Give the place back: to the longest waiting request, if any."""
        for client, future in list(self._waiting.items()):
            del self._waiting[client]
            if not future.done():
                future.set_result(True)
                return
        self._free += 1

    def drop(self, client: Client) -> None:
        """Stop waiting for `client` (a `stop` came for it)."""
        future = self._waiting.pop(client, None)
        if future is not None and not future.done():
            future.set_result(False)

    async def _poll(self) -> None:
        try:
            while self._waiting:
                await asyncio.sleep(self._interval_s)
                clients = list(self._waiting)
                if not clients:
                    break
                start = self._turn % len(clients)
                turn = itertools.islice(itertools.cycle(clients), start, start + self._batch)
                self._turn = start + self._batch
                for client in dict.fromkeys(turn):
                    if client in self._waiting and client.cancelled():
                        self.drop(client)
        finally:
            self._poller = None


class _Permit:
    """An admission place, given back once (at the first response, or at the end)."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission

    def release(self) -> None:
        if self._admission is not None:
            self._admission, admission = None, self._admission
            admission.leave()

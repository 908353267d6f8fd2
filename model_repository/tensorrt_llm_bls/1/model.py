"""The gateway's default route: text in, text deltas out, over the `tensorrt_llm` model.

Unlike the ensemble (which detokenises each streamed chunk alone and so drops spaces and splits
multi-byte characters), this model keeps per-request detokeniser state, cuts stop strings before
they are emitted, and reports `finish_reason` and token counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import triton_python_backend_utils as pb_utils

from moe_engine.serving import InputError, scalar
from moe_engine.text import IncrementalDetokenizer, StopStringMatcher, encode, load_tokenizer

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
}


# BLS decoupled responses come from a blocking iterator; each in-flight request waits for its
# next response on one of these threads so the event loop keeps serving the others.
_WAITERS = ThreadPoolExecutor(max_workers=256, thread_name_prefix="bls-wait")
_DONE = object()
_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# Ids of `stop` requests that found nothing in flight, remembered in case theirs comes later.
_EARLY_STOPS = 1024
# is_cancelled() is a round trip to the server process: ask at most this often per request, not
# on every token. `stop` requests (the gateway's cancellation) act on the next token regardless.
_CANCEL_POLL_S = 0.02


async def _responses(iterator: Iterator) -> AsyncIterator:
    loop = asyncio.get_running_loop()
    while (item := await loop.run_in_executor(_WAITERS, next, iterator, _DONE)) is not _DONE:
        yield item


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.tok = load_tokenizer(params["tokenizer_dir"])
        self.llm = params.get("tensorrt_llm_model_name", "tensorrt_llm")
        # In-flight requests by client id, for `stop` requests (the gateway's cancellation).
        self._inflight: dict[str, _Sender] = {}
        self._early_stops: dict[str, bool] = {}

    async def execute(self, requests: list) -> None:
        await asyncio.gather(*(self._generate(r) for r in requests))
        return None

    async def _generate(self, request) -> None:
        """Serve one request; whatever fails, the engine request stops and a final is sent."""
        sender = _Sender(request.get_response_sender())
        client_id = request.request_id()
        inputs = {t.name(): t.as_numpy() for t in request.inputs()}
        if scalar(inputs, "stop", False):
            await self._stop_client(client_id)
            sender.send(flags=_FINAL)
            return
        if client_id:
            if self._early_stops.pop(client_id, False):
                sender.send(flags=_FINAL)  # stopped before it got here
                return
            self._inflight[client_id] = sender
        try:
            await self._serve(request, inputs, sender)
        except Exception as exc:
            pb_utils.Logger.log_error(f"tensorrt_llm_bls: request failed: {exc!r}")
            if sender.engine_request_id:
                with contextlib.suppress(Exception):
                    await self._stop(sender.engine_request_id)
            if not sender.closed:
                error = pb_utils.TritonError(f"generation failed: {exc}")
                with contextlib.suppress(Exception):
                    sender.send(pb_utils.InferenceResponse(error=error), flags=_FINAL)
        finally:
            if client_id and self._inflight.get(client_id) is sender:
                del self._inflight[client_id]

    async def _stop_client(self, client_id: str) -> None:
        """End the in-flight request with this client id: a `stop` request arrived for it."""
        sender = self._inflight.get(client_id)
        if sender is None:
            self._early_stops[client_id] = True
            if len(self._early_stops) > _EARLY_STOPS:
                del self._early_stops[next(iter(self._early_stops))]
            return
        sender.stopped = True
        if sender.engine_request_id:
            await self._stop(sender.engine_request_id)

    async def _serve(self, request, inputs: dict, sender: _Sender) -> None:
        final = _FINAL
        try:
            call = self._llm_request(inputs)
            stops = [s.decode("utf-8") for s in inputs.get("stop_words", np.empty(0)).reshape(-1)]
        except (InputError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
            sender.send(pb_utils.InferenceResponse(error=error), flags=final)
            return
        stream = bool(scalar(inputs, "stream", False))
        detok = IncrementalDetokenizer(self.tok.tokenizer)
        matcher = StopStringMatcher(stops)
        want_lp = call.logprobs
        text, logprobs, generated, reason = [], [], 0, ""
        if sender.stopped:
            sender.send(flags=final)
            return
        sender.engine_request_id = call.request_id
        next_poll = time.monotonic() + _CANCEL_POLL_S
        async for response in _responses(await call.infer.async_exec(decoupled=True)):
            if reason:
                continue  # drain what the engine sent before it saw our stop
            if response.has_error():
                sender.send(pb_utils.InferenceResponse(error=response.error()), flags=final)
                return
            now = time.monotonic()
            if not sender.stopped and now >= next_poll:
                next_poll = now + _CANCEL_POLL_S
                sender.stopped = request.is_cancelled()
            if sender.stopped:
                reason = "cancelled"
                await self._stop(call.request_id)
                continue
            ids_tensor = pb_utils.get_output_tensor_by_name(response, "output_ids")
            if ids_tensor is None:
                continue  # the empty final response
            ids = ids_tensor.as_numpy().reshape(-1)
            ids = ids[ids >= 0].tolist()
            generated += len(ids)
            delta = matcher.feed(detok.add(ids))
            lp = pb_utils.get_output_tensor_by_name(response, "output_log_probs")
            if lp is not None and want_lp:
                logprobs.extend(lp.as_numpy().reshape(-1).tolist()[: len(ids)])
            if matcher.stopped:
                reason = "stop"
                await self._stop(call.request_id)
            elif generated >= call.max_tokens:
                reason = "length"
            if not stream:
                text.append(delta)
            elif delta:
                # Logprobs travel with the text they belong to, held back with it if need be.
                self._send(sender, delta, "", call, generated, logprobs if want_lp else None)
                logprobs = []
        if not reason:
            reason = "stop"  # the engine ended on an end id before max_tokens
        sender.engine_request_id = None  # finished: nothing left to stop
        if reason == "cancelled":
            sender.send(flags=final)
            return
        tail = "" if matcher.stopped else matcher.feed(detok.flush()) + matcher.flush()
        body = tail if stream else "".join(text) + tail
        self._send(sender, body, reason, call, generated, (logprobs if want_lp else None), final)

    def _llm_request(self, inputs: dict) -> _Call:
        want_lp = bool(scalar(inputs, "return_log_probs", False))
        prompt = scalar(inputs, "text_input")
        if prompt is None:
            raise InputError("input 'text_input' is required")
        max_tokens = scalar(inputs, "max_tokens")
        if max_tokens is None or int(max_tokens) < 1:
            raise InputError("max_tokens must be a positive integer")
        ids = encode(self.tok, prompt)
        if not ids:
            raise InputError("text_input encodes to no tokens")
        tensors = [
            pb_utils.Tensor("input_ids", np.asarray([ids], dtype=np.int32)),
            pb_utils.Tensor("input_lengths", np.asarray([[len(ids)]], dtype=np.int32)),
            pb_utils.Tensor("request_output_len", np.asarray([[int(max_tokens)]], dtype=np.int32)),
            pb_utils.Tensor("streaming", np.asarray([[True]], dtype=np.bool_)),
        ]
        for name, (target, dtype) in _FORWARD.items():
            value = scalar(inputs, name)
            if value is not None:
                tensors.append(pb_utils.Tensor(target, np.asarray([[value]], dtype=dtype)))
        request_id = uuid.uuid4().hex
        infer = pb_utils.InferenceRequest(
            model_name=self.llm,
            inputs=tensors,
            requested_output_names=["output_ids", *(["output_log_probs"] if want_lp else [])],
            request_id=request_id,
        )
        return _Call(infer, request_id, int(max_tokens), len(ids), want_lp)

    async def _stop(self, request_id: str) -> None:
        """Cancel an in-flight engine request the TensorRT-LLM way: `stop=true` with its id."""
        stop = pb_utils.InferenceRequest(
            model_name=self.llm,
            inputs=[
                pb_utils.Tensor("input_ids", np.zeros((1, 1), dtype=np.int32)),
                pb_utils.Tensor("input_lengths", np.ones((1, 1), dtype=np.int32)),
                pb_utils.Tensor("request_output_len", np.ones((1, 1), dtype=np.int32)),
                pb_utils.Tensor("stop", np.asarray([[True]], dtype=np.bool_)),
            ],
            requested_output_names=["output_ids"],
            request_id=request_id,
        )
        async for _ in _responses(await stop.async_exec(decoupled=True)):
            pass

    def _send(self, sender, text, reason, call, generated, logprobs, flags=0) -> None:
        tensors = [
            pb_utils.Tensor("text_output", np.asarray([[text.encode("utf-8")]], dtype=np.object_)),
            pb_utils.Tensor("num_output_tokens", np.asarray([[generated]], dtype=np.int32)),
        ]
        if flags & _FINAL:
            # What does not change token by token goes out once, with the final response.
            tensors += [
                pb_utils.Tensor("finish_reason", np.asarray([[reason.encode()]], dtype=np.object_)),
                pb_utils.Tensor(
                    "num_input_tokens", np.asarray([[call.prompt_tokens]], dtype=np.int32)
                ),
            ]
        if logprobs is not None:
            tensors.append(
                pb_utils.Tensor("output_log_probs", np.asarray([logprobs], dtype=np.float32))
            )
        sender.send(pb_utils.InferenceResponse(output_tensors=tensors), flags=flags)


class _Sender:
    """A response sender that remembers whether the final response went out."""

    def __init__(self, sender) -> None:
        self._sender = sender
        self.closed = False
        self.engine_request_id: str | None = None
        self.stopped = False

    def send(self, response=None, flags: int = 0) -> None:
        if flags & _FINAL:
            self.closed = True
        if response is None:
            self._sender.send(flags=flags)
        else:
            self._sender.send(response, flags=flags)


@dataclass
class _Call:
    """One request to the engine model and what the response loop needs to know about it."""

    infer: object
    request_id: str
    max_tokens: int
    prompt_tokens: int
    logprobs: bool

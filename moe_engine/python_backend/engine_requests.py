"""The `tensorrt_llm` model's request handling: TensorRT-LLM request tensors in, engine requests
out, each with exactly one final response.

`stop=true` ends the requests in flight with its client id (even ones that arrive after it), a
full engine queue refuses new requests with an "unavailable" error, and every response goes
through one outbox thread that also notices clients that went away (see `outbox`).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Collection

import torch

from moe_engine.engine import Engine, StepOutput
from moe_engine.python_backend.inflight import Inflight
from moe_engine.python_backend.outbox import Outbox
from moe_engine.python_backend.responder import Responder
from moe_engine.python_backend.responses import ErrorKind, ResponseKit, Sender
from moe_engine.python_backend.serving import (
    InputError,
    Inputs,
    input_ids,
    prompt_table,
    sampling_kwargs,
    scalar,
)
from moe_engine.sampler import SamplingParams


class Overloaded(RuntimeError):
    """The engine's queue is full; the client may retry later."""


class EngineRequests:
    """Admits requests into `engine` and sends their responses; call `close` at the end."""

    def __init__(
        self,
        engine: Engine,
        kit: ResponseKit,
        *,
        default_end_ids: tuple[int, ...],
        cancel_poll_interval_s: float = 0.02,
        max_queue_size: int = 1024,
    ) -> None:
        self.engine = engine
        self._kit = kit
        self._default_end_ids = default_end_ids
        # Triton request ids are the client's and need not be unique (the ensemble copies the
        # client's id to every step), so the engine gets its own; `stop` finds them by client id.
        self._ids: Inflight[str] = Inflight()
        # `stop` requests (what the BLS and the gateway send) act within a step; a client that
        # just drops its stream is noticed by the outbox, every 20 ms by default.
        self._outbox = Outbox(
            engine.cancel, final_flag=kit.final_flag, poll_interval_s=cancel_poll_interval_s
        )
        # Requests beyond the engine's slots wait in its queue; past this many, they are refused
        # rather than left to pile up without bound (<= 0: no bound).
        self._max_in_flight = engine.max_batch_size + max_queue_size if max_queue_size > 0 else 0
        self._lock = threading.Lock()
        self._in_flight = 0

    def handle(
        self, client_id: str, inputs: Inputs, sender: Sender, wanted: Collection[str] = ()
    ) -> None:
        """Serve one request; `wanted` names the outputs to send (none named: all)."""
        final = self._kit.final_flag
        if scalar(inputs, "stop", False):
            # TensorRT-LLM semantics: a request with stop=true cancels the ones with its id.
            for engine_id in self._ids.stop(client_id):
                self.engine.cancel(engine_id)
            sender.send(None, final)
            return
        try:
            prompt = input_ids(inputs)
            table, extra_ids = prompt_table(inputs)
            params = SamplingParams(**sampling_kwargs(inputs, self._default_end_ids))
            if (
                int(scalar(inputs, "num_return_sequences", 1)) != 1
                or int(scalar(inputs, "beam_width", 1)) != 1
            ):
                raise InputError("only beam_width=1 and num_return_sequences=1 are supported")
            streaming = bool(scalar(inputs, "streaming", False))
            engine_id = uuid.uuid4().hex
            self._reserve()
            # From here on every response, the final one included, goes through the outbox.
            sender = self._outbox.watch(engine_id, sender)
            responder = Responder(
                sender,
                self._kit,
                streaming=streaming,
                logprobs=params.return_logprobs,
                num_logprobs=params.num_logprobs,
                wanted=wanted,
                on_finished=lambda: self._finished(client_id, engine_id),
            )
            if not self._ids.add(client_id, engine_id):
                # Its `stop` came first: end it as the engine ends a cancelled request.
                logprobs = [] if params.return_logprobs else None
                responder(StepOutput(engine_id, [], logprobs, True, "cancelled"))
                return
            try:
                self.engine.submit(
                    engine_id,
                    prompt,
                    params,
                    on_output=responder,
                    prompt_table=None if table is None else torch.tensor(table),
                    extra_ids=extra_ids,
                )
            except Exception:
                self._finished(client_id, engine_id)
                raise
        except Exception as exc:
            # Every request gets its final response, or its client waits forever.
            sender.send(self._kit.error(str(exc), _error_kind(exc)), final)

    def close(self) -> None:
        """Stop the engine (every unfinished request gets its final response), then send the
        responses still queued."""
        self.engine.shutdown()
        self._outbox.close()

    def _reserve(self) -> None:
        with self._lock:
            if self._max_in_flight and self._in_flight >= self._max_in_flight:
                raise Overloaded(
                    f"the engine has {self._in_flight} requests in flight, its limit; retry later"
                )
            self._in_flight += 1

    def _finished(self, client_id: str, engine_id: str) -> None:
        self._ids.remove(client_id, engine_id)
        with self._lock:
            self._in_flight -= 1


def _error_kind(exc: Exception) -> ErrorKind:
    # A bad request is the client's error, a full queue a reason to retry, anything else
    # (e.g. shutting down) is ours.
    if isinstance(exc, ValueError):
        return "invalid"
    if isinstance(exc, Overloaded):
        return "unavailable"
    return "internal"

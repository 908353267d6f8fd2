"""Turns one request's engine step outputs into `tensorrt_llm` responses.

Streaming requests get each step's tokens as they come; others get all tokens in their final
response. Every request gets exactly one final response, an error if its last one cannot be built.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from moe_engine.engine import StepOutput
from moe_engine.outputs import TopLogprobs
from moe_engine.python_backend.responses import ResponseKit, Sender
from moe_engine.python_backend.serving import output_tensors


class Responder:
    """The engine's `on_output` callback for one request (runs on the engine thread)."""

    def __init__(
        self,
        sender: Sender,
        kit: ResponseKit,
        *,
        streaming: bool,
        logprobs: bool,
        num_logprobs: int = 0,
        wanted: Collection[str] = (),
        on_finished: Callable[[], None] = lambda: None,
    ) -> None:
        self.sender = sender
        self.kit = kit
        self.streaming = streaming
        self.logprobs = logprobs
        self.num_logprobs = num_logprobs
        # Tensors nobody asked for cost a copy to the server each per token; none named: all.
        self.wanted = set(wanted)
        self.on_finished = on_finished
        self.tokens: list[int] = []
        self.token_logprobs: list[float] = []
        self.tops: list[TopLogprobs] = []
        self.cum = 0.0

    def __call__(self, out: StepOutput) -> None:
        try:
            self._respond(out)
        except Exception:
            # The engine only logs a failure on a final output; the client still needs its
            # final response, and the outbox must stop watching the request.
            if out.finished:
                error = self.kit.error("could not build the final response", "internal")
                self.sender.send(error, self.kit.final_flag)
            raise

    def _respond(self, out: StepOutput) -> None:
        if out.finished:
            self.on_finished()
        step_lp = out.logprobs or []
        self.cum += float(sum(step_lp))
        final = self.kit.final_flag if out.finished else 0
        if out.finish_reason == "error":
            self.sender.send(self.kit.error("engine error while generating", "internal"), final)
            return
        if self.streaming:
            if out.token_ids:
                self._send(
                    out.token_ids, step_lp if self.logprobs else None, out.top_logprobs, final
                )
            elif final:
                self.sender.send(None, final)
            return
        self.tokens.extend(out.token_ids)
        self.token_logprobs.extend(step_lp)
        self.tops.extend(out.top_logprobs or [])
        if out.finished:
            lp = self.token_logprobs if self.logprobs else None
            self._send(self.tokens, lp, self.tops, final)

    def _send(
        self,
        tokens: list[int],
        logprobs: list[float] | None,
        tops: list[TopLogprobs] | None,
        flags: int,
    ) -> None:
        outputs = output_tensors(tokens, logprobs, self.cum, tops, self.num_logprobs)
        wanted = self.wanted or outputs.keys()
        tensors = {k: v for k, v in outputs.items() if k in wanted}
        self.sender.send(self.kit.tensors(tensors), flags)

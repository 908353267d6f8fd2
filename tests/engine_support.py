"""What the engine's unit tests share: a callback that records one request's outputs."""

from __future__ import annotations

import threading

from moe_engine import StepOutput

TIMEOUT = 60


class Collector:
    """Records one request's outputs; `wait()` blocks until its final output."""

    def __init__(self) -> None:
        self.outputs: list[StepOutput] = []
        self.done = threading.Event()

    def __call__(self, output: StepOutput) -> None:
        self.outputs.append(output)
        if output.finished:
            self.done.set()

    def wait(self) -> Collector:
        assert self.done.wait(TIMEOUT), "request did not finish in time"
        return self

    @property
    def tokens(self) -> list[int]:
        return [t for out in self.outputs for t in out.token_ids]

    @property
    def tops(self) -> list[tuple[list[int], list[float]]]:
        return [t for out in self.outputs for t in out.top_logprobs or []]

    @property
    def final(self) -> StepOutput:
        return self.outputs[-1]

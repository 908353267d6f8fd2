"""Plain stand-ins for what Triton hands a Python model: a response sender that behaves like
tritonserver 2.51's (including the crash it has when asked after a final response) and a
`ResponseKit` whose responses are readable tuples.

Why a stand-in: the unit tier starts no process, and `pb_utils` exists only inside a running
tritonserver. The same request handling runs against the real server in
tests/integration/test_triton.py and test_engine_cancel_load.py."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from moe_engine.python_backend.responses import ResponseKit

FINAL = 1


def _tensors(tensors: Mapping[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]]:
    return ("tensors", dict(tensors))


def _error(message: str, kind: str) -> tuple[str, str, str]:
    return ("error", kind, message)


KIT = ResponseKit(tensors=_tensors, error=_error, final_flag=FINAL)


class ServerCrash(AssertionError):
    """What tritonserver 2.51 does instead: segfault."""


class RecordingSender:
    """Records every send and poll, in order, and can be told the client has gone.

    Like Triton's: `is_cancelled()` after the final response was sent is a crash (recorded in
    `violations` as well, since the caller may swallow the exception), and so is a second final.
    """

    def __init__(self, name: str = "", *, fail_sends: bool = False) -> None:
        self.name = name
        self.fail_sends = fail_sends
        self.cancelled = False
        self.events: list[tuple[str, Any, int]] = []  # ("send", response, flags) / ("poll", ...)
        self.violations: list[str] = []
        self.finished = threading.Event()
        self._lock = threading.Lock()

    def send(self, response: Any = None, flags: int = 0) -> None:
        with self._lock:
            if self.finished.is_set():
                self.violations.append("send after the final response")
                raise ServerCrash("send after the final response")
            self.events.append(("send", response, flags))
            if flags & FINAL:
                self.finished.set()
        if self.fail_sends:
            raise RuntimeError("the stream is gone")

    def is_cancelled(self) -> bool:
        with self._lock:
            if self.finished.is_set():
                self.violations.append("is_cancelled() after the final response")
                raise ServerCrash("is_cancelled() after the final response")
            self.events.append(("poll", None, 0))
            return self.cancelled

    @property
    def responses(self) -> list[tuple[Any, int]]:
        with self._lock:
            return [(r, f) for kind, r, f in self.events if kind == "send"]

    @property
    def polls(self) -> int:
        with self._lock:
            return sum(kind == "poll" for kind, _, _ in self.events)

    @property
    def final(self) -> Any:
        """The final response (None for an empty one); fails if there is none."""
        finals = [r for r, f in self.responses if f & FINAL]
        assert len(finals) == 1, self.events
        return finals[0]


def text_of(responses: list[tuple[Any, int]]) -> str:
    """The concatenated `text_output` of tensor responses."""
    out = []
    for response, _ in responses:
        if response and response[0] == "tensors" and "text_output" in response[1]:
            out.append(response[1]["text_output"].reshape(-1)[0].decode("utf-8"))
    return "".join(out)


def value(response: Any, name: str) -> Any:
    """One scalar output of a tensor response."""
    assert response and response[0] == "tensors", response
    item = response[1][name].reshape(-1)[0]
    return item.decode() if isinstance(item, bytes) else item.item()

"""What request handling needs from the server: a sender per request and ways to build responses.

The Triton models supply `pb_utils`-backed ones (a request's response sender, `InferenceResponse`
builders, `TRITONSERVER_RESPONSE_COMPLETE_FINAL`); unit tests supply plain Python objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

# What went wrong, as Triton's error codes say it: INVALID_ARG, INTERNAL, UNAVAILABLE.
ErrorKind = Literal["invalid", "internal", "unavailable"]


class Sender(Protocol):
    """One request's response sender (Triton's `InferenceResponseSender`)."""

    def send(self, response: Any = None, flags: int = 0) -> None: ...

    def is_cancelled(self) -> bool: ...


@dataclass(frozen=True)
class ResponseKit:
    """How to build the server's responses, and the flag that marks a request's last one."""

    tensors: Callable[[Mapping[str, np.ndarray]], Any]
    """A response carrying these output tensors."""
    error: Callable[[str, ErrorKind], Any]
    """An error response."""
    final_flag: int

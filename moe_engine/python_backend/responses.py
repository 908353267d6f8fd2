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


def triton_kit(pb_utils: Any) -> ResponseKit:
    """The kit for Triton's Python backend, given its `triton_python_backend_utils` module
    (passed in: it exists only inside Triton, and its error types only once a model runs)."""
    codes = {
        "invalid": pb_utils.TritonError.INVALID_ARG,
        "internal": pb_utils.TritonError.INTERNAL,
        "unavailable": pb_utils.TritonError.UNAVAILABLE,
    }
    return ResponseKit(
        tensors=lambda tensors: pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(name, value) for name, value in tensors.items()]
        ),
        error=lambda message, kind: pb_utils.InferenceResponse(
            error=pb_utils.TritonError(message, codes[kind])
        ),
        final_flag=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
    )

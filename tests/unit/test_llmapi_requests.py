"""The CPU llmapi model's request mapping (moe_engine/python_backend/llmapi_requests.py): llmapi
inputs as the BLS's, BLS text responses as NVIDIA's llmapi outputs."""

from __future__ import annotations

import numpy as np
import pytest

from moe_engine.python_backend.llmapi_requests import (
    DEFAULT_MAX_TOKENS,
    LlmapiSender,
    TextResponse,
    to_bls,
)
from moe_engine.python_backend.serving import InputError


def _s(*items: str) -> np.ndarray:
    return np.asarray([i.encode() for i in items], dtype=np.object_)


class _Recorder:
    def __init__(self) -> None:
        self.sent: list = []

    def send(self, response=None, flags: int = 0) -> None:
        self.sent.append((response, flags))

    def is_cancelled(self) -> bool:
        return False


def test_sampling_params_become_the_bls_inputs() -> None:
    bls, answer = to_bls(
        {
            "text_input": _s("hi"),
            "streaming": np.asarray([True]),
            "sampling_param_max_tokens": np.asarray([5], dtype=np.int32),
            "sampling_param_temperature": np.asarray([0.5], dtype=np.float32),
            "sampling_param_stop": _s("a", "b"),
            "sampling_param_exclude_input_from_output": np.asarray([True]),
        }
    )
    assert bls["text_input"].tolist() == [[b"hi"]]
    assert bls["max_tokens"].tolist() == [[5]]
    assert bls["stream"].tolist() == [[True]]
    assert bls["temperature"].tolist() == [[0.5]]
    assert bls["stop_words"].tolist() == [[b"a", b"b"]]
    assert not answer.echo


def test_defaults_are_the_llm_apis() -> None:
    bls, answer = to_bls({"text_input": _s("hi")})
    assert bls["max_tokens"].tolist() == [[DEFAULT_MAX_TOKENS]]
    assert bls["stream"].tolist() == [[False]]
    assert answer.echo and not answer.finish_reason


@pytest.mark.parametrize(
    "extra",
    [
        {"sampling_param_best_of": np.asarray([2], dtype=np.int32)},
        {"lora_id": np.asarray([1], dtype=np.uint64)},
        {"text_input": _s("a", "b")},
    ],
)
def test_what_the_cpu_engine_cannot_do_is_refused(extra: dict) -> None:
    with pytest.raises(InputError):
        to_bls({"text_input": _s("hi"), **extra})


def test_stop_is_passed_on() -> None:
    bls, _ = to_bls({"text_input": _s(""), "stop": np.asarray([True])})
    assert bls["stop"].tolist() == [[True]]


def test_text_is_cumulative_after_the_echoed_prompt_with_none_until_the_reason() -> None:
    _, answer = to_bls({"text_input": _s("Q:"), "return_finish_reason": np.asarray([True])})
    recorder = _Recorder()
    sender = LlmapiSender(recorder, answer, tensors=dict)
    sender.send(TextResponse(text_output=np.asarray([[b" a"]], dtype=np.object_)), 0)
    sender.send(
        TextResponse(
            text_output=np.asarray([[b" b"]], dtype=np.object_),
            finish_reason=np.asarray([[b"length"]], dtype=np.object_),
        ),
        1,
    )
    (first, _), (last, flags) = recorder.sent
    assert first["text_output"].tolist() == [b"Q: a"]
    assert first["finish_reason"].tolist() == [b"None"]
    assert last["text_output"].tolist() == [b"Q: a b"]
    assert last["finish_reason"].tolist() == [b"length"]
    assert flags == 1


def test_errors_and_empty_finals_pass_through() -> None:
    _, answer = to_bls({"text_input": _s("x")})
    recorder = _Recorder()
    sender = LlmapiSender(recorder, answer, tensors=dict)
    sender.send("an error response", 1)
    sender.send(None, 1)
    assert recorder.sent == [("an error response", 1), (None, 1)]

"""The CPU `llmapi` model: NVIDIA's LLM-API tensors over the BLS's request handling.

A request's `sampling_param_*` inputs become the BLS's inputs (`to_bls`), `BlsRequests` serves
it over the engine model as it serves `tensorrt_llm_bls`, and `LlmapiSender` turns each text
response into what NVIDIA's llmapi model sends: the text generated so far (after the prompt
unless `sampling_param_exclude_input_from_output`), `finish_reason` and `stop_reason` as strings
that read "None" until the end, no batch dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from moe_engine.python_backend.responses import ResponseKit, Sender
from moe_engine.python_backend.serving import InputError, scalar

# The LLM API's SamplingParams default.
DEFAULT_MAX_TOKENS = 32
# llmapi input -> (BLS input, dtype).
_FORWARD = {
    "sampling_param_temperature": ("temperature", np.float32),
    "sampling_param_top_k": ("top_k", np.int32),
    "sampling_param_top_p": ("top_p", np.float32),
    "sampling_param_seed": ("seed", np.uint64),
    "sampling_param_presence_penalty": ("presence_penalty", np.float32),
    "sampling_param_frequency_penalty": ("frequency_penalty", np.float32),
}
_LORA = ("lora_id", "lora_name", "lora_path", "lora_ckpt_source")


@dataclass(frozen=True)
class Answer:
    """How one request wants its responses."""

    prompt: str
    echo: bool  # the prompt in front of the text (the llmapi default)
    finish_reason: bool
    stop_reason: bool


def to_bls(inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Answer]:
    """The BLS inputs for an llmapi request and how to answer it; InputError says what is wrong."""
    stop = bool(scalar(inputs, "stop", False))
    text = inputs.get("text_input")
    if text is None or text.size == 0:
        raise InputError("text_input is missing from the request")
    if text.size > 1:
        raise InputError("text_input holds more than one prompt; send one per request")
    prompt = scalar(inputs, "text_input")
    bls: dict[str, np.ndarray] = {"text_input": np.asarray([[prompt.encode()]], dtype=np.object_)}
    if stop:
        bls["stop"] = np.asarray([[True]], dtype=np.bool_)
        bls["max_tokens"] = np.asarray([[1]], dtype=np.int32)
        return bls, Answer(prompt, False, False, False)
    if any(scalar(inputs, name) is not None for name in _LORA):
        raise InputError("LoRA adapters are not supported by the CPU engine")
    best_of = scalar(inputs, "sampling_param_best_of", 1)
    if best_of != 1:
        raise InputError(f"sampling_param_best_of must be 1 on the CPU engine, got {best_of}")
    max_tokens = scalar(inputs, "sampling_param_max_tokens", DEFAULT_MAX_TOKENS)
    bls["max_tokens"] = np.asarray([[max_tokens]], dtype=np.int32)
    bls["stream"] = np.asarray([[bool(scalar(inputs, "streaming", False))]], dtype=np.bool_)
    for name, (target, dtype) in _FORWARD.items():
        value = scalar(inputs, name)
        if value is not None:
            bls[target] = np.asarray([[value]], dtype=dtype)
    stop_words = inputs.get("sampling_param_stop")
    if stop_words is not None and stop_words.size:
        bls["stop_words"] = stop_words.reshape(1, -1).astype(np.object_)
    images = inputs.get("image_url")
    if images is not None and images.size:
        bls["image_url_input"] = images.reshape(1, -1).astype(np.object_)
    answer = Answer(
        prompt=prompt,
        echo=not bool(scalar(inputs, "sampling_param_exclude_input_from_output", False)),
        finish_reason=bool(scalar(inputs, "return_finish_reason", False)),
        stop_reason=bool(scalar(inputs, "return_stop_reason", False)),
    )
    return bls, answer


class TextResponse(dict):
    """The BLS's output tensors of one response, not yet a server response."""


def bls_kit(kit: ResponseKit) -> ResponseKit:
    """The kit `BlsRequests` answers with: text responses stay tensors for `LlmapiSender`."""
    return ResponseKit(tensors=TextResponse, error=kit.error, final_flag=kit.final_flag)


class LlmapiSender:
    """One request's sender: BLS text responses out as llmapi ones, the rest passed through."""

    def __init__(
        self,
        sender: Sender,
        answer: Answer,
        tensors: Callable[[Mapping[str, np.ndarray]], Any],
    ) -> None:
        self._sender = sender
        self._answer = answer
        self._tensors = tensors
        self._text = answer.prompt if answer.echo else ""

    def send(self, response: Any = None, flags: int = 0) -> None:
        if isinstance(response, TextResponse):
            response = self._tensors(self.outputs(response))
        self._sender.send(response, flags)

    def is_cancelled(self) -> bool:
        return self._sender.is_cancelled()

    def outputs(self, bls: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The llmapi outputs for one BLS response (whose text is a delta, or all of it)."""
        piece = bls["text_output"].reshape(-1)[0]
        self._text += piece.decode("utf-8") if isinstance(piece, bytes) else str(piece)
        out = {"text_output": _strings(self._text)}
        reason = bls.get("finish_reason")
        if self._answer.finish_reason:
            out["finish_reason"] = _strings(
                "None" if reason is None else reason.reshape(-1)[0].decode()
            )
        if self._answer.stop_reason:
            out["stop_reason"] = _strings("None")
        return out


def _strings(text: str) -> np.ndarray:
    return np.asarray([text.encode("utf-8")], dtype=np.object_)

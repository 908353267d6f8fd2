"""`echo`: the ensemble's text interface with no model behind it, so a benchmark sees only the
cost of whatever sits between the client and Triton.

The "tokens" are the prompt's words, cycled: a streamed request gets `max_tokens` one-word
responses (the last one carries `finish_reason` "length" and the final flag), a non-streamed one
gets them joined in a single response. Streams yield to the event loop between chunks so that
concurrent streams interleave as they would on a real engine.
"""

from __future__ import annotations

import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils

_DEFAULT_MAX_TOKENS = 16
_REMEMBERED_STOPS = 1024


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        # Client ids that a `stop` request named (TensorRT-LLM's cancellation), newest last.
        self._stops: dict[str, bool] = {}

    async def execute(self, requests: list) -> None:
        await asyncio.gather(*(self._answer(r) for r in requests))
        return None

    async def _answer(self, request) -> None:
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        client_id = request.request_id()
        if bool(_scalar(request, "stop", False)):
            self._stops[client_id] = True
            if len(self._stops) > _REMEMBERED_STOPS:
                del self._stops[next(iter(self._stops))]
            sender.send(flags=final)
            return
        prompt = _scalar(request, "text_input", b"")
        words = prompt.decode("utf-8", errors="replace").split() or ["echo"]
        max_tokens = int(_scalar(request, "max_tokens", _DEFAULT_MAX_TOKENS))
        if max_tokens < 1:
            error = pb_utils.TritonError("max_tokens must be a positive integer")
            sender.send(pb_utils.InferenceResponse(error=error), flags=final)
            return
        tokens = [" " + words[i % len(words)] for i in range(max_tokens)]
        if not bool(_scalar(request, "stream", False)):
            sender.send(_response("".join(tokens), "length", len(words), max_tokens), flags=final)
            return
        for i, token in enumerate(tokens[:-1]):
            if request.is_cancelled() or self._stops.pop(client_id, False):
                sender.send(flags=final)
                return
            sender.send(_response(token, "", len(words), i + 1))
            await asyncio.sleep(0)
        sender.send(_response(tokens[-1], "length", len(words), max_tokens), flags=final)


def _scalar(request, name: str, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    return tensor.as_numpy().reshape(-1)[0]


def _response(text: str, reason: str, prompt_tokens: int, generated: int):
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor("text_output", np.array([[text.encode()]], dtype=np.object_)),
            pb_utils.Tensor("finish_reason", np.array([[reason.encode()]], dtype=np.object_)),
            pb_utils.Tensor("num_input_tokens", np.array([[prompt_tokens]], dtype=np.int32)),
            pb_utils.Tensor("num_output_tokens", np.array([[generated]], dtype=np.int32)),
        ]
    )

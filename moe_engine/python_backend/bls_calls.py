"""The BLS-style models' Triton calls (`tensorrt_llm_bls`, `llmapi`): their requests' response
senders, and `tensorrt_llm` called through BLS, its responses as `Chunk`s.

`pb_utils` (Triton's `triton_python_backend_utils`) is passed in: this module imports nothing of
Triton, so it loads outside the Python backend too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from moe_engine.python_backend.bls_requests import Generation, stop_inputs
from moe_engine.python_backend.bls_stream import Chunk

_DONE = object()


class RequestSender:
    """A request's response sender, asking the request whether it was cancelled."""

    __slots__ = ("_request", "_sender")

    def __init__(self, request: Any) -> None:
        self._request = request
        self._sender = request.get_response_sender()

    def send(self, response: Any = None, flags: int = 0) -> None:
        if response is None:
            self._sender.send(flags=flags)
        else:
            self._sender.send(response, flags=flags)

    def is_cancelled(self) -> bool:
        return self._request.is_cancelled()


class EngineModel:
    """`tensorrt_llm` through BLS calls, which block: each waits on a thread of its own.

    Not the event loop's default executor (a few threads: one per waiting call filled it, and
    `stop` calls queued behind generations waiting for a slot), and stops have their own.
    """

    def __init__(self, pb_utils: Any, model_name: str, *, thread_prefix: str = "bls") -> None:
        self.model_name = model_name
        self._pb = pb_utils
        self._calls = ThreadPoolExecutor(
            max_workers=256, thread_name_prefix=f"{thread_prefix}-wait"
        )
        self._stops = ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"{thread_prefix}-stop")

    async def generate(self, generation: Generation) -> AsyncIterator[Chunk]:
        request = self._request(generation.request_id, generation.inputs, generation.outputs)
        loop = asyncio.get_running_loop()
        responses = await loop.run_in_executor(self._calls, partial(request.exec, decoupled=True))
        while (
            response := await loop.run_in_executor(self._calls, next, responses, _DONE)
        ) is not _DONE:
            yield chunk(self._pb, response)

    async def stop(self, request_id: str) -> None:
        request = self._request(request_id, stop_inputs(), ["output_ids"])
        await asyncio.get_running_loop().run_in_executor(self._stops, _run_to_end, request)

    def _request(self, request_id: str, inputs: dict, outputs: list[str]) -> Any:
        pb = self._pb
        return pb.InferenceRequest(
            model_name=self.model_name,
            inputs=[pb.Tensor(name, value) for name, value in inputs.items()],
            requested_output_names=outputs,
            request_id=request_id,
        )


def chunk(pb_utils: Any, response: Any) -> Chunk:
    """One `tensorrt_llm` response: its new token ids, their logprobs and top logprobs."""
    if response.has_error():
        return Chunk(None, error_response=pb_utils.InferenceResponse(error=response.error()))
    ids = pb_utils.get_output_tensor_by_name(response, "output_ids")
    if ids is None:
        return Chunk(None)  # the empty final response
    array = ids.as_numpy().reshape(-1)
    lp = pb_utils.get_output_tensor_by_name(response, "output_log_probs")
    logprobs = lp.as_numpy().reshape(-1).tolist() if lp is not None else None
    return Chunk(array[array >= 0].tolist(), logprobs, top_logprobs(pb_utils, response))


def top_logprobs(pb_utils: Any, response: Any) -> list | None:
    """`top_token_ids`/`top_log_probs` ([1, 1, len, k]) as (ids, logprobs) per token."""
    ids = pb_utils.get_output_tensor_by_name(response, "top_token_ids")
    values = pb_utils.get_output_tensor_by_name(response, "top_log_probs")
    if ids is None or values is None:
        return None
    ids, values = ids.as_numpy(), values.as_numpy()
    k = ids.shape[-1]
    return list(zip(ids.reshape(-1, k).tolist(), values.reshape(-1, k).tolist(), strict=True))


def _run_to_end(request: Any) -> None:
    for _ in request.exec(decoupled=True):
        pass

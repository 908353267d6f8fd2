"""NVIDIA's `llmapi` model interface on the CPU: text in, cumulative text out, over `tensorrt_llm`.

Only Triton's callbacks live here. `moe_engine.python_backend.llmapi_requests` maps the llmapi
tensors onto the BLS's request handling (`bls_requests`: stop by id, admission, errors), which
calls the engine model exactly as `tensorrt_llm_bls` does (the same Triton calls as its
model.py's, below).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import triton_python_backend_utils as pb_utils

from moe_engine.python_backend import triton_logging as engine_logs
from moe_engine.python_backend.bls_requests import BlsRequests, Generation, stop_inputs
from moe_engine.python_backend.bls_stream import Chunk
from moe_engine.python_backend.llmapi_requests import LlmapiSender, bls_kit, to_bls
from moe_engine.python_backend.loop_thread import LoopThread
from moe_engine.python_backend.responses import triton_kit
from moe_engine.python_backend.serving import InputError
from moe_engine.python_backend.text import load_tokenizer

_DONE = object()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        engine_logs.forward_to(
            pb_utils.Logger.log_info, pb_utils.Logger.log_warn, pb_utils.Logger.log_error
        )
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        context = params.get("max_context_len", "")
        self.kit = triton_kit(pb_utils)
        self.loop = LoopThread("llmapi-loop")
        self.requests = BlsRequests(
            load_tokenizer(params["tokenizer_dir"]),
            _EngineModel(params.get("tensorrt_llm_model_name") or "tensorrt_llm"),
            bls_kit(self.kit),
            max_context_len=int(context) if context.isdigit() else 0,
            max_in_flight=int(params.get("max_inflight_requests", "1024")),
            max_pending=int(params.get("max_pending_engine_requests", "16")),
        )

    def execute(self, requests: list) -> None:
        for request in requests:
            inputs = {t.name(): t.as_numpy() for t in request.inputs()}
            sender = _Sender(request)
            try:
                bls_inputs, answer = to_bls(inputs)
            except InputError as exc:
                sender.send(self.kit.error(str(exc), "invalid"), self.kit.final_flag)
                continue
            llmapi_sender = LlmapiSender(sender, answer, self.kit.tensors)
            self.loop.submit(self.requests.handle(request.request_id(), bls_inputs, llmapi_sender))
        return None

    def finalize(self) -> None:
        self.loop.stop()


class _Sender:
    """A request's response sender, asking the request whether it was cancelled."""

    __slots__ = ("_request", "_sender")

    def __init__(self, request) -> None:
        self._request = request
        self._sender = request.get_response_sender()

    def send(self, response=None, flags: int = 0) -> None:
        if response is None:
            self._sender.send(flags=flags)
        else:
            self._sender.send(response, flags=flags)

    def is_cancelled(self) -> bool:
        return self._request.is_cancelled()


class _EngineModel:
    """`tensorrt_llm` through BLS calls, which block: each waits on a thread of its own."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self._calls = ThreadPoolExecutor(max_workers=256, thread_name_prefix="llmapi-wait")
        self._stops = ThreadPoolExecutor(max_workers=8, thread_name_prefix="llmapi-stop")

    async def generate(self, generation: Generation) -> AsyncIterator[Chunk]:
        request = self._request(generation.request_id, generation.inputs, generation.outputs)
        loop = asyncio.get_running_loop()
        responses = await loop.run_in_executor(self._calls, partial(request.exec, decoupled=True))
        while (
            response := await loop.run_in_executor(self._calls, next, responses, _DONE)
        ) is not _DONE:
            yield _chunk(response)

    async def stop(self, request_id: str) -> None:
        request = self._request(request_id, stop_inputs(), ["output_ids"])
        await asyncio.get_running_loop().run_in_executor(self._stops, _run_to_end, request)

    def _request(self, request_id: str, inputs: dict, outputs: list[str]):
        return pb_utils.InferenceRequest(
            model_name=self.model_name,
            inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
            requested_output_names=outputs,
            request_id=request_id,
        )


def _run_to_end(request) -> None:
    for _ in request.exec(decoupled=True):
        pass


def _chunk(response) -> Chunk:
    if response.has_error():
        return Chunk(None, error_response=pb_utils.InferenceResponse(error=response.error()))
    ids = pb_utils.get_output_tensor_by_name(response, "output_ids")
    if ids is None:
        return Chunk(None)
    array = ids.as_numpy().reshape(-1)
    return Chunk(array[array >= 0].tolist())

"""NVIDIA's `llmapi` model interface on the CPU: text in, cumulative text out, over `tensorrt_llm`.

Only Triton's callbacks live here. `moe_engine.python_backend.llmapi_requests` maps the llmapi
tensors onto the BLS's request handling (`bls_requests`: stop by id, admission, errors), which
calls the engine model exactly as `tensorrt_llm_bls` does (the same Triton calls as its
model.py's: `bls_calls`).
"""

from __future__ import annotations

import json

import triton_python_backend_utils as pb_utils

from moe_engine.python_backend import triton_logging as engine_logs
from moe_engine.python_backend.bls_calls import EngineModel, RequestSender
from moe_engine.python_backend.bls_requests import BlsRequests
from moe_engine.python_backend.llmapi_requests import LlmapiSender, bls_kit, to_bls
from moe_engine.python_backend.loop_thread import LoopThread
from moe_engine.python_backend.responses import triton_kit
from moe_engine.python_backend.serving import InputError
from moe_engine.python_backend.text import load_tokenizer


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
            EngineModel(
                pb_utils,
                params.get("tensorrt_llm_model_name") or "tensorrt_llm",
                thread_prefix="llmapi",
            ),
            bls_kit(self.kit),
            max_context_len=int(context) if context.isdigit() else 0,
            max_in_flight=int(params.get("max_inflight_requests", "1024")),
            max_pending=int(params.get("max_pending_engine_requests", "16")),
        )

    def execute(self, requests: list) -> None:
        for request in requests:
            inputs = {t.name(): t.as_numpy() for t in request.inputs()}
            sender = RequestSender(request)
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

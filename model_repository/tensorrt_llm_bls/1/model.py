"""The gateway's default route: text in, text deltas out, over the `tensorrt_llm` model.

Only Triton's callbacks and calls live here. `moe_engine.python_backend.bls_requests` serves
each request (stop by id, admission, errors) and `bls_stream` beside it turns engine tokens into
text (incremental detokenisation, stop strings, `finish_reason`, cancellation), on an event loop
of our own (`loop_thread`).
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import triton_python_backend_utils as pb_utils

from moe_engine.python_backend import triton_logging as engine_logs
from moe_engine.python_backend.bls_calls import EngineModel, RequestSender
from moe_engine.python_backend.bls_images import step_error
from moe_engine.python_backend.bls_requests import BlsRequests
from moe_engine.python_backend.image_prompt import vision_image_token
from moe_engine.python_backend.loop_thread import LoopThread
from moe_engine.python_backend.responses import triton_kit
from moe_engine.python_backend.text import load_tokenizer


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        engine_logs.forward_to(
            pb_utils.Logger.log_info, pb_utils.Logger.log_warn, pb_utils.Logger.log_error
        )
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        context = params.get("max_context_len", "")
        tok = load_tokenizer(params["tokenizer_dir"])
        engine = EngineModel(pb_utils, params.get("tensorrt_llm_model_name", "tensorrt_llm"))
        encoder = params.get("multimodal_encoders_name", "")
        image_token = vision_image_token(params["tokenizer_dir"]) if encoder else None
        self.loop = LoopThread("bls-loop")
        self.requests = BlsRequests(
            tok,
            engine,
            triton_kit(pb_utils),
            max_context_len=int(context) if context.isdigit() else 0,
            max_in_flight=int(params.get("max_inflight_requests", "1024")),
            max_pending=int(params.get("max_pending_engine_requests", "16")),
            images=(
                _ImageModels(params.get("preprocessing_model_name", "preprocessing"), encoder)
                if encoder
                else None
            ),
            image_token_id=tok.tokenizer.token_to_id(image_token) if image_token else None,
        )

    def execute(self, requests: list) -> None:
        # Not `async`: see moe_engine/loop_thread.py for the Python backend's KeyError.
        for request in requests:
            inputs = {t.name(): t.as_numpy() for t in request.inputs()}
            sender = RequestSender(request)
            self.loop.submit(self.requests.handle(request.request_id(), inputs, sender))
        return None

    def finalize(self) -> None:
        self.loop.stop()


class _ImageModels:
    """`preprocessing` and the encoder through BLS calls, each waiting on a thread of its own.

    Their refusals (fixed texts) reach the client as INVALID_ARG; their own failures as INTERNAL.
    """

    def __init__(self, preprocessing: str, encoder: str) -> None:
        self._names = {"preprocess": preprocessing, "encode": encoder}
        self._calls = ThreadPoolExecutor(max_workers=32, thread_name_prefix="bls-images")

    async def preprocess(self, inputs: dict) -> dict:
        return await self._call("preprocess", inputs, list(_PREPROCESSED))

    async def encode(self, inputs: dict) -> dict:
        return await self._call("encode", inputs, list(_ENCODED))

    async def _call(self, step: str, inputs: dict, outputs: list[str]) -> dict:
        request = pb_utils.InferenceRequest(
            model_name=self._names[step],
            inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
            requested_output_names=outputs,
        )
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(self._calls, request.exec)
        if response.has_error():
            failure = step_error(self._names[step], response.error().message())
            if failure.kind == "internal":
                pb_utils.Logger.log_error(failure.message)
            raise failure
        return {n: pb_utils.get_output_tensor_by_name(response, n).as_numpy() for n in outputs}


_PREPROCESSED = ("INPUT_ID", "PIXEL_VALUES", "OUT_PROMPT_TABLE_EXTRA_IDS")
_ENCODED = ("OUT_PROMPT_EMBEDDING_TABLE", "OUT_PROMPT_VOCAB_SIZE")

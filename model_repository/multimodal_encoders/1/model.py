"""The vision encoder (NVIDIA's `multimodal_encoders`): pixel values in, the prompt table out.

Triton's dynamic batcher gathers concurrent requests into one `execute`; their images are
encoded in one call (`moe_engine.python_backend.encoder_batch`). Only callbacks live here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils

from moe_engine.python_backend.bls_images import ENCODER_FAILED
from moe_engine.python_backend.encoder_batch import EncoderBatcher
from moe_engine.vision import VisionEncoder


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        if params.get("num_threads", "").isdigit():
            torch.set_num_threads(int(params["num_threads"]))
        encoder = VisionEncoder.from_dir(Path(params["checkpoint_dir"]))
        self.batcher = EncoderBatcher(
            encoder.encode,
            image_size=encoder.config.image_size,
            features=encoder.config.num_image_tokens,
            hidden_size=encoder.config.text_hidden_size,
        )

    def execute(self, requests: list) -> list:
        inputs = [{t.name(): t.as_numpy() for t in r.inputs()} for r in requests]
        try:
            batch = self.batcher.run(inputs)
        except Exception as exc:
            pb_utils.Logger.log_error(f"multimodal_encoders failed: {exc!r}")
            error = pb_utils.TritonError(ENCODER_FAILED, pb_utils.TritonError.INTERNAL)
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses = []
        for result in batch.results:
            if isinstance(result, ValueError):
                error = pb_utils.TritonError(str(result), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                tensors = [pb_utils.Tensor(k, v) for k, v in result.items()]
                responses.append(pb_utils.InferenceResponse(tensors))
        return responses

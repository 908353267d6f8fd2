"""Tokenise prompts, stop/bad words and images for the `ensemble` routes (NVIDIA's tensor names).

The work is `moe_engine.python_backend.preprocess`; only Triton's callbacks live here.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from moe_engine.python_backend.bls_images import PREPROCESSING_FAILED
from moe_engine.python_backend.preprocess import (
    DEFAULT_MAX_IMAGES,
    Preprocessor,
    load_vision_prompt,
    only_requested,
)
from moe_engine.python_backend.text import load_tokenizer


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_dir = params["tokenizer_dir"]
        tok = load_tokenizer(model_dir)
        max_images = params.get("max_num_images", "")
        self.pre = Preprocessor(
            tok,
            load_vision_prompt(model_dir, tok),
            max_images=int(max_images) if max_images.isdigit() else DEFAULT_MAX_IMAGES,
        )

    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _one(self, request):
        inputs = {t.name(): t.as_numpy() for t in request.inputs()}
        try:
            outputs = self.pre.run(inputs)
        except ValueError as exc:  # InputError: fixed texts, the client's mistake
            return _error(str(exc), pb_utils.TritonError.INVALID_ARG)
        except Exception as exc:
            pb_utils.Logger.log_error(f"preprocessing failed: {exc!r}")
            return _error(PREPROCESSING_FAILED, pb_utils.TritonError.INTERNAL)
        outputs = only_requested(outputs, request.requested_output_names())
        return pb_utils.InferenceResponse(
            [pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in outputs.items()]
        )


def _error(message: str, code: int):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))

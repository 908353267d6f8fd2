"""Detokenise engine outputs for the `ensemble` route (NVIDIA's tensor names).

Each response is decoded on its own, exactly as NVIDIA's ensemble does; streamed chunks can
therefore lose word boundaries. `tensorrt_llm_bls` is the route that keeps state across chunks.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from moe_engine.python_backend.text import load_tokenizer


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.tokenizer = load_tokenizer(params["tokenizer_dir"]).tokenizer

    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _one(self, request):
        get = {t.name(): t.as_numpy() for t in request.inputs()}.get
        tokens = get("TOKENS_BATCH").reshape(-1)
        tokens = tokens[tokens >= 0].tolist()
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        out = {
            "OUTPUT": np.asarray([[text.encode("utf-8")]], dtype=np.object_),
            "NUM_OUTPUT_TOKENS": np.asarray([[len(tokens)]], dtype=np.int32),
            "OUT_CUM_LOG_PROBS": get("CUM_LOG_PROBS").reshape(1, -1).astype(np.float32),
            "OUT_OUTPUT_LOG_PROBS": get("OUTPUT_LOG_PROBS").reshape(1, 1, -1).astype(np.float32),
        }
        return pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in out.items()])

"""Text embeddings (`embeddings`): one input per request in, its pooled hidden state out.

Triton's dynamic batcher gathers concurrent requests into one `execute`; their inputs run in one
packed forward (`moe_engine.python_backend.embedding_requests`). Only callbacks live here.
"""

from __future__ import annotations

import json

import torch
import triton_python_backend_utils as pb_utils

from moe_engine.embeddings import Embedder
from moe_engine.python_backend.embedding_requests import EmbeddingBatcher
from moe_engine.python_backend.serving import InputError
from moe_engine.python_backend.text import load_tokenizer


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        if params.get("num_threads", "").isdigit():
            torch.set_num_threads(int(params["num_threads"]))
        max_seq_len = params.get("max_seq_len", "")
        embedder = Embedder.from_pretrained(
            params["checkpoint_dir"],
            max_seq_len=int(max_seq_len) if max_seq_len.isdigit() else None,
            dtype=params.get("dtype") or "float32",
        )
        self.batcher = EmbeddingBatcher(
            lambda sequences: embedder.embed(sequences).numpy(),
            load_tokenizer(params.get("tokenizer_dir") or params["checkpoint_dir"]),
            max_tokens=embedder.max_tokens,
            vocab_size=embedder.model.config.vocab_size,
        )

    def execute(self, requests: list) -> list:
        inputs = [{t.name(): t.as_numpy() for t in r.inputs()} for r in requests]
        try:
            batch = self.batcher.run(inputs)
        except Exception as exc:
            pb_utils.Logger.log_error(f"embeddings failed: {exc!r}")
            error = pb_utils.TritonError("embedding failed", pb_utils.TritonError.INTERNAL)
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses = []
        for result in batch.results:
            if isinstance(result, InputError):
                error = pb_utils.TritonError(str(result), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                tensors = [pb_utils.Tensor(k, v) for k, v in result.items()]
                responses.append(pb_utils.InferenceResponse(tensors))
        return responses

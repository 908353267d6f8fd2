"""Tokenise prompts and stop/bad words for the `ensemble` route (NVIDIA's tensor names)."""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from moe_engine.python_backend.serving import scalar
from moe_engine.python_backend.text import encode, encode_stop_words, load_tokenizer, to_words_list


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.tok = load_tokenizer(params["tokenizer_dir"])

    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _one(self, request):
        inputs = {t.name(): t.as_numpy() for t in request.inputs()}
        query = scalar(inputs, "QUERY")
        if not query:
            error = pb_utils.TritonError("text_input is empty", pb_utils.TritonError.INVALID_ARG)
            return pb_utils.InferenceResponse(error=error)
        ids = encode(self.tok, query)
        end_id = scalar(inputs, "END_ID", self.tok.eos_ids[0])
        pad_id = scalar(inputs, "PAD_ID", self.tok.pad_id)
        out = {
            "INPUT_ID": np.asarray([ids], dtype=np.int32),
            "REQUEST_INPUT_LEN": np.asarray([[len(ids)]], dtype=np.int32),
            "REQUEST_OUTPUT_LEN": np.asarray([[scalar(inputs, "REQUEST_OUTPUT_LEN")]], np.int32),
            "STOP_WORDS_IDS": self._words(inputs, "STOP_WORDS_DICT"),
            "BAD_WORDS_IDS": self._words(inputs, "BAD_WORDS_DICT"),
            "OUT_END_ID": np.asarray([[end_id]], dtype=np.int32),
            "OUT_PAD_ID": np.asarray([[pad_id]], dtype=np.int32),
        }
        return pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in out.items()])

    def _words(self, inputs: dict, name: str) -> np.ndarray:
        raw = inputs.get(name)
        words = [w.decode("utf-8") for w in raw.reshape(-1)] if raw is not None else []
        return np.asarray([to_words_list(encode_stop_words(self.tok, words))], dtype=np.int32)

"""Guided decoding and top logprobs through a real tritonserver, driven with tritonclient: a
json_schema-constrained generation through the BLS parses and validates (two schemas in flight
together too), an invalid schema is INVALID_ARG, and top logprobs come sorted, the same streamed
and not, from `tensorrt_llm` and the BLS."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from gateway.local.triton import TritonProcess
from tests.integration.test_triton import _tensor, infer_stream, last, text_inputs, texts

CHAT = "<|im_start|>user\nDescribe a person as JSON.<|im_end|>\n<|im_start|>assistant\n"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
POINT = {
    "type": "object",
    "properties": {
        "x": {"type": "integer", "minimum": -9, "maximum": 9},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    },
    "required": ["x", "tags"],
    "additionalProperties": False,
}


def guided(schema: Any, *, stream: bool = False, **extra: Any) -> list:
    guide = schema if isinstance(schema, str) else json.dumps(schema)
    return [
        *text_inputs(CHAT, max_tokens=96, temperature=0.0, stream=stream, **extra),
        _tensor("guided_decoding_guide_type", [b"json_schema"], np.object_),
        _tensor("guided_decoding_guide", [guide.encode()], np.object_),
    ]


def run(triton: TritonProcess, model: str, inputs: list) -> list:
    return asyncio.run(infer_stream(triton.grpc_url, model, inputs))


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_generation_through_the_bls_validates(
    triton: TritonProcess, stream: bool
) -> None:
    responses = run(triton, "tensorrt_llm_bls", guided(PERSON, stream=stream))
    assert last(responses, "finish_reason") == "stop"
    jsonschema.validate(json.loads(texts(responses)), PERSON)


def test_two_schemas_in_flight_together_each_validate(triton: TritonProcess) -> None:
    async def both() -> list[list]:
        return await asyncio.gather(
            *(infer_stream(triton.grpc_url, "tensorrt_llm_bls", guided(s)) for s in (PERSON, POINT))
        )

    for schema, responses in zip((PERSON, POINT), asyncio.run(both()), strict=True):
        jsonschema.validate(json.loads(texts(responses)), schema)


def test_invalid_schema_is_refused_and_triton_keeps_serving(triton: TritonProcess) -> None:
    with pytest.raises(InferenceServerException, match="invalid guide: "):
        run(triton, "tensorrt_llm_bls", guided('{"type": "nope"}'))
    assert texts(run(triton, "tensorrt_llm_bls", text_inputs(CHAT, max_tokens=4)))  # still serving


def top_of(responses: list) -> tuple[list[int], np.ndarray, np.ndarray]:
    ids, top_ids, top_lp = [], [], []
    for r in responses:
        if r.as_numpy("top_token_ids") is None:
            continue
        ids.extend(r.as_numpy("output_token_ids").reshape(-1).tolist())
        top_ids.append(r.as_numpy("top_token_ids")[0])
        top_lp.append(r.as_numpy("top_log_probs")[0])
    return ids, np.concatenate(top_ids), np.concatenate(top_lp)


def test_bls_top_logprobs_are_sorted_and_the_same_streamed_and_not(
    triton: TritonProcess,
) -> None:
    def once(stream: bool) -> tuple[list[int], np.ndarray, np.ndarray]:
        inputs = [
            *text_inputs(CHAT, max_tokens=12, temperature=0.0, stream=stream, ignore_eos=True),
            _tensor("num_logprobs", [5], np.int32),
        ]
        return top_of(run(triton, "tensorrt_llm_bls", inputs))

    streamed, whole = once(True), once(False)
    ids, top_ids, top_lp = whole
    assert len(ids) == 12 and top_ids.shape == top_lp.shape == (12, 5)
    assert (np.diff(top_lp, axis=1) <= 0).all()
    assert top_ids[:, 0].tolist() == ids  # greedy: the sampled token is the best
    assert streamed[0] == ids and streamed[1].tolist() == top_ids.tolist()
    np.testing.assert_allclose(streamed[2], top_lp, rtol=1e-5)


def test_tensorrt_llm_returns_top_log_probs(triton: TritonProcess) -> None:
    inputs = [
        _tensor("input_ids", [11, 42, 7, 199], np.int32),
        _tensor("input_lengths", [4], np.int32),
        _tensor("request_output_len", [6], np.int32),
        _tensor("temperature", [0.0], np.float32),
        _tensor("ignore_eos", [True], np.bool_),
        _tensor("num_logprobs", [3], np.int32),
        _tensor("return_log_probs", [True], np.bool_),
    ]
    (response, *_) = run(triton, "tensorrt_llm", inputs)
    ids = response.as_numpy("output_ids").reshape(-1)
    top_ids, top_lp = response.as_numpy("top_token_ids"), response.as_numpy("top_log_probs")
    assert top_ids.shape == top_lp.shape == (1, 1, 6, 3)
    assert top_ids[0, 0, :, 0].tolist() == ids.tolist()
    np.testing.assert_allclose(
        top_lp[0, 0, :, 0], response.as_numpy("output_log_probs").reshape(-1), rtol=1e-5
    )

"""The `trtllm` adapter's image tensor: NVIDIA's `image_url_input`, BYTES [1, N], sent only when
the request carries images."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.utils import deserialize_bytes_tensor

from gateway.core.backend import GenerationRequest, SamplingOptions
from gateway.errors import InvalidRequest
from gateway.triton.adapter import build_request

URLS = ("data:image/png;base64,iVBORw0KGgo=", "data:image/jpeg;base64,/9j/4AAQ")
ACCEPTS = frozenset({"text_input", "max_tokens", "stream", "image_url_input"})


def _tensor(infer: service_pb2.ModelInferRequest, name: str) -> tuple[list[int], np.ndarray]:
    for tensor, raw in zip(infer.inputs, infer.raw_input_contents, strict=True):
        if tensor.name == name:
            assert tensor.datatype == "BYTES"
            return list(tensor.shape), deserialize_bytes_tensor(raw)
    raise KeyError(name)


def test_images_travel_as_image_url_input_of_shape_1_by_n_in_order() -> None:
    request = GenerationRequest("<|image|><|image|> same?", SamplingOptions(8), images=URLS)
    shape, values = _tensor(build_request("tensorrt_llm_bls", request, ACCEPTS), "image_url_input")
    assert shape == [1, 2]
    assert [v.decode() for v in values] == list(URLS)


def test_a_text_request_sends_no_image_tensor() -> None:
    infer = build_request("tensorrt_llm_bls", GenerationRequest("hi", SamplingOptions(8)), ACCEPTS)
    assert "image_url_input" not in {t.name for t in infer.inputs}


def test_images_to_a_route_without_the_image_input_are_a_400() -> None:
    request = GenerationRequest("<|image|>", SamplingOptions(8), images=URLS[:1])
    with pytest.raises(InvalidRequest, match="does not take images"):
        build_request("ensemble", request, frozenset({"text_input", "max_tokens"}))

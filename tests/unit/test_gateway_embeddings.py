"""The embeddings service's own rules: inputs normalised and named, OpenAI's base64 encoding."""

from __future__ import annotations

import base64
import struct

import pytest

from gateway.core.embeddings import MAX_INPUTS, encode, input_names, inputs_of
from gateway.errors import InvalidRequest


@pytest.mark.parametrize(
    ("given", "inputs", "names"),
    [
        ("hi", ["hi"], ["input"]),
        (["a", "b"], ["a", "b"], ["input[0]", "input[1]"]),
        ([1, 2, 3], [[1, 2, 3]], ["input"]),
        ([[1], [2, 3]], [[1], [2, 3]], ["input[0]", "input[1]"]),
    ],
)
def test_every_input_shape_becomes_a_list_of_inputs(given, inputs, names) -> None:
    assert inputs_of(given) == inputs
    assert input_names(given, len(inputs)) == names


@pytest.mark.parametrize(
    ("given", "param"),
    [([], "input"), ("", "input"), (["a", ""], "input[1]"), ([[1, -1]], "input[0]"),
     (["a"] * (MAX_INPUTS + 1), "input")],
)  # fmt: skip
def test_bad_inputs_name_the_input(given, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        inputs_of(given)
    assert caught.value.param == param


def test_base64_is_the_little_endian_float32_bytes_and_floats_decode_them() -> None:
    vector = struct.pack("<3f", 0.5, -1.0, 0.25)
    assert base64.b64decode(encode(vector, "base64")) == vector
    assert encode(vector, "float") == [0.5, -1.0, 0.25]


def test_the_openapi_document_describes_the_embeddings_route() -> None:
    from gateway.api.app import create_app
    from gateway.settings import Settings

    operation = create_app(Settings()).openapi()["paths"]["/v1/embeddings"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["model", "input"]
    assert body["properties"]["encoding_format"]["enum"] == ["float", "base64"]
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/EmbeddingResponse"}
    assert operation["security"] == [{"bearer": []}]

"""`/v1/embeddings` through the official OpenAI SDK against the real gateway and Triton's
`embeddings` model (the MoE model's mean-pooled, normalised hidden states)."""

from __future__ import annotations

import base64
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from tokenizers import Tokenizer

from tests.support import metric_value

TEXTS = ["What does the json module do?", "A red circle.", "def add(a, b): return a + b"]


def _embed(client: openai.OpenAI, model_id: str, input: object, **kw: object) -> list[np.ndarray]:
    response = client.embeddings.create(model=model_id, input=input, **kw)  # type: ignore[arg-type]
    return [np.asarray(d.embedding, dtype=np.float64) for d in response.data]


def _post(gateway, body: dict) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/embeddings", json=body, headers=gateway.headers, timeout=60
    )


def test_the_model_card_says_it_serves_embeddings(client: openai.OpenAI, model_id: str) -> None:
    card = client.models.retrieve(model_id).model_dump()
    assert card["capabilities"]["embeddings"] is True


def test_a_text_embeds_to_a_unit_vector_with_usage(client: openai.OpenAI, model_id: str) -> None:
    response = client.embeddings.create(model=model_id, input=TEXTS[0])
    assert response.object == "list" and response.model == model_id
    (item,) = response.data
    assert item.object == "embedding" and item.index == 0
    vector = np.asarray(item.embedding)
    assert vector.shape == (256,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert response.usage.prompt_tokens == response.usage.total_tokens > 0


def test_base64_decodes_to_the_same_floats(gateway, model_id: str) -> None:
    floats = _post(gateway, {"model": model_id, "input": TEXTS[0]}).json()["data"][0]["embedding"]
    encoded = _post(
        gateway, {"model": model_id, "input": TEXTS[0], "encoding_format": "base64"}
    ).json()["data"][0]["embedding"]
    raw = base64.b64decode(encoded)
    assert struct.unpack(f"<{len(raw) // 4}f", raw) == pytest.approx(floats, abs=0)


def test_the_sdk_decodes_base64_to_the_same_floats(client: openai.OpenAI, model_id: str) -> None:
    # Without `encoding_format` the SDK asks for base64 and decodes it itself.
    (floats,) = _embed(client, model_id, TEXTS[1], encoding_format="float")
    (decoded,) = _embed(client, model_id, TEXTS[1])
    np.testing.assert_allclose(decoded, floats, atol=0)


def test_a_text_is_most_similar_to_itself(client: openai.OpenAI, model_id: str) -> None:
    a, a_again, b = _embed(client, model_id, [TEXTS[0], TEXTS[0], TEXTS[2]])
    assert float(a @ a_again) == pytest.approx(1.0, abs=1e-5)
    assert float(a @ b) < 0.999


def test_a_batch_answers_in_order_with_its_usage(client: openai.OpenAI, model_id: str) -> None:
    response = client.embeddings.create(model=model_id, input=TEXTS)
    assert [d.index for d in response.data] == [0, 1, 2]
    alone = [_embed(client, model_id, t)[0] for t in TEXTS]
    for item, expected in zip(response.data, alone, strict=True):
        np.testing.assert_allclose(item.embedding, expected, atol=1e-5)
    counts = [client.embeddings.create(model=model_id, input=t).usage.prompt_tokens for t in TEXTS]
    assert response.usage.prompt_tokens == response.usage.total_tokens == sum(counts)


def test_token_ids_embed_as_their_text(
    client: openai.OpenAI, model_id: str, tiny_model_dir: Path
) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    ids = [tokenizer.encode(t, add_special_tokens=False).ids for t in TEXTS[:2]]
    (text,) = _embed(client, model_id, TEXTS[0])
    (one,) = _embed(client, model_id, ids[0])
    both = _embed(client, model_id, ids)
    np.testing.assert_allclose(one, text, atol=1e-5)
    np.testing.assert_allclose(both[0], text, atol=1e-5)
    assert client.embeddings.create(model=model_id, input=ids[0]).usage.prompt_tokens == len(ids[0])


def test_dimensions_of_the_hidden_size_only(gateway, model_id: str) -> None:
    assert _post(gateway, {"model": model_id, "input": "x", "dimensions": 256}).status_code == 200
    response = _post(gateway, {"model": model_id, "input": "x", "dimensions": 64})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "dimensions"


@pytest.mark.parametrize(
    ("input", "param"),
    [
        ([], "input"),
        ("", "input"),
        (["a", "", "b"], "input[1]"),
        ([[1, 2], [], [3]], "input[1]"),
        ([[1, -2]], "input[0]"),
        (["a"] * 257, "input"),
        (["a", "b", "c", "word " * 3000], "input[3]"),
        ([[1, 2], [10**6]], "input[1]"),
        (5, "input"),
    ],
)
def test_bad_inputs_are_400s_naming_the_input(
    gateway, model_id: str, input: object, param: str
) -> None:
    response = _post(gateway, {"model": model_id, "input": input})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_an_unknown_encoding_format_is_a_400(gateway, model_id: str) -> None:
    response = _post(gateway, {"model": model_id, "input": "x", "encoding_format": "int8"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "encoding_format"


def test_embeddings_need_a_token(gateway, model_id: str) -> None:
    response = httpx.post(
        f"{gateway.base_url}/embeddings", json={"model": model_id, "input": "x"}, timeout=30
    )
    assert response.status_code == 401


def test_a_model_without_the_embeddings_model_refuses(llmapi_gateway, model_id: str) -> None:
    response = _post(llmapi_gateway, {"model": model_id, "input": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == f"model '{model_id}' does not support embeddings"


def test_triton_batches_concurrent_inputs(client: openai.OpenAI, model_id: str, triton) -> None:
    def counts() -> tuple[float, float]:
        labels = {"model": "embeddings"}
        return (
            metric_value(triton.metrics_url, "nv_inference_request_success", **labels),
            metric_value(triton.metrics_url, "nv_inference_exec_count", **labels),
        )

    requests_before, executions_before = counts()
    inputs = [f"input number {i}" for i in range(32)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: client.embeddings.create(model=model_id, input=inputs), range(4)))
    requests, executions = counts()
    assert requests - requests_before == 128
    assert executions - executions_before < 64

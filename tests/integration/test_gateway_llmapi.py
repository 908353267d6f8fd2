"""The gateway in front of the CPU `llmapi` model (NVIDIA's LLM-API tensors): chat completions,
whole and streamed with usage, stop strings, and a 400 for a setting llmapi has no tensor for."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.local.triton import TritonProcess
from tests.gateway_fixtures import GatewayProcess, start_gateway, stop_gateway

MODEL = "tiny-llmapi"
MESSAGES = [{"role": "user", "content": "What does the json module do?"}]


@pytest.fixture(scope="module")
def gateway(
    triton: TritonProcess, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway serving the session Triton's `llmapi` model and its BLS under two ids."""
    config = {
        "cache": {"enabled": False},
        "models": [
            {"id": MODEL, "route": "llmapi", "tokenizer_dir": str(tiny_model_dir)},
            {"id": "tiny-bls", "route": "tensorrt_llm_bls", "tokenizer_dir": str(tiny_model_dir)},
        ],
        "discover_models": False,
    }
    process = start_gateway(
        tmp_path_factory.mktemp("gateway"), triton_urls=[triton.grpc_url], config=config
    )
    yield process
    stop_gateway(process)


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.headers["Authorization"][7:])


def _both(client: openai.OpenAI, max_tokens: int) -> list:
    return [
        client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=max_tokens, temperature=0
        )
        for model in (MODEL, "tiny-bls")
    ]


def test_a_chat_completion_on_llmapi_equals_the_bls_routes(client: openai.OpenAI) -> None:
    llm, bls = _both(client, 4)
    assert llm.choices[0].message.content == bls.choices[0].message.content
    assert llm.choices[0].finish_reason == bls.choices[0].finish_reason == "length"
    assert llm.usage.completion_tokens == bls.usage.completion_tokens == 4
    assert llm.usage.prompt_tokens == bls.usage.prompt_tokens


def test_an_answer_that_ends_counts_the_end_tokens_step(client: openai.OpenAI) -> None:
    # llmapi reports no token counts: one response per step, the one that produced the end
    # token included (the BLS does not count that token).
    llm, bls = _both(client, 64)
    assert llm.choices[0].message.content == bls.choices[0].message.content
    assert llm.choices[0].finish_reason == bls.choices[0].finish_reason == "stop"
    assert llm.usage.completion_tokens in (
        bls.usage.completion_tokens,
        bls.usage.completion_tokens + 1,
    )


def test_streamed_deltas_add_up_to_the_whole_answer(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0
    )
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_setting_without_an_llmapi_tensor_is_a_400(gateway: GatewayProcess) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "logprobs": True}
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "logprobs"

"""Fallback: a gateway with no Triton upstream answers through the configured provider, which
here is a second real LocalMoE gateway (in front of the session's Triton), called by LiteLLM."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.gateway_fixtures import (
    GatewayProcess,
    mint_test_token,
    start_gateway,
    stop_gateway,
)
from tests.support import free_port, metric_value

MESSAGES = [{"role": "user", "content": "What is a tuple?"}]
# Configured on the gateway under test, outside `fallback.models`: it never falls back.
LOCAL_ONLY = "tiny-moe-local-only"
COUNTER = "localmoe_fallback_requests_total"


def _start(workdir: Path, tiny_model_dir: Path, model_id: str, *, api_base: str) -> GatewayProcess:
    """A gateway whose only Triton upstream is a port nobody listens on, falling back to
    `api_base` for `model_id` only."""
    models = [
        # A context the provider does not have: the provider, not this gateway, refuses
        # what does not fit.
        {"id": model_id, "tokenizer_dir": str(tiny_model_dir), "context_length": 1_000_000},
        {"id": LOCAL_ONLY, "tokenizer_dir": str(tiny_model_dir)},
    ]
    config = {
        "models": models,
        "cache": {"enabled": False},
        "fallback": {
            "model": f"openai/{model_id}",
            "api_base": api_base,
            "api_key": mint_test_token("fallback"),
            "models": [model_id],
            "timeout_s": 20,
        },
    }
    return start_gateway(
        workdir,
        triton_urls=[f"127.0.0.1:{free_port()}"],
        config=config,
        wait_path="/health/live",
    )


@pytest.fixture(scope="module")
def fallback_gateway(
    gateway: GatewayProcess,
    model_id: str,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    """The gateway under test; its provider is the session's `gateway`."""
    started = time.monotonic()
    process = _start(
        tmp_path_factory.mktemp("fallback"), tiny_model_dir, model_id, api_base=gateway.base_url
    )
    print(f"gateway with a fallback up in {time.monotonic() - started:.1f}s")
    yield process
    stop_gateway(process)


@pytest.fixture
def sdk(fallback_gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=fallback_gateway.base_url, api_key=fallback_gateway.token, max_retries=0
    ) as client:
        yield client


def _count(gateway: GatewayProcess, model: str, outcome: str) -> float:
    return metric_value(f"{gateway.url}/metrics", COUNTER, model=model, outcome=outcome)


def test_chat_completion_comes_from_the_fallback(
    sdk: openai.OpenAI, fallback_gateway: GatewayProcess, model_id: str
) -> None:
    before = _count(fallback_gateway, model_id, "ok")
    raw = sdk.chat.completions.with_raw_response.create(
        model=model_id,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
        extra_body={"ignore_eos": True, "cache": False},  # an engine extra and a local one
    )
    reply = raw.parse()
    assert raw.headers["x-localmoe-upstream"] == "fallback"
    assert raw.headers["x-request-id"]
    assert reply.choices[0].message.content
    # `ignore_eos` reached the provider's engine: all 8 tokens, however early EOS came.
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    assert reply.choices[0].finish_reason == "length"
    assert _count(fallback_gateway, model_id, "ok") == before + 1


def test_streamed_chat_completion_comes_from_the_fallback(
    sdk: openai.OpenAI, model_id: str
) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model=model_id,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["x-localmoe-upstream"] == "fallback"
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_text_completion_comes_from_the_fallback(sdk: openai.OpenAI, model_id: str) -> None:
    raw = sdk.completions.with_raw_response.create(
        model=model_id, prompt="Once upon a time", max_tokens=6, temperature=0
    )
    reply = raw.parse()
    assert raw.headers["x-localmoe-upstream"] == "fallback"
    assert reply.object == "text_completion"
    assert reply.choices[0].text


def test_the_providers_usage_is_charged_to_the_callers_token_budget(
    fallback_gateway: GatewayProcess, model_id: str
) -> None:
    token = mint_test_token("fallback-budget", tpm=100_000)
    with openai.OpenAI(base_url=fallback_gateway.base_url, api_key=token, max_retries=0) as sdk:
        first = sdk.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=8)  # type: ignore[arg-type]
        # A stream that did not ask for its usage: charged all the same, shown none.
        chunks = list(
            sdk.chat.completions.create(
                model=model_id,
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=8,
                stream=True,
            )
        )
        raw = sdk.chat.completions.with_raw_response.create(
            model=model_id,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=8,
        )
    assert first.usage is not None
    assert all(c.choices and c.usage is None for c in chunks)
    # The third request's budget is read after the first two were charged, the stream's at least
    # its 8 completion tokens.
    remaining = int(raw.headers["x-ratelimit-remaining-tokens"])
    assert remaining <= 100_000 - first.usage.total_tokens - 8


def test_a_model_outside_fallback_models_gets_the_503(fallback_gateway: GatewayProcess) -> None:
    response = httpx.post(
        f"{fallback_gateway.base_url}/chat/completions",
        headers=fallback_gateway.headers,
        json={"model": LOCAL_ONLY, "messages": MESSAGES, "max_tokens": 4},
        timeout=30,
    )
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert "x-localmoe-upstream" not in response.headers
    assert response.json()["error"]["code"] == "upstream_unavailable"


def test_the_providers_refusal_passes_through_as_its_4xx(
    sdk: openai.OpenAI, fallback_gateway: GatewayProcess, model_id: str
) -> None:
    before = _count(fallback_gateway, model_id, "error")
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model=model_id,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=500_000,  # fits this gateway's context, not the provider's
        )
    assert caught.value.response.headers["x-localmoe-upstream"] == "fallback"
    body: Any = caught.value.body
    assert body["code"] == "context_length_exceeded"
    assert "context" in body["message"] and "Traceback" not in body["message"]
    assert _count(fallback_gateway, model_id, "error") == before + 1


def test_a_stopped_provider_is_an_openai_502_not_a_500(
    tiny_model_dir: Path, model_id: str, tmp_path: Path
) -> None:
    stopped = f"http://127.0.0.1:{free_port()}/v1"  # the provider is down: nothing listens
    gateway = _start(tmp_path, tiny_model_dir, model_id, api_base=stopped)
    try:
        with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.token, max_retries=0) as c:
            with pytest.raises(openai.APIStatusError) as caught:
                c.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=4)  # type: ignore[arg-type]
            error: Any = caught.value.body
            assert caught.value.status_code == 502
            assert error["code"] == "upstream_error" and "Traceback" not in error["message"]
            with pytest.raises(openai.APIStatusError) as streamed:
                c.chat.completions.create(
                    model=model_id,
                    messages=MESSAGES,  # type: ignore[arg-type]
                    max_tokens=4,
                    stream=True,
                )
            assert streamed.value.status_code == 502
        assert _count(gateway, model_id, "error") == 2
        errors = metric_value(
            f"{gateway.url}/metrics", "localmoe_errors_total", code="upstream_error"
        )
        assert errors == 2
    finally:
        stop_gateway(gateway)


def test_a_provider_failing_mid_stream_ends_the_stream_with_an_error_event(
    triton: Any, tiny_model_dir: Path, model_id: str, tmp_path: Path
) -> None:
    # The provider stops each Triton request after 0.5 s: the stream fails after its first chunks.
    provider = start_gateway(
        tmp_path / "provider",
        triton_urls=[triton.grpc_url],
        config={"cache": {"enabled": False}, "triton": {"timeout_s": 0.5}},
    )
    gateway = None
    try:
        gateway = _start(tmp_path / "gateway", tiny_model_dir, model_id, api_base=provider.base_url)
        with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.token, max_retries=0) as c:
            stream = c.chat.completions.create(
                model=model_id,
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=1500,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            received = []
            with pytest.raises(openai.APIError) as caught:
                for chunk in stream:
                    received.append(chunk)
        assert received, "the stream failed before its first chunk"
        assert caught.value.code == "upstream_error"
        assert "Traceback" not in caught.value.message
        assert _count(gateway, model_id, "error") == 1
    finally:
        if gateway is not None:
            stop_gateway(gateway)
        stop_gateway(provider)

"""The response cache on real gateways sharing a real Redis: deterministic requests are answered
again from the cache (`x-cache: hit`), as JSON or as a replayed stream, within one tenant only,
and never when the request or the model opts out.

Two replicas share the session's Redis. Each test asks about its own prompt, so entries never
leak between tests.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.local.redis import RedisServer
from tests.gateway_fixtures import (
    GatewayProcess,
    auth,
    mint_test_token,
    start_gateway,
    stop_gateway,
)
from tests.support import metric_value

UNCACHED_MODEL = "tiny-moe-uncached"


def _start(workdir: Any, triton: Any, redis: RedisServer) -> GatewayProcess:
    # The served model under its own id, and again under an id with caching turned off.
    models = [{}, {"id": UNCACHED_MODEL, "cache": False}]
    return start_gateway(
        workdir,
        triton_urls=[triton.grpc_url],
        config={"models": models},
        env={"LOCALMOE_REDIS_URL": redis.url},
    )


@pytest.fixture(scope="module")
def cache_gw(
    triton: Any, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway with the response cache on (the default), backed by Redis."""
    process = _start(tmp_path_factory.mktemp("cache-a"), triton, redis_server)
    yield process
    stop_gateway(process)


@pytest.fixture(scope="module")
def replica(
    triton: Any, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A second replica on the same Redis."""
    process = _start(tmp_path_factory.mktemp("cache-b"), triton, redis_server)
    yield process
    stop_gateway(process)


def _prompt() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Say something about case {uuid.uuid4().hex[:8]}."}]


def _chat(
    gateway: GatewayProcess,
    messages: list[dict[str, str]],
    token: str | None = None,
    model: str | None = None,
    **kw: Any,
) -> tuple[str | None, Any]:
    """(x-cache header, ChatCompletion or list of chunks) of one request through the OpenAI SDK."""
    client = openai.OpenAI(base_url=gateway.base_url, api_key=token or gateway.token, max_retries=0)
    kw.setdefault("temperature", 0)
    with client:
        raw = client.chat.completions.with_raw_response.create(  # type: ignore[call-overload]
            model=model or _model(gateway), messages=messages, max_tokens=4, **kw
        )
        reply = raw.parse()
        return raw.headers.get("x-cache"), list(reply) if kw.get("stream") else reply


def _model(gateway: GatewayProcess) -> str:
    listed = httpx.get(f"{gateway.base_url}/models", headers=gateway.headers, timeout=10).json()
    return next(m["id"] for m in listed["data"] if m["id"] != UNCACHED_MODEL)


def _text(reply: Any) -> str:
    return reply.choices[0].message.content


def test_identical_request_is_a_hit_with_the_same_answer(cache_gw: GatewayProcess) -> None:
    messages = _prompt()
    lookups = f"{cache_gw.url}/metrics"
    before = {
        (tier, result): metric_value(
            lookups, "localmoe_cache_lookups_total", tier=tier, result=result
        )
        for tier in ("local", "redis")
        for result in ("hit", "miss")
    }
    first_status, first = _chat(cache_gw, messages)
    second_status, second = _chat(cache_gw, messages)
    assert (first_status, second_status) == ("miss", "hit")
    grew = {
        key: metric_value(lookups, "localmoe_cache_lookups_total", tier=key[0], result=key[1])
        - value
        for key, value in before.items()
    }
    # The first lookup missed here and in Redis; the second hit in this process.
    assert grew == {("local", "hit"): 1, ("local", "miss"): 1, ("redis", "hit"): 0,
                    ("redis", "miss"): 1}  # fmt: skip
    assert _text(second) == _text(first)
    assert second.choices[0].finish_reason == first.choices[0].finish_reason
    assert second.usage == first.usage
    assert second.id != first.id


def test_field_order_and_explicit_defaults_do_not_change_the_key(
    cache_gw: GatewayProcess,
) -> None:
    messages = _prompt()
    model = _model(cache_gw)
    _chat(cache_gw, messages)
    body = {"top_p": 1, "max_tokens": 4, "n": 1, "messages": messages, "temperature": 0.0}
    response = httpx.post(
        f"{cache_gw.base_url}/chat/completions",
        json={**body, "model": model},
        headers=cache_gw.headers,
        timeout=30,
    )
    assert response.headers["x-cache"] == "hit"


def test_cached_answer_is_replayed_as_a_stream(cache_gw: GatewayProcess) -> None:
    messages = _prompt()
    _, whole = _chat(cache_gw, messages)
    body = {
        "model": _model(cache_gw),
        "messages": messages,
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    url = f"{cache_gw.base_url}/chat/completions"
    with httpx.stream("POST", url, json=body, headers=cache_gw.headers, timeout=30) as response:
        assert response.headers["x-cache"] == "hit"
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == _text(whole)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == whole.choices[0].finish_reason and finishes.count("length") == 1
    # Like a fresh stream: the role chunk, then the text in several pieces.
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]]
    assert len(contents) >= 2 and all(contents), contents
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole.usage.model_dump(
        exclude_none=True
    )


def test_streamed_answer_fills_the_cache(cache_gw: GatewayProcess) -> None:
    messages = _prompt()
    streamed_status, stream = _chat(cache_gw, messages, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    status, reply = _chat(cache_gw, messages)
    assert (streamed_status, status) == ("miss", "hit")
    assert _text(reply) == text


def test_another_replica_answers_from_redis(
    cache_gw: GatewayProcess, replica: GatewayProcess
) -> None:
    messages = _prompt()
    _, first = _chat(cache_gw, messages)
    status, second = _chat(replica, messages)
    assert status == "hit" and _text(second) == _text(first)


def test_completions_are_cached_too(cache_gw: GatewayProcess) -> None:
    body = {"model": _model(cache_gw), "prompt": f"Case {uuid.uuid4().hex}", "max_tokens": 3}
    body["temperature"] = 0
    url = f"{cache_gw.base_url}/completions"
    first = httpx.post(url, json=body, headers=cache_gw.headers, timeout=30)
    second = httpx.post(url, json=body, headers=cache_gw.headers, timeout=30)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert second.json()["choices"] == first.json()["choices"]


def test_tenants_do_not_share_entries(cache_gw: GatewayProcess) -> None:
    messages = _prompt()
    acme = mint_test_token("ann", tenant="acme")
    acme_colleague = mint_test_token("bob", tenant="acme")
    globex = mint_test_token("cid", tenant="globex")
    assert _chat(cache_gw, messages, token=acme)[0] == "miss"
    assert _chat(cache_gw, messages, token=globex)[0] == "miss"
    assert _chat(cache_gw, messages, token=acme_colleague)[0] == "hit"
    assert _chat(cache_gw, messages)[0] == "miss"  # no tenant: a space of its own


def test_sampling_without_a_seed_is_not_cached(cache_gw: GatewayProcess) -> None:
    messages = _prompt()
    statuses = [_chat(cache_gw, messages, temperature=0.8)[0] for _ in range(2)]
    assert statuses == ["miss", "miss"]


def test_sampling_with_a_seed_is_cached(cache_gw: GatewayProcess) -> None:
    messages = _prompt()
    statuses = [_chat(cache_gw, messages, temperature=0.8, seed=7)[0] for _ in range(2)]
    assert statuses == ["miss", "hit"]


def test_cache_false_in_the_body_skips_the_cache(cache_gw: GatewayProcess) -> None:
    messages = _prompt()
    _chat(cache_gw, messages)
    status, _ = _chat(cache_gw, messages, extra_body={"cache": False})
    assert status == "miss"


def test_cache_control_no_cache_skips_the_cache(cache_gw: GatewayProcess) -> None:
    messages = _prompt()
    _chat(cache_gw, messages)
    status, _ = _chat(cache_gw, messages, extra_headers={"Cache-Control": "no-cache"})
    assert status == "miss"


def test_model_with_cache_off_is_never_cached(cache_gw: GatewayProcess) -> None:
    messages = _prompt()
    statuses = [_chat(cache_gw, messages, model=UNCACHED_MODEL)[0] for _ in range(2)]
    assert statuses == ["miss", "miss"]


def test_hit_still_needs_a_valid_token(cache_gw: GatewayProcess) -> None:
    messages = _prompt()
    _chat(cache_gw, messages)
    body = {"model": _model(cache_gw), "messages": messages, "max_tokens": 4, "temperature": 0}
    response = httpx.post(
        f"{cache_gw.base_url}/chat/completions", json=body, headers=auth("bad"), timeout=30
    )
    assert response.status_code == 401 and "x-cache" not in response.headers

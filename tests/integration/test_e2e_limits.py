"""Rate limits on real gateways sharing a real Redis: exact admission across replicas, OpenAI's
429 with its headers, token budgets, and what happens while Redis is down and after it returns.

Two gateway processes share one Redis: `open_gw` fails open (the default), `closed_gw` fails
closed. Each test uses its own token subject, so counters never leak between tests.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from gateway.local.redis import RedisServer
from tests.gateway_fixtures import (
    GatewayProcess,
    auth,
    mint_test_token,
    start_gateway,
    stop_gateway,
)
from tests.support import metric_value, wait_for

PROMPT = "Count the tokens of this prompt, which has a couple of dozen of them, please."
RESET = re.compile(r"^(\d+ms|\d+s|\d+m\d+s|\d+h\d+m\d+s)$")


@pytest.fixture(scope="module")
def limits_redis() -> Iterator[RedisServer]:
    """A Redis of this module's own, which the outage tests kill and restart."""
    with RedisServer() as server:
        yield server


def _start(workdir: Path, triton: Any, redis: RedisServer, **env: str) -> GatewayProcess:
    return start_gateway(
        workdir,
        triton_urls=[triton.grpc_url],
        config={"cache": {"enabled": False}},
        env={"LOCALMOE_REDIS_URL": redis.url, **env},
    )


@pytest.fixture(scope="module")
def open_gw(
    triton: Any, limits_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A replica whose limits fail open (per-process counters) while Redis is down."""
    process = _start(tmp_path_factory.mktemp("limits-open"), triton, limits_redis)
    yield process
    stop_gateway(process)


@pytest.fixture(scope="module")
def closed_gw(
    triton: Any, limits_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A replica whose limits fail closed (503) while Redis is down."""
    process = _start(
        tmp_path_factory.mktemp("limits-closed"),
        triton,
        limits_redis,
        LOCALMOE_RATELIMIT__FAIL_OPEN="false",
    )
    yield process
    stop_gateway(process)


@pytest.fixture
def redis_down(limits_redis: RedisServer) -> Iterator[RedisServer]:
    """Redis killed for the test, started again (same port, empty) afterwards."""
    limits_redis.kill()
    try:
        yield limits_redis
    finally:
        limits_redis.start()


def _token(**claims: Any) -> str:
    return mint_test_token(f"limits-{uuid.uuid4().hex[:8]}", **claims)


def _charged(server: RedisServer, subject: str) -> int:
    """The tokens counted for `subject` in the current window."""
    client = redis.Redis.from_url(server.url)
    try:
        return int(client.get(f"localmoe:rl:t:s:{subject}") or 0)
    finally:
        client.close()


def _completion(model_id: str, **extra: Any) -> dict[str, Any]:
    return {"model": model_id, "prompt": PROMPT, "max_tokens": 1, "temperature": 0, **extra}


def _post(gateway: GatewayProcess, token: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/completions", json=body, headers=auth(token), timeout=30)


async def _burst(
    gateways: list[GatewayProcess], token: str, body: dict[str, Any], per_gateway: int
) -> Counter[int]:
    """Send `per_gateway` requests to each gateway, all at once; count the statuses."""
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        requests = [
            client.post(f"{gw.base_url}/completions", json=body, headers=auth(token))
            for gw in gateways
            for _ in range(per_gateway)
        ]
        responses = await asyncio.gather(*requests)
    return Counter(r.status_code for r in responses)


def test_two_gateways_on_one_redis_admit_exactly_rpm_requests(
    open_gw: GatewayProcess, closed_gw: GatewayProcess, model_id: str
) -> None:
    token = _token(rpm=7)
    statuses = asyncio.run(_burst([open_gw, closed_gw], token, _completion(model_id), 12))
    assert statuses == {200: 7, 429: 17}


def test_refusal_is_429_rate_limit_exceeded_with_retry_after(
    open_gw: GatewayProcess, closed_gw: GatewayProcess, model_id: str
) -> None:
    token = _token(rpm=2)
    metrics = f"{open_gw.url}/metrics"
    decisions = {
        d: metric_value(metrics, "localmoe_ratelimit_decisions_total", kind="requests", decision=d)
        for d in ("admitted", "refused")
    }
    assert _post(open_gw, token, _completion(model_id)).status_code == 200
    assert _post(closed_gw, token, _completion(model_id)).status_code == 200
    refused = _post(open_gw, token, _completion(model_id))
    assert refused.status_code == 429
    for decision, grew in (("admitted", 1), ("refused", 1)):  # this replica's own decisions
        after = metric_value(
            metrics, "localmoe_ratelimit_decisions_total", kind="requests", decision=decision
        )
        assert after - decisions[decision] == grew
    error = refused.json()["error"]
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "requests")
    assert "Rate limit reached for requests per minute" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert RESET.match(refused.headers["x-ratelimit-reset-requests"])


def test_openai_sdk_raises_rate_limit_error(open_gw: GatewayProcess, model_id: str) -> None:
    client = openai.OpenAI(base_url=open_gw.base_url, api_key=_token(rpm=1), max_retries=0)
    with client:
        client.completions.create(model=model_id, prompt=PROMPT, max_tokens=1)
        with pytest.raises(openai.RateLimitError) as exc:
            client.completions.create(model=model_id, prompt=PROMPT, max_tokens=1)
    assert exc.value.code == "rate_limit_exceeded"


def test_success_carries_the_ratelimit_headers(open_gw: GatewayProcess, model_id: str) -> None:
    response = _post(open_gw, _token(rpm=5, tpm=10_000), _completion(model_id))
    assert response.status_code == 200
    assert response.headers["x-ratelimit-limit-requests"] == "5"
    assert response.headers["x-ratelimit-remaining-requests"] == "4"
    assert response.headers["x-ratelimit-limit-tokens"] == "10000"
    assert response.headers["x-ratelimit-remaining-tokens"] == "10000"  # charged afterwards
    assert RESET.match(response.headers["x-ratelimit-reset-tokens"])
    assert "retry-after" not in response.headers


def test_stream_carries_the_ratelimit_headers(open_gw: GatewayProcess, model_id: str) -> None:
    body = _completion(model_id, stream=True)
    url = f"{open_gw.base_url}/completions"
    with httpx.stream("POST", url, json=body, headers=auth(_token(rpm=3)), timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        assert r.headers["x-ratelimit-remaining-requests"] == "2"
        assert [line for line in r.iter_lines() if line][-1] == "data: [DONE]"


def test_prompt_over_the_remaining_token_budget_is_429_tokens(
    open_gw: GatewayProcess, closed_gw: GatewayProcess, model_id: str
) -> None:
    prompt_tokens = _post(open_gw, _token(), _completion(model_id)).json()["usage"]["prompt_tokens"]
    # Room for the first request (prompt + 1 token), not for a second prompt.
    budget = prompt_tokens + 1 + prompt_tokens // 2
    token = _token(tpm=budget)

    def decisions(gateway: GatewayProcess, decision: str) -> float:
        url = f"{gateway.url}/metrics"
        return metric_value(url, "localmoe_ratelimit_decisions_total", kind="tokens",
                            decision=decision)  # fmt: skip

    admitted, refusals = decisions(open_gw, "admitted"), decisions(closed_gw, "refused")
    first = _post(open_gw, token, _completion(model_id))
    assert first.status_code == 200
    refused = _post(closed_gw, token, _completion(model_id))  # the budget is shared
    assert refused.status_code == 429
    assert decisions(open_gw, "admitted") == admitted + 1
    assert decisions(closed_gw, "refused") == refusals + 1
    error = refused.json()["error"]
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "tokens")
    used = first.json()["usage"]["total_tokens"]  # prompt and completion, charged after it
    assert int(refused.headers["x-ratelimit-remaining-tokens"]) == budget - used
    assert int(refused.headers["retry-after"]) >= 1


def test_tokens_of_a_stream_cut_short_are_charged(
    open_gw: GatewayProcess, model_id: str, limits_redis: RedisServer
) -> None:
    subject = f"limits-{uuid.uuid4().hex[:8]}"
    token = mint_test_token(subject, rpm=100, tpm=100_000)
    body = _completion(model_id, stream=True, max_tokens=200, ignore_eos=True, temperature=1.0)
    url = f"{open_gw.base_url}/completions"
    with httpx.stream("POST", url, json=body, headers=auth(token), timeout=30) as response:
        events = (line for line in response.iter_lines() if line)
        for _ in range(6):  # five tokens, then we hang up
            next(events)
    # The gateway charges in the background once it notices, in one INCRBY.
    assert wait_for(lambda: _charged(limits_redis, subject) > 0, timeout=10)
    after = _post(open_gw, token, _completion(model_id))
    prompt_tokens = after.json()["usage"]["prompt_tokens"]
    charged = 100_000 - int(after.headers["x-ratelimit-remaining-tokens"])
    assert prompt_tokens + 5 <= charged < prompt_tokens + 200


def test_prompt_over_the_whole_token_budget_is_429_without_retry_after(
    open_gw: GatewayProcess, model_id: str
) -> None:
    refused = _post(open_gw, _token(tpm=3), _completion(model_id))
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "tokens"
    assert "Request too large" in refused.json()["error"]["message"]
    assert "retry-after" not in refused.headers


def test_fail_open_gateway_keeps_serving_while_redis_is_down(
    open_gw: GatewayProcess, model_id: str, redis_down: RedisServer
) -> None:
    token = _token(rpm=2)
    statuses = [_post(open_gw, token, _completion(model_id)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]  # limits now count in this process alone


def test_redis_outage_is_counted_in_the_metrics(
    open_gw: GatewayProcess, model_id: str, redis_down: RedisServer
) -> None:
    metrics = f"{open_gw.url}/metrics"
    before = metric_value(metrics, "localmoe_ratelimit_fallback_decisions_total")
    assert _post(open_gw, _token(rpm=10), _completion(model_id)).status_code == 200
    assert metric_value(metrics, "localmoe_ratelimit_fallback_decisions_total") > before
    assert metric_value(metrics, "localmoe_ratelimit_storage_errors_total") >= 1


def test_fail_closed_gateway_answers_503_while_redis_is_down(
    closed_gw: GatewayProcess, model_id: str, redis_down: RedisServer
) -> None:
    response = _post(closed_gw, _token(rpm=100), _completion(model_id))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "rate_limits_unavailable"
    assert int(response.headers["retry-after"]) >= 1  # when Redis is tried again


def test_openai_sdk_retries_a_503_after_retry_after(
    closed_gw: GatewayProcess, model_id: str, redis_down: RedisServer
) -> None:
    client = openai.OpenAI(base_url=closed_gw.base_url, api_key=_token(rpm=100), max_retries=1)
    started = time.monotonic()
    with client, pytest.raises(openai.InternalServerError) as exc:
        client.completions.create(model=model_id, prompt=PROMPT, max_tokens=1)
    assert exc.value.status_code == 503
    assert time.monotonic() - started >= 1  # it waited Retry-After, not its own 0.5 s backoff


def test_shared_limits_resume_after_redis_restarts(
    open_gw: GatewayProcess, closed_gw: GatewayProcess, model_id: str, limits_redis: RedisServer
) -> None:
    limits_redis.kill()
    probe = _token(rpm=1000)
    assert _post(closed_gw, probe, _completion(model_id)).status_code == 503
    limits_redis.start()
    # Each gateway tries Redis again a second after its last failure.
    assert wait_for(
        lambda: _post(closed_gw, probe, _completion(model_id)).status_code == 200, timeout=10
    )
    _post(open_gw, probe, _completion(model_id))  # let the fail-open replica reconnect too
    token = _token(rpm=4)
    statuses = asyncio.run(_burst([open_gw, closed_gw], token, _completion(model_id), 4))
    assert statuses == {200: 4, 429: 4}

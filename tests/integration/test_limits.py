"""Rate limits: exact shared admission on a real Redis, headers, token budgets, outages."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from gateway.errors import LimitsUnavailable
from gateway.local.redis import RedisServer
from gateway.policy.auth import Principal
from gateway.policy.ratelimit import RateLimiter, format_reset
from gateway.settings import RateLimitSettings

ALICE = Principal(sub="alice")


def _errors() -> float:
    return REGISTRY.get_sample_value("localmoe_ratelimit_storage_errors_total") or 0.0


def _redis_count(url: str, key: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.get(key) or 0)
    finally:
        client.close()


async def _admitted(limiter: RateLimiter, principal: Principal, n: int) -> int:
    decisions = await asyncio.gather(*(limiter.check_request(principal) for _ in range(n)))
    return sum(d.allowed for d in decisions)


async def _eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> bool:
    """Await `condition()` every 20 ms until it is true or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def _allowed(limiter: RateLimiter, principal: Principal, unavailable: bool = True) -> bool:
    """Whether the limiter admits one more request (False while its storage is unreachable)."""
    try:
        return (await limiter.check_request(principal)).allowed
    except LimitsUnavailable:
        if unavailable:
            raise
        return False


async def _counted_in(url: str, key: str, limiter: RateLimiter) -> bool:
    """Send one request; whether it was counted in the Redis at `url`."""
    await limiter.check_request(ALICE)
    return _redis_count(url, key) > 0


async def test_memory_limiter_admits_rpm_requests_then_refuses() -> None:
    limiter = RateLimiter(RateLimitSettings(rpm=3))
    results = [(await limiter.check_request(ALICE)).allowed for _ in range(5)]
    assert results == [True, True, True, False, False]


async def test_two_limiters_on_one_redis_admit_exactly_n_concurrent_requests(
    redis_url: str,
) -> None:
    settings = RateLimitSettings(rpm=25)
    first, second = RateLimiter(settings, redis_url), RateLimiter(settings, redis_url)
    try:
        counts = await asyncio.gather(_admitted(first, ALICE, 100), _admitted(second, ALICE, 100))
    finally:
        await first.aclose()
        await second.aclose()
    assert sum(counts) == 25


def _admit_in_process(url: str, limit: int, attempts: int, barrier: Any, out: Any) -> None:
    async def main() -> int:
        limiter = RateLimiter(RateLimitSettings(rpm=limit), url)
        await limiter._redis.ping()  # connect before the race starts
        await asyncio.to_thread(barrier.wait)
        admitted = await _admitted(limiter, Principal(sub="shared"), attempts)
        await limiter.aclose()
        return admitted

    out.put(asyncio.run(main()))


def test_two_processes_on_one_redis_admit_exactly_n_concurrent_requests(redis_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    workers = [
        ctx.Process(target=_admit_in_process, args=(redis_url, 30, 100, barrier, out))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        counts = [out.get(timeout=60) for _ in workers]
    finally:
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()
    assert sum(counts) == 30


async def test_rpm_claim_overrides_the_default(redis_url: str) -> None:
    limiter = RateLimiter(RateLimitSettings(rpm=100), redis_url)
    try:
        assert await _admitted(limiter, Principal(sub="bob", rpm=2), 10) == 2
    finally:
        await limiter.aclose()


async def test_tenant_limit_is_shared_by_its_subjects(redis_url: str) -> None:
    limiter = RateLimiter(RateLimitSettings(rpm=10, tenant_rpm=3), redis_url)
    alice, bob = Principal(sub="alice", tenant="acme"), Principal(sub="bob", tenant="acme")
    try:
        assert await _admitted(limiter, alice, 2) == 2
        assert await _admitted(limiter, bob, 2) == 1
    finally:
        await limiter.aclose()


async def test_request_refused_by_tenant_is_not_counted_for_the_subject(redis_url: str) -> None:
    limiter = RateLimiter(RateLimitSettings(rpm=10, tenant_rpm=2), redis_url)
    alice = Principal(sub="alice", tenant="acme")
    try:
        assert await _admitted(limiter, alice, 5) == 2
    finally:
        await limiter.aclose()
    assert _redis_count(redis_url, "localmoe:rl:r:s:alice") == 2


async def test_admitted_request_carries_request_and_token_headers(redis_url: str) -> None:
    limiter = RateLimiter(RateLimitSettings(rpm=5, tpm=1000), redis_url)
    try:
        decision = await limiter.check_request(ALICE)
    finally:
        await limiter.aclose()
    assert decision.allowed
    assert decision.headers() == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "1000",
        "x-ratelimit-reset-tokens": "0ms",
    }


async def test_refused_request_has_retry_after_and_no_remaining(redis_url: str) -> None:
    limiter = RateLimiter(RateLimitSettings(rpm=1), redis_url)
    try:
        await limiter.check_request(ALICE)
        decision = await limiter.check_request(ALICE)
    finally:
        await limiter.aclose()
    headers = decision.headers()
    assert not decision.allowed
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["Retry-After"] == "60"
    assert "Rate limit reached for requests per minute" in decision.message


async def test_window_restarts_after_window_s(redis_url: str) -> None:
    limiter = RateLimiter(RateLimitSettings(rpm=2, window_s=0.5), redis_url)
    try:
        started = time.monotonic()
        assert await _admitted(limiter, ALICE, 3) == 2
        assert await _eventually(lambda: _allowed(limiter, ALICE))
        assert time.monotonic() - started >= 0.45  # not before the window ended
    finally:
        await limiter.aclose()


async def test_prompt_larger_than_remaining_token_budget_is_refused(redis_url: str) -> None:
    limiter = RateLimiter(RateLimitSettings(tpm=100), redis_url)
    try:
        assert (await limiter.check_tokens(ALICE, 60)).allowed
        await limiter.charge_tokens(ALICE, 60)
        refused = await limiter.check_tokens(ALICE, 50)
        fits = await limiter.check_tokens(ALICE, 40)
    finally:
        await limiter.aclose()
    assert not refused.allowed
    assert refused.headers()["x-ratelimit-remaining-tokens"] == "40"
    assert refused.headers()["Retry-After"] == "60"
    assert fits.allowed


async def test_check_tokens_charges_nothing(redis_url: str) -> None:
    limiter = RateLimiter(RateLimitSettings(tpm=100), redis_url)
    try:
        for _ in range(5):
            assert (await limiter.check_tokens(ALICE, 90)).allowed
    finally:
        await limiter.aclose()


async def test_charged_tokens_show_in_the_next_request_headers(redis_url: str) -> None:
    limiter = RateLimiter(RateLimitSettings(rpm=10, tpm=1000), redis_url)
    try:
        await limiter.charge_tokens(ALICE, 250)
        headers = (await limiter.check_request(ALICE)).headers()
    finally:
        await limiter.aclose()
    assert headers["x-ratelimit-remaining-tokens"] == "750"
    assert headers["x-ratelimit-reset-tokens"] == "1m0s"


async def test_prompt_larger_than_the_whole_budget_is_refused_without_retry_after() -> None:
    limiter = RateLimiter(RateLimitSettings(tpm=100))
    decision = await limiter.check_tokens(ALICE, 101)
    assert not decision.allowed
    assert decision.retry_after is None
    assert "Retry-After" not in decision.headers()
    assert "Request too large" in decision.message


async def test_tenant_token_budget_is_shared(redis_url: str) -> None:
    limiter = RateLimiter(RateLimitSettings(tpm=1000, tenant_tpm=100), redis_url)
    alice, bob = Principal(sub="alice", tenant="acme"), Principal(sub="bob", tenant="acme")
    try:
        await limiter.charge_tokens(alice, 80)
        decision = await limiter.check_tokens(bob, 30)
    finally:
        await limiter.aclose()
    assert not decision.allowed
    assert decision.headers()["x-ratelimit-limit-tokens"] == "100"


async def test_fit_tokens_decides_from_what_the_admission_read() -> None:
    limiter = RateLimiter(RateLimitSettings(rpm=10, tpm=100))
    await limiter.charge_tokens(ALICE, 90)
    admitted = await limiter.check_request(ALICE)
    fits, refused = limiter.fit_tokens(admitted, 10), limiter.fit_tokens(admitted, 11)
    assert fits is not None and fits.allowed
    assert refused is not None and not refused.allowed
    assert (
        refused.retry_after is not None
        and refused.headers()["x-ratelimit-remaining-tokens"] == "10"
    )


def test_fit_tokens_refuses_a_prompt_over_the_whole_budget_without_retry_after() -> None:
    limiter = RateLimiter(RateLimitSettings(rpm=10, tpm=100))
    admitted = asyncio.run(limiter.check_request(ALICE))
    refused = limiter.fit_tokens(admitted, 101)
    assert refused is not None and not refused.allowed and refused.retry_after is None
    assert "Request too large" in refused.message


async def test_fit_tokens_needs_an_admission_that_read_the_tokens() -> None:
    limiter = RateLimiter(RateLimitSettings(tpm=100))  # no request limit: nothing was read
    assert limiter.fit_tokens(await limiter.check_request(ALICE), 5) is None


async def test_tpm_claim_overrides_the_default() -> None:
    limiter = RateLimiter(RateLimitSettings(tpm=10))
    assert (await limiter.check_tokens(Principal(sub="big", tpm=5000), 4000)).allowed


async def test_no_configured_limits_means_no_headers() -> None:
    limiter = RateLimiter(RateLimitSettings())
    decision = await limiter.check_request(ALICE)
    assert decision.allowed
    assert decision.headers() == {}


async def test_fail_open_keeps_admitting_with_per_process_limits(own_redis: RedisServer) -> None:
    limiter = RateLimiter(RateLimitSettings(rpm=3, fail_open=True), own_redis.url)
    try:
        assert (await limiter.check_request(ALICE)).allowed  # via Redis: 1 of 3
        own_redis.kill()
        before = _errors()
        results = [(await limiter.check_request(ALICE)).allowed for _ in range(4)]
    finally:
        await limiter.aclose()
    assert results == [True, True, True, False]  # a fresh per-process window of 3
    assert _errors() > before


async def test_fail_closed_raises_limits_unavailable(own_redis: RedisServer) -> None:
    limiter = RateLimiter(RateLimitSettings(rpm=3, fail_open=False), own_redis.url)
    try:
        assert (await limiter.check_request(ALICE)).allowed
        own_redis.kill()
        before = _errors()
        with pytest.raises(LimitsUnavailable):
            await limiter.check_request(ALICE)
        with pytest.raises(LimitsUnavailable):
            await limiter.check_tokens(Principal(sub="alice", tpm=10), 1)
    finally:
        await limiter.aclose()
    assert _errors() == before + 1  # the second call did not wait for Redis again


async def test_limits_unavailable_says_when_to_retry(own_redis: RedisServer) -> None:
    settings = RateLimitSettings(rpm=3, fail_open=False, redis_retry_s=4)
    limiter = RateLimiter(settings, own_redis.url)
    own_redis.kill()
    try:
        with pytest.raises(LimitsUnavailable) as refused:
            await limiter.check_request(ALICE)
    finally:
        await limiter.aclose()
    error = refused.value
    assert (error.status, error.code) == (503, "rate_limits_unavailable")
    assert error.headers == {"Retry-After": "4"}  # when Redis is tried again


async def test_shared_limits_resume_after_redis_restarts(own_redis: RedisServer) -> None:
    limiter = RateLimiter(RateLimitSettings(rpm=100, redis_retry_s=0.2), own_redis.url)
    key = "localmoe:rl:r:s:alice"
    try:
        await limiter.check_request(ALICE)
        own_redis.kill()
        await limiter.check_request(ALICE)  # fallback
        own_redis.start()  # empty: the counts before the outage are gone
        # Requests count in this process until the limiter tries Redis again.
        assert await _eventually(lambda: _counted_in(own_redis.url, key, limiter))
        await limiter.check_request(ALICE)
    finally:
        await limiter.aclose()
    assert _redis_count(own_redis.url, key) == 2


async def test_fail_closed_limiter_serves_again_after_redis_restarts(
    own_redis: RedisServer,
) -> None:
    settings = RateLimitSettings(rpm=5, fail_open=False, redis_retry_s=0.2)
    limiter = RateLimiter(settings, own_redis.url)
    try:
        own_redis.kill()
        with pytest.raises(LimitsUnavailable):
            await limiter.check_request(ALICE)
        own_redis.start()
        assert await _eventually(lambda: _allowed(limiter, ALICE, unavailable=False))
    finally:
        await limiter.aclose()


async def test_redis_outage_is_logged_once(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Redis is tried again on every call (a microsecond after each failure).
    limiter = RateLimiter(RateLimitSettings(rpm=100, redis_retry_s=1e-6), own_redis.url)
    own_redis.kill()
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.policy.ratelimit"):
            for _ in range(5):
                await limiter.check_request(ALICE)
    finally:
        await limiter.aclose()
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0204, "21ms"), (0.9995, "1s"), (1.0, "1s"), (59.2, "1m0s"), (360, "6m0s"),
     (3725, "1h2m5s")],
)  # fmt: skip
def test_reset_header_uses_openai_duration_format(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


def test_memory_check_request_costs_little_cpu() -> None:
    async def run() -> float:
        limiter = RateLimiter(RateLimitSettings(rpm=10**9, tpm=10**9))
        principal = Principal(sub="alice", tenant="acme")
        start = time.process_time()
        for _ in range(2000):
            await limiter.check_request(principal)
        return (time.process_time() - start) / 2000

    assert asyncio.run(run()) < 100e-6

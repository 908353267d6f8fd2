"""Response cache: key normalisation, cacheability, LRU/TTL, Redis sharing and outages."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import pytest
import redis
from prometheus_client import REGISTRY

from gateway.local.redis import RedisServer
from gateway.policy.cache import (
    CachedChoice,
    CachedCompletion,
    ResponseCache,
    cache_key,
    is_cacheable,
)
from gateway.settings import CacheSettings

CHAT = {
    "model": "tiny-moe",
    "messages": [{"role": "user", "content": "Hello"}],
    "temperature": 0,
    "max_tokens": 16,
}

ANSWER = CachedCompletion(
    object="chat.completion",
    model="tiny-moe",
    created=1_700_000_000,
    choices=(CachedChoice(0, "Hi there", "stop"),),
    prompt_tokens=5,
    completion_tokens=2,
)


async def _eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> bool:
    """Await `condition()` every 20 ms until it is true or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def _missing(cache: ResponseCache, key: str) -> bool:
    return await cache.get(key) is None


def _key(request: dict, tenant: str | None = "acme", model: str = "tiny-moe") -> str:
    return cache_key(tenant, model, request)


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_key_ignores_field_order() -> None:
    reordered = {"max_tokens": 16, "temperature": 0, "messages": CHAT["messages"], "model": "x"}
    assert _key(reordered) == _key(CHAT)


def test_key_ignores_message_field_order() -> None:
    request = {**CHAT, "messages": [{"content": "Hello", "role": "user"}]}
    assert _key(request) == _key(CHAT)


def test_streamed_and_non_streamed_requests_share_a_key() -> None:
    streamed = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    assert _key(streamed) == _key({**CHAT, "stream": False}) == _key(CHAT)


def test_key_ignores_user_and_cache_fields() -> None:
    assert _key({**CHAT, "user": "someone", "cache": True}) == _key(CHAT)


def test_explicit_defaults_and_nulls_give_the_same_key() -> None:
    explicit = {**CHAT, "n": 1, "top_p": 1, "presence_penalty": 0, "stop": None, "seed": None}
    assert _key(explicit) == _key(CHAT)


def test_integer_and_float_parameters_give_the_same_key() -> None:
    assert _key({**CHAT, "temperature": 0.0, "top_p": 0.5}) == _key({**CHAT, "top_p": 0.5})


def test_max_completion_tokens_is_the_same_as_max_tokens() -> None:
    request = {k: v for k, v in CHAT.items() if k != "max_tokens"}
    assert _key({**request, "max_completion_tokens": 16}) == _key(CHAT)


def test_single_text_part_equals_string_content() -> None:
    parts = {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]}
    assert _key(parts) == _key(CHAT)


def test_stop_string_equals_one_element_list() -> None:
    assert _key({**CHAT, "stop": "\n"}) == _key({**CHAT, "stop": ["\n"]})


def test_different_content_gives_a_different_key() -> None:
    other = {**CHAT, "messages": [{"role": "user", "content": "Hello!"}]}
    assert _key(other) != _key(CHAT)


def test_different_generation_parameters_give_different_keys() -> None:
    assert _key({**CHAT, "max_tokens": 17}) != _key(CHAT)
    assert _key({**CHAT, "seed": 1}) != _key(CHAT)


def test_unknown_fields_are_part_of_the_key() -> None:
    assert _key({**CHAT, "top_k": 1}) != _key(CHAT)


def test_logprobs_zero_is_not_treated_as_the_false_default() -> None:
    completion = {"prompt": "Hi", "temperature": 0}
    assert _key({**completion, "logprobs": 0}) != _key(completion)
    assert _key({**completion, "logprobs": False}) == _key(completion)


def test_model_is_part_of_the_key() -> None:
    assert _key(CHAT, model="tiny-moe") != _key(CHAT, model="mixtral")


def test_tenants_get_different_keys() -> None:
    assert len({_key(CHAT, tenant="a"), _key(CHAT, tenant="b"), _key(CHAT, tenant=None)}) == 3


def test_temperature_zero_is_cacheable() -> None:
    assert is_cacheable(CHAT)


def test_explicit_seed_is_cacheable_at_any_temperature() -> None:
    assert is_cacheable({**CHAT, "temperature": 0.8, "seed": 7})


def test_sampled_request_without_seed_is_not_cacheable() -> None:
    assert not is_cacheable({**CHAT, "temperature": 0.7})


def test_default_temperature_is_not_cacheable() -> None:
    assert not is_cacheable({k: v for k, v in CHAT.items() if k != "temperature"})


@pytest.mark.parametrize("opt_out", [False, {"no-cache": True}, {"no-store": True}])
def test_cache_extra_opts_out(opt_out: object) -> None:
    assert not is_cacheable({**CHAT, "cache": opt_out})


@pytest.mark.parametrize("header", ["no-cache", "No-Store", "max-age=0, no-cache"])
def test_cache_control_header_opts_out(header: str) -> None:
    assert not is_cacheable(CHAT, cache_control=header)


def test_unrelated_cache_control_keeps_caching() -> None:
    assert is_cacheable(CHAT, cache_control="max-age=60")


def test_logprobs_requests_are_not_cacheable() -> None:
    assert not is_cacheable({**CHAT, "logprobs": True, "top_logprobs": 2})


def test_completion_round_trips_through_bytes() -> None:
    value, expires_at = CachedCompletion.from_bytes(ANSWER.to_bytes(123.5))
    assert (value, expires_at) == (ANSWER, 123.5)
    assert value.total_tokens == 7


async def test_put_then_get_hits_in_process() -> None:
    cache = ResponseCache(CacheSettings(max_entries=10, ttl_s=60))
    assert await cache.get("k") is None
    await cache.put("k", ANSWER)
    assert await cache.get("k") == ANSWER


async def test_tenant_cannot_read_another_tenants_entry() -> None:
    cache = ResponseCache(CacheSettings(max_entries=10, ttl_s=60))
    await cache.put(_key(CHAT, tenant="acme"), ANSWER)
    assert await cache.get(_key(CHAT, tenant="globex")) is None


async def test_entry_expires_after_ttl() -> None:
    cache = ResponseCache(CacheSettings(max_entries=10, ttl_s=0.2))
    stored = time.monotonic()
    await cache.put("k", ANSWER)
    assert await _eventually(lambda: _missing(cache, "k"))
    assert time.monotonic() - stored >= 0.2


async def test_least_recently_used_entry_is_evicted() -> None:
    cache = ResponseCache(CacheSettings(max_entries=2, ttl_s=60))
    await cache.put("a", ANSWER)
    await cache.put("b", ANSWER)
    await cache.get("a")
    await cache.put("c", ANSWER)
    assert await cache.get("b") is None
    assert await cache.get("a") == ANSWER
    assert await cache.get("c") == ANSWER


async def test_entry_stored_by_one_instance_is_hit_by_another_through_redis(
    redis_url: str,
) -> None:
    writer = ResponseCache(CacheSettings(ttl_s=60), redis_url=redis_url)
    reader = ResponseCache(CacheSettings(ttl_s=60), redis_url=redis_url)
    before = _metric("localmoe_cache_lookups_total", tier="redis", result="hit")
    try:
        await writer.put(_key(CHAT), ANSWER)
        assert await reader.get(_key(CHAT)) == ANSWER
    finally:
        await writer.aclose()
        await reader.aclose()
    assert _metric("localmoe_cache_lookups_total", tier="redis", result="hit") == before + 1


async def test_redis_entry_expires_with_the_ttl(redis_url: str) -> None:
    writer = ResponseCache(CacheSettings(ttl_s=0.3), redis_url=redis_url)
    reader = ResponseCache(CacheSettings(ttl_s=0.3), redis_url=redis_url)
    try:
        stored = time.monotonic()
        await writer.put("k", ANSWER)
        assert await _eventually(lambda: _missing(reader, "k"))
        assert time.monotonic() - stored >= 0.3
    finally:
        await writer.aclose()
        await reader.aclose()


async def test_entry_pulled_from_redis_keeps_its_original_expiry(redis_url: str) -> None:
    writer = ResponseCache(CacheSettings(ttl_s=0.4), redis_url=redis_url)
    reader = ResponseCache(CacheSettings(ttl_s=60), redis_url=redis_url)
    try:
        await writer.put("k", ANSWER)
        assert await reader.get("k") == ANSWER  # now also in the reader's LRU, for 0.4 s
        assert await _eventually(lambda: _missing(reader, "k"))
    finally:
        await writer.aclose()
        await reader.aclose()


async def test_unreadable_redis_entry_is_a_miss(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("localmoe:cache:k", b"not json")
    client.close()
    cache = ResponseCache(CacheSettings(), redis_url=redis_url)
    try:
        assert await cache.get("k") is None
    finally:
        await cache.aclose()


async def test_redis_down_is_a_miss_not_an_error(own_redis: RedisServer) -> None:
    cache = ResponseCache(CacheSettings(ttl_s=60), redis_url=own_redis.url)
    own_redis.kill()
    before = _metric("localmoe_cache_storage_errors_total")
    try:
        await cache.put("k", ANSWER)  # must not raise
        cache.clear_local()
        assert await cache.get("k") is None
    finally:
        await cache.aclose()
    assert _metric("localmoe_cache_storage_errors_total") == before + 1  # then backed off


async def test_cache_uses_redis_again_after_it_restarts(own_redis: RedisServer) -> None:
    cache = ResponseCache(CacheSettings(ttl_s=60, redis_retry_s=0.1), redis_url=own_redis.url)
    client = redis.Redis.from_url(own_redis.url)
    try:
        own_redis.kill()
        assert await cache.get("k") is None
        own_redis.start()

        async def stored_in_redis() -> bool:
            await cache.put("k", ANSWER)  # in process only until the cache tries Redis again
            return client.exists("localmoe:cache:k") == 1

        assert await _eventually(stored_in_redis)
    finally:
        client.close()
        await cache.aclose()


async def test_in_process_hit_including_key_costs_well_under_a_millisecond() -> None:
    cache = ResponseCache(CacheSettings())
    await cache.put(_key(CHAT), ANSWER)
    samples = []
    for _ in range(500):
        start = time.perf_counter()
        await cache.get(_key(CHAT))
        samples.append(time.perf_counter() - start)
    assert statistics.median(samples) < 0.0005


def _image_chat(*urls: str, detail: str | None = None) -> dict:
    parts: list[dict] = [{"type": "text", "text": "What is in this image?"}]
    for url in urls:
        image: dict = {"url": url} if detail is None else {"url": url, "detail": detail}
        parts.append({"type": "image_url", "image_url": image})
    return {**CHAT, "messages": [{"role": "user", "content": parts}]}


def test_the_same_image_gives_the_same_key_whatever_its_url() -> None:
    data = _image_chat("data:image/png;base64,AAAA")
    fetched = _image_chat("https://example.com/red-circle.png", detail="auto")
    assert cache_key("t", "m", data, image_hashes=["ab" * 32]) == cache_key(
        "t", "m", fetched, image_hashes=["ab" * 32]
    )


def test_different_images_at_the_same_url_give_different_keys() -> None:
    request = _image_chat("https://example.com/latest.png")
    assert cache_key("t", "m", request, image_hashes=["ab" * 32]) != cache_key(
        "t", "m", request, image_hashes=["cd" * 32]
    )


def test_image_order_and_detail_are_part_of_the_key() -> None:
    two = _image_chat("data:,a", "data:,b")
    assert cache_key("t", "m", two, image_hashes=["aa", "bb"]) != cache_key(
        "t", "m", two, image_hashes=["bb", "aa"]
    )
    low = _image_chat("data:,a", detail="low")
    assert cache_key("t", "m", low, image_hashes=["aa"]) != _key_with(["aa"], "data:,a")


def test_an_image_part_without_its_hash_is_never_keyed_by_its_url() -> None:
    with pytest.raises(ValueError, match="hash"):
        cache_key("t", "m", _image_chat("https://example.com/a.png"))


def _key_with(hashes: list[str], *urls: str) -> str:
    return cache_key("t", "m", _image_chat(*urls), image_hashes=hashes)

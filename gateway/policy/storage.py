"""The Redis connection the rate limiter and the response cache share the rules of: short
timeouts, and one immediate retry, which re-dials a pooled connection that a Redis restart
broke; anything longer would hold requests up during an outage (both fall back in process)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def redis_client(url: str, timeout_s: float) -> aioredis.Redis:
    """A client for `url` whose every call gives up after `timeout_s`."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
    )

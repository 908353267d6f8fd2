"""Pytest plugin: real redis-server processes for tests (no fakes).

Load it with `pytest_plugins = ["redis_fixtures"]` in a test module (or from a root conftest).

- `redis_server` (session): one shared server on a free port for the whole run.
- `redis_url` (function): the shared server's URL, emptied (FLUSHALL) before the test.
- `own_redis` (function): a dedicated server that the test may `kill()` and `start()` again on
  the same port, for outage tests, without disturbing other tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from gateway.local.redis import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server shared by the whole test session."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the shared server, with every key removed before the test."""
    if not redis_server.running:  # a test may have broken it; give the next one a live server
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A dedicated, started redis-server for one test; kill and restart it at will."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()

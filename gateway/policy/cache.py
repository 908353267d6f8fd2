"""Exact-match response cache: an in-process LRU in front of (optional) Redis.

Integration guide (gateway request path, after auth, limits, validation and the token check)::

    cache = ResponseCache(max_entries=10_000, ttl_seconds=600, redis_url=settings.redis_url)
    ...
    body = request_json                                  # the OpenAI request as a dict
    use_cache = model.cache_enabled and is_cacheable(body, request.headers.get("cache-control"))
    if use_cache:
        key = cache_key(principal.tenant, model.cache_identity, body)
        cached = await cache.get(key)                    # never raises
        if cached is not None:
            ...  # x-cache: hit; reply from `cached` as JSON, or replay it as SSE chunks when
                 # body["stream"] (role chunk, one content chunk and one finish chunk per
                 # choice, usage chunk if stream_options.include_usage, then [DONE])
    ...  # x-cache: miss; generate; when finished normally (not cancelled, no error):
    if use_cache:
        await cache.put(key, CachedCompletion(...))      # after the response is sent, or in a
                                                         # background task; never raises
    ...
    await cache.aclose()                                 # at shutdown

What makes two requests the same (`cache_key`): the tenant (tenants never share entries; a
principal without a tenant shares the tenant-less space), the model identity (pass one that
changes when the weights change), and the request with `stream`, `stream_options`, `user`,
`cache`, `metadata`, `store`, `service_tier` and `model` removed, fields equal to OpenAI's
defaults (or null) removed, numbers of float parameters made floats, `max_completion_tokens`
folded into `max_tokens`, `stop` as a sorted list, a content list of one text part as its string,
and keys sorted. Unknown fields stay in the key: a field we do not understand might change the
answer, and a missed hit is cheaper than a wrong one.

What may be cached (`is_cacheable`): temperature 0 or an explicit seed; not with `logprobs`
(not stored), not when the body says `"cache": false` (or `{"no-cache": true}`), not when the
request sends `Cache-Control: no-cache` or `no-store`.

Storage: entries live `ttl_seconds`, also in Redis (`SET … PX`), and carry their absolute expiry so
a copy pulled from Redis into another process's LRU expires at the same moment. Values are
orjson. A Redis error is logged once per outage, counted
(`localmoe_cache_storage_errors_total`) and treated as a miss; Redis is tried again after
`redis_retry_seconds`. Lookups are counted in `localmoe_cache_lookups_total{result}`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

__all__ = [
    "CachedChoice",
    "CachedCompletion",
    "ResponseCache",
    "cache_key",
    "is_cacheable",
]

logger = logging.getLogger(__name__)

LOOKUPS = Counter(
    "localmoe_cache_lookups_total",
    "Response cache lookups by result (hit in this process, hit in Redis, miss)",
    ["result"],
)
_LOCAL_HIT, _REDIS_HIT, _MISS = (LOOKUPS.labels(r) for r in ("local_hit", "redis_hit", "miss"))
STORAGE_ERRORS = Counter(
    "localmoe_cache_storage_errors_total",
    "Response cache storage (Redis) calls that failed",
)

_KEY_VERSION = 1
_IGNORED_FIELDS = frozenset(
    {"stream", "stream_options", "user", "cache", "metadata", "store", "service_tier", "model"}
)
_FLOAT_FIELDS = frozenset({"temperature", "top_p", "presence_penalty", "frequency_penalty"})
_DEFAULTS: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "n": 1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "logprobs": False,
    "echo": False,
    "best_of": 1,
    "logit_bias": {},
    "stop": [],
}


@dataclass(frozen=True, slots=True)
class CachedChoice:
    """One choice of a finished completion."""

    index: int
    text: str
    finish_reason: str | None


@dataclass(frozen=True, slots=True)
class CachedCompletion:
    """What is needed to answer again, as a JSON body or as a replayed SSE stream."""

    object: str
    """`chat.completion` or `text_completion` (the non-streamed object kind)."""
    model: str
    created: int
    choices: tuple[CachedChoice, ...]
    prompt_tokens: int
    completion_tokens: int
    system_fingerprint: str | None = None

    @property
    def total_tokens(self) -> int:
        """prompt_tokens + completion_tokens."""
        return self.prompt_tokens + self.completion_tokens

    def to_bytes(self, expires_at: float) -> bytes:
        """Serialise with orjson, with the absolute expiry (epoch seconds) of the entry."""
        return orjson.dumps(
            {
                "v": _KEY_VERSION,
                "expires_at": expires_at,
                "object": self.object,
                "model": self.model,
                "created": self.created,
                "choices": [[c.index, c.text, c.finish_reason] for c in self.choices],
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "system_fingerprint": self.system_fingerprint,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple[CachedCompletion, float]:
        """Inverse of `to_bytes`: the completion and its absolute expiry."""
        raw = orjson.loads(data)
        if raw.get("v") != _KEY_VERSION:
            raise ValueError("cache entry of another format version")
        value = cls(
            object=raw["object"],
            model=raw["model"],
            created=raw["created"],
            choices=tuple(CachedChoice(i, text, reason) for i, text, reason in raw["choices"]),
            prompt_tokens=raw["prompt_tokens"],
            completion_tokens=raw["completion_tokens"],
            system_fingerprint=raw.get("system_fingerprint"),
        )
        return value, float(raw["expires_at"])


def is_cacheable(request: Mapping[str, Any], cache_control: str | None = None) -> bool:
    """Whether the answer to `request` is deterministic and the caller allows caching."""
    if cache_control:
        directives = {part.strip().split("=", 1)[0].lower() for part in cache_control.split(",")}
        if directives & {"no-cache", "no-store"}:
            return False
    opt = request.get("cache")
    if opt is False or (isinstance(opt, Mapping) and (opt.get("no-cache") or opt.get("no-store"))):
        return False
    logprobs = request.get("logprobs")
    if logprobs is not None and logprobs is not False:
        return False
    if request.get("seed") is not None:
        return True
    temperature = request.get("temperature")
    return _is_number(temperature) and temperature == 0


def cache_key(tenant: str | None, model: str, request: Mapping[str, Any]) -> str:
    """A stable key (hex SHA-256) for `request` to `model` within `tenant`."""
    normalised = _normalise(request)
    material = orjson.dumps([_KEY_VERSION, tenant, model, normalised], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(material).hexdigest()


class ResponseCache:
    """In-process LRU of finished completions, backed by Redis when `redis_url` is given."""

    def __init__(
        self,
        max_entries: int = 10_000,
        ttl_seconds: float = 600.0,
        redis_url: str | None = None,
        *,
        key_prefix: str = "localmoe:cache:",
        redis_timeout_seconds: float = 0.25,
        redis_retry_seconds: float = 1.0,
        max_value_bytes: int = 1 << 20,
    ) -> None:
        if max_entries < 1 or ttl_seconds <= 0:
            raise ValueError("max_entries and ttl_seconds must be positive")
        self.max_entries = max_entries
        self.ttl_seconds = ttl_seconds
        self.key_prefix = key_prefix
        self.max_value_bytes = max_value_bytes
        self._retry_seconds = redis_retry_seconds
        self._lru: OrderedDict[str, tuple[CachedCompletion, float]] = OrderedDict()
        self._redis: aioredis.Redis | None = None
        if redis_url:
            self._redis = aioredis.Redis.from_url(
                redis_url,
                socket_timeout=redis_timeout_seconds,
                socket_connect_timeout=redis_timeout_seconds,
                retry=Retry(NoBackoff(), 1),
            )
        self._degraded = False
        self._retry_at = 0.0

    async def get(self, key: str) -> CachedCompletion | None:
        """The cached completion for `key`, or None (also when Redis fails)."""
        now = time.time()
        entry = self._lru.get(key)
        if entry is not None:
            if entry[1] > now:
                self._lru.move_to_end(key)
                _LOCAL_HIT.inc()
                return entry[0]
            self._lru.pop(key, None)
        if self._redis is not None and self._redis_usable():
            try:
                data = await self._redis.get(self.key_prefix + key)
            except (RedisError, OSError) as exc:
                self._on_storage_error(exc)
            else:
                self._on_storage_ok()
                if data is not None:
                    try:
                        value, expires_at = CachedCompletion.from_bytes(data)
                    except (ValueError, KeyError, TypeError, AttributeError) as exc:
                        logger.warning("ignoring an unreadable cache entry: %s", exc)
                    else:
                        if expires_at > now:
                            self._remember(key, value, expires_at)
                            _REDIS_HIT.inc()
                            return value
        _MISS.inc()
        return None

    async def put(self, key: str, value: CachedCompletion) -> None:
        """Store `value` for `ttl_seconds` in this process and in Redis; never raises."""
        expires_at = time.time() + self.ttl_seconds
        data = value.to_bytes(expires_at)
        if len(data) > self.max_value_bytes:
            return
        self._remember(key, value, expires_at)
        if self._redis is not None and self._redis_usable():
            try:
                await self._redis.set(
                    self.key_prefix + key, data, px=round(self.ttl_seconds * 1000)
                )
            except (RedisError, OSError) as exc:
                self._on_storage_error(exc)
            else:
                self._on_storage_ok()

    def clear_local(self) -> None:
        """Forget the in-process entries (Redis is untouched)."""
        self._lru.clear()

    async def aclose(self) -> None:
        """Close the Redis connections."""
        if self._redis is not None:
            await self._redis.aclose()

    def _remember(self, key: str, value: CachedCompletion, expires_at: float) -> None:
        self._lru[key] = (value, expires_at)
        self._lru.move_to_end(key)
        while len(self._lru) > self.max_entries:
            self._lru.popitem(last=False)

    def _redis_usable(self) -> bool:
        return not self._degraded or time.monotonic() >= self._retry_at

    def _on_storage_error(self, exc: BaseException) -> None:
        STORAGE_ERRORS.inc()
        self._retry_at = time.monotonic() + self._retry_seconds
        if not self._degraded:
            self._degraded = True
            logger.error("response cache storage (Redis) failed: %r; serving misses", exc)

    def _on_storage_ok(self) -> None:
        if self._degraded:
            self._degraded = False
            logger.warning("response cache storage (Redis) is reachable again")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _normalise(request: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in request.items():
        if value is None or name in _IGNORED_FIELDS:
            continue
        if name in _FLOAT_FIELDS and _is_number(value):
            value = float(value)
        elif name == "stop" and isinstance(value, str | list):
            stops = [value] if isinstance(value, str) else value
            if all(isinstance(stop, str) for stop in stops):
                value = sorted(set(stops))  # order of stop sequences cannot change the output
        elif name == "messages" and isinstance(value, Sequence):
            value = [_normalise_message(m) if isinstance(m, Mapping) else m for m in value]
        if name in _DEFAULTS and _same(value, _DEFAULTS[name]):
            continue
        out[name] = value
    if "max_completion_tokens" in out and "max_tokens" not in out:
        out["max_tokens"] = out.pop("max_completion_tokens")
    return out


def _normalise_message(message: Mapping[str, Any]) -> dict[str, Any]:
    out = {name: value for name, value in message.items() if value is not None}
    content = out.get("content")
    if (
        isinstance(content, list)
        and len(content) == 1
        and isinstance(content[0], Mapping)
        and content[0].get("type") == "text"
        and isinstance(content[0].get("text"), str)
        and len(content[0]) == 2
    ):
        out["content"] = content[0]["text"]
    return out


def _same(value: Any, default: Any) -> bool:
    # Type-aware: `False == 0` in Python, but logprobs=0 and logprobs=False differ.
    if isinstance(default, bool) or isinstance(value, bool):
        return value is default
    if _is_number(default):
        return _is_number(value) and value == default
    return bool(value == default)

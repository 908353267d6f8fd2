"""Exact-match response cache for deterministic requests: in process, in front of Redis.

What is cached and how requests are normalised into a key is in docs/auth-limits-cache.md.
Unknown request fields stay in the key: one we do not understand might change the answer, and a
missed hit is cheaper than a wrong one. An image part is keyed by the SHA-256 of the image's
bytes, never by its URL: the same picture as a data URL or fetched from anywhere is the same
request, and an http URL whose picture changed is not. Entries carry their absolute expiry, so
a copy pulled from Redis into another process expires at the same moment. A Redis error is a
miss, never an error.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from cachetools import TLRUCache
from prometheus_client import Counter
from redis.exceptions import RedisError

from gateway.policy.storage import redis_client
from gateway.settings import CacheSettings

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
    "Response cache lookups by tier (local: this process, redis) and result (hit, miss); a "
    "local miss goes on to Redis when Redis is configured and usable",
    ["tier", "result"],
)
_LOCAL_HIT, _LOCAL_MISS, _REDIS_HIT, _REDIS_MISS = (
    LOOKUPS.labels(tier, result) for tier in ("local", "redis") for result in ("hit", "miss")
)
STORAGE_ERRORS = Counter(
    "localmoe_cache_storage_errors_total",
    "Response cache storage (Redis) calls that failed",
)

_KEY_VERSION = 1
_REDIS_PREFIX = "localmoe:cache:"
_MAX_VALUE_BYTES = 1 << 20
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


def cache_key(
    tenant: str | None,
    model: str,
    request: Mapping[str, Any],
    *,
    image_hashes: Sequence[str] = (),
) -> str:
    """A stable key (hex SHA-256) for `request` to `model` within `tenant`; `image_hashes` are
    the SHA-256 of each image part's bytes, in the order the parts appear in `messages`."""
    normalised = _normalise(request, iter(image_hashes))
    material = orjson.dumps([_KEY_VERSION, tenant, model, normalised], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(material).hexdigest()


class ResponseCache:
    """Finished completions in an in-process LRU, and in Redis when `redis_url` is given."""

    def __init__(self, settings: CacheSettings, redis_url: str | None = None) -> None:
        self.settings = settings
        self._local: TLRUCache[str, tuple[CachedCompletion, float]] = TLRUCache(
            settings.max_entries, lambda _key, entry, _now: entry[1], timer=time.time
        )
        self._redis: aioredis.Redis | None = None
        if redis_url:
            self._redis = redis_client(redis_url, settings.redis_timeout_s)
        self._degraded = False
        self._retry_at = 0.0

    async def get(self, key: str) -> CachedCompletion | None:
        """The cached completion for `key`, or None (also when Redis fails)."""
        try:  # half the cost of TLRUCache.get, which looks the key up twice
            value = self._local[key][0]
        except KeyError:
            pass
        else:
            _LOCAL_HIT.inc()
            return value
        _LOCAL_MISS.inc()
        if self._redis is not None and self._redis_usable():
            try:
                data = await self._redis.get(_REDIS_PREFIX + key)
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
                        if expires_at > time.time():
                            self._local[key] = (value, expires_at)
                            _REDIS_HIT.inc()
                            return value
                _REDIS_MISS.inc()
        return None

    async def put(self, key: str, value: CachedCompletion) -> None:
        """Store `value` for `cache.ttl_s` in this process and in Redis; never raises."""
        ttl_s = self.settings.ttl_s
        expires_at = time.time() + ttl_s
        data = value.to_bytes(expires_at)
        if len(data) > _MAX_VALUE_BYTES:
            return
        self._local[key] = (value, expires_at)
        if self._redis is not None and self._redis_usable():
            try:
                await self._redis.set(_REDIS_PREFIX + key, data, px=round(ttl_s * 1000))
            except (RedisError, OSError) as exc:
                self._on_storage_error(exc)
            else:
                self._on_storage_ok()

    def clear_local(self) -> None:
        """Forget the in-process entries (Redis is untouched)."""
        self._local.clear()

    async def aclose(self) -> None:
        """Close the Redis connections."""
        if self._redis is not None:
            await self._redis.aclose()

    def _redis_usable(self) -> bool:
        return not self._degraded or time.monotonic() >= self._retry_at

    def _on_storage_error(self, exc: BaseException) -> None:
        STORAGE_ERRORS.inc()
        self._retry_at = time.monotonic() + self.settings.redis_retry_s
        if not self._degraded:
            self._degraded = True
            logger.error("response cache storage (Redis) failed: %r; serving misses", exc)

    def _on_storage_ok(self) -> None:
        if self._degraded:
            self._degraded = False
            logger.warning("response cache storage (Redis) is reachable again")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _normalise(request: Mapping[str, Any], image_hashes: Iterator[str]) -> dict[str, Any]:
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
            value = [
                _normalise_message(m, image_hashes) if isinstance(m, Mapping) else m for m in value
            ]
        if name in _DEFAULTS and _same(value, _DEFAULTS[name]):
            continue
        out[name] = value
    if "max_completion_tokens" in out and "max_tokens" not in out:
        out["max_tokens"] = out.pop("max_completion_tokens")
    return out


def _normalise_message(message: Mapping[str, Any], image_hashes: Iterator[str]) -> dict[str, Any]:
    out = {name: value for name, value in message.items() if value is not None}
    content = out.get("content")
    if isinstance(content, list):
        content = out["content"] = [_normalise_part(part, image_hashes) for part in content]
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


def _normalise_part(part: Any, image_hashes: Iterator[str]) -> Any:
    if not isinstance(part, Mapping):
        return part
    part = {name: value for name, value in part.items() if value is not None}
    if part.get("type") == "text":
        part.pop("image_url", None)
    elif part.get("type") == "image_url":
        image = part.get("image_url")
        detail = image.get("detail") if isinstance(image, Mapping) else None
        sha256 = next(image_hashes, None)
        if sha256 is None:  # a caller's bug: never fall back to keying by the URL
            raise ValueError("an image part without its image hash")
        part["image_url"] = {"sha256": sha256, "detail": detail or "auto"}
        part.pop("text", None)
    return part


def _same(value: Any, default: Any) -> bool:
    # Type-aware: `False == 0` in Python, but logprobs=0 and logprobs=False differ.
    if isinstance(default, bool) or isinstance(value, bool):
        return value is default
    if _is_number(default):
        return _is_number(value) and value == default
    return bool(value == default)

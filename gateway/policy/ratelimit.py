"""Requests- and tokens-per-minute limits per subject and per tenant, shared through Redis.

Integration guide (gateway request path, after `authenticate`)::

    limiter = RateLimiter(LimitsConfig(rpm=60, tpm=100_000, redis_url=settings.redis_url))
    ...
    try:
        decision = await limiter.check_request(principal)        # counts this request
    except LimitsUnavailable:
        ...  # 503 (only when fail_open=False and Redis is down)
    if not decision.allowed:
        ...  # 429, code "rate_limit_exceeded", message decision.message,
             # headers decision.headers() (x-ratelimit-* and Retry-After)
    # validate, render the prompt, count its tokens, then:
    tokens = limiter.fit_tokens(decision, prompt_tokens)            # no I/O: what check_request
    if tokens is None:                                              # read, when it read tokens
        tokens = await limiter.check_tokens(principal, prompt_tokens)   # counts nothing
    if not tokens.allowed: ...                                      # 429 as above
    headers = decision.headers() | tokens.headers()                 # on the success response
    # generate, then with the real counts (streamed or not, also after a client disconnect):
    await limiter.charge_tokens(principal, prompt_tokens + completion_tokens)
    ...
    await limiter.aclose()                                          # at shutdown

Limits: the subject's `rpm`/`tpm` come from the token's claims, else `LimitsConfig.rpm`/`tpm`;
when the principal has a tenant, `tenant_rpm`/`tenant_tpm` also apply to the tenant as a whole.
`None` means unlimited (no counter, no I/O, no header). Headers report the binding limit (the
one with the least remaining). A request refused by any limit is counted by none of them.

Strategy: fixed windows of `window_seconds` (60 s; shorter in tests), each starting at the first
hit on its key (`PEXPIRE`), like `limits`' fixed-window strategy. One Lua script reads and
charges all of a request's counters (subject and tenant) atomically inside Redis, so replicas
sharing a Redis admit exactly N requests per window for a limit of N, whatever the concurrency,
with one round trip per call and exact reset times (`PTTL`) for the headers. The cost of the
fixed window is that a client may spend up to 2N around a window boundary; a moving window
would avoid that but needs one stored entry per request (per *token* for `tpm`).

Without `redis_url` the counters live in the process: with `--workers N` each worker enforces
the full limit, so configure Redis when limits must hold across workers or replicas. One Redis
(or a Sentinel-managed primary) is supported, not Redis Cluster: the script touches the subject's
and the tenant's keys together. Cost per call on this 2-core machine: ~6–8 µs CPU in memory,
~130–160 µs CPU (one round trip, mostly redis-py and the socket) with Redis.

Token limits are charged after generation with the real counts; `check_tokens` refuses a request
whose prompt alone does not fit the remaining budget, so concurrent requests can overshoot a
`tpm` by what they generate — like every provider that bills after the fact.

Why not `limits`/`slowapi` directly: measured on this machine, `limits.aio`'s
`FixedWindowRateLimiter` over `RedisStorage` needs `hit` + `get_window_stats` = 3 round trips
(~340 µs CPU) per counter to fill the headers, cannot admit subject and tenant atomically (a
request refused by the tenant limit has already used the subject's), and its `MemoryStorage`
starts a task that scans every key on each hit. slowapi adds a decorator/middleware layer
(request objects, its own header names) that our OpenAI-shaped errors would have to undo. So this
module keeps `limits`' fixed-window model and its INCR-and-EXPIRE script idea, in one script.

Redis outage: every failed call is counted (`localmoe_ratelimit_storage_errors_total`) and the
first one of an outage is logged. With `fail_open=True` (default) the limiter then decides with
per-process in-memory counters (each gateway process enforces the full limit on its own) and
with `fail_open=False` it raises `LimitsUnavailable`. After `redis_retry_seconds` one request
probes Redis again; when it answers, shared limits resume and the recovery is logged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.policy.auth import Principal

__all__ = [
    "LimitDecision",
    "LimitState",
    "LimitsConfig",
    "LimitsUnavailable",
    "RateLimiter",
    "format_reset",
]

logger = logging.getLogger(__name__)

STORAGE_ERRORS = Counter(
    "localmoe_ratelimit_storage_errors_total",
    "Rate-limit storage (Redis) calls that failed",
)
FALLBACK_DECISIONS = Counter(
    "localmoe_ratelimit_fallback_decisions_total",
    "Rate-limit decisions taken by the per-process fallback during a Redis outage",
)
REJECTIONS = Counter(
    "localmoe_ratelimit_rejections_total",
    "Requests refused by a rate limit",
    ["kind"],
)

_REQUESTS_REFUSED, _TOKENS_REFUSED = REJECTIONS.labels("requests"), REJECTIONS.labels("tokens")

_TEST, _ADMIT, _ADD = 0, 1, 2

# KEYS: counters; the first ARGV[4] of them are tested/charged against the limits ARGV[5..],
# the others are only read (the other dimension, for the headers).
# ARGV[1] mode (0 test, 1 admit if all fit, 2 add unconditionally), ARGV[2] cost, ARGV[3] window ms.
# Returns {allowed, count1, ttl1_ms, count2, ttl2_ms, ...}; ttl 0 for a counter not yet started.
_LUA = """
local mode = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local counts = {}
for i = 1, #KEYS do
  counts[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
end
local allowed = 1
if mode ~= 2 then
  for i = 1, n do
    if counts[i] + cost > tonumber(ARGV[4 + i]) then allowed = 0 end
  end
end
local out = {allowed}
for i = 1, #KEYS do
  local ttl
  if i <= n and mode ~= 0 and allowed == 1 then
    counts[i] = redis.call('INCRBY', KEYS[i], cost)
    ttl = redis.call('PTTL', KEYS[i])
    if ttl < 0 then
      redis.call('PEXPIRE', KEYS[i], window)
      ttl = window
    end
  else
    ttl = redis.call('PTTL', KEYS[i])
    if ttl < 0 then ttl = 0 end
  end
  out[#out + 1] = counts[i]
  out[#out + 1] = ttl
end
return out
"""


class LimitsUnavailable(Exception):
    """Redis is unreachable and the limiter is configured to fail closed (gateway: 503)."""


@dataclass(frozen=True)
class LimitsConfig:
    """Default limits and storage. A limit of None is unlimited."""

    rpm: int | None = None
    """Requests per window per subject, unless the token's `rpm` claim says otherwise."""
    tpm: int | None = None
    """Prompt + completion tokens per window per subject, unless the `tpm` claim says otherwise."""
    tenant_rpm: int | None = None
    tenant_tpm: int | None = None
    window_seconds: float = 60.0
    redis_url: str | None = None
    fail_open: bool = True
    redis_timeout_seconds: float = 0.5
    redis_retry_seconds: float = 1.0
    """After a Redis error, how long the fallback decides before Redis is tried again."""
    key_prefix: str = "localmoe:rl"

    def __post_init__(self) -> None:
        if self.window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        for name in ("rpm", "tpm", "tenant_rpm", "tenant_tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive integer or None")


@dataclass(frozen=True, slots=True)
class LimitState:
    """One dimension (requests or tokens) of the binding limit."""

    limit: int
    remaining: int
    reset_seconds: float
    """Seconds until the window restarts with the full limit."""


@dataclass(frozen=True, slots=True)
class LimitDecision:
    """Outcome of one limiter call, with what the response headers need."""

    allowed: bool
    requests: LimitState | None = None
    tokens: LimitState | None = None
    retry_after: float | None = None
    """Seconds until the refused request could fit; None when admitted or when it never can."""
    message: str = ""

    def headers(self) -> dict[str, str]:
        """OpenAI-style `x-ratelimit-*` headers, and `Retry-After` on a retryable refusal."""
        headers: dict[str, str] = {}
        for kind, state in (("requests", self.requests), ("tokens", self.tokens)):
            if state is not None:
                headers[f"x-ratelimit-limit-{kind}"] = str(state.limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(state.remaining)
                headers[f"x-ratelimit-reset-{kind}"] = format_reset(state.reset_seconds)
        if not self.allowed and self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers


_UNLIMITED = LimitDecision(allowed=True)


class RateLimiter:
    """Admits requests and charges tokens against per-subject and per-tenant windows."""

    def __init__(self, config: LimitsConfig) -> None:
        self.config = config
        self._window_ms = max(1, round(config.window_seconds * 1000))
        self._prefix = config.key_prefix + ":"
        self._memory = _MemoryCounters()
        self._redis: aioredis.Redis | None = None
        self._script: AsyncScript | None = None
        if config.redis_url:
            self._redis = aioredis.Redis.from_url(
                config.redis_url,
                socket_timeout=config.redis_timeout_seconds,
                socket_connect_timeout=config.redis_timeout_seconds,
                # One immediate retry re-dials a pooled connection that a Redis restart broke;
                # anything longer would hold requests up during an outage.
                retry=Retry(NoBackoff(), 1),
            )
            self._script = self._redis.register_script(_LUA)
        self._degraded = False
        self._probing = False
        self._retry_at = 0.0

    async def check_request(self, principal: Principal) -> LimitDecision:
        """Admit and count one request, or refuse it (counting nothing) with `retry_after`."""
        keys, limits = self._scopes(principal, "r")
        if not keys:
            return _UNLIMITED
        token_keys, token_limits = self._scopes(principal, "t")
        allowed, values = await self._apply(_ADMIT, 1, keys, limits, token_keys)
        requests = _binding_state(limits, values, 0)
        tokens = _binding_state(token_limits, values, 2 * len(keys)) if token_keys else None
        if allowed:
            return LimitDecision(True, requests, tokens)
        _REQUESTS_REFUSED.inc()
        retry_after, message = self._refusal("requests", 1, keys, limits, values)
        return LimitDecision(False, requests, tokens, retry_after, message)

    async def check_tokens(self, principal: Principal, prompt_tokens: int) -> LimitDecision:
        """Refuse when `prompt_tokens` alone exceed the remaining token budget; counts nothing."""
        keys, limits = self._scopes(principal, "t")
        if not keys:
            return _UNLIMITED
        cost = max(0, prompt_tokens)
        allowed, values = await self._apply(_TEST, cost, keys, limits, ())
        tokens = _binding_state(limits, values, 0)
        if allowed:
            return LimitDecision(True, None, tokens)
        _TOKENS_REFUSED.inc()
        retry_after, message = self._refusal("tokens", cost, keys, limits, values)
        return LimitDecision(False, None, tokens, retry_after, message)

    def fit_tokens(self, admitted: LimitDecision, prompt_tokens: int) -> LimitDecision | None:
        """`check_tokens` without a round trip, from the token counters that `check_request`
        read when it admitted the request (None when it read none: use `check_tokens`).

        Saves one Redis call per request; the counters are as old as the request's admission,
        which only matters to requests racing for the last tokens of a window — and those can
        overshoot anyway, as tokens are charged after generation."""
        state = admitted.tokens
        if state is None:
            return None
        allowed = self.room_for(admitted, prompt_tokens)
        if allowed is not None:
            return allowed
        cost = max(0, prompt_tokens)
        _TOKENS_REFUSED.inc()
        per = self._per()
        if cost > state.limit:
            message = (
                f"Request too large: {cost} tokens requested, "
                f"but the limit is {state.limit} tokens {per}."
            )
            return LimitDecision(False, None, state, None, message)
        message = (
            f"Rate limit reached for tokens {per}: limit {state.limit}, "
            f"used {state.limit - state.remaining}, requested {cost}. "
            f"Please try again in {format_reset(state.reset_seconds)}."
        )
        return LimitDecision(False, None, state, state.reset_seconds, message)

    def room_for(self, admitted: LimitDecision, tokens: int) -> LimitDecision | None:
        """The allowed decision of `fit_tokens` when `tokens` fit, else None, with no side
        effects (no refusal counted): for an upper bound of a prompt's tokens."""
        state = admitted.tokens
        if state is None or max(0, tokens) > state.remaining:
            return None
        return LimitDecision(True, None, state)

    async def charge_tokens(self, principal: Principal, n: int) -> LimitDecision:
        """Charge `n` used tokens (prompt + completion) to the subject and tenant budgets."""
        keys, limits = self._scopes(principal, "t")
        if not keys or n <= 0:
            return _UNLIMITED
        _, values = await self._apply(_ADD, n, keys, limits, ())
        return LimitDecision(True, None, _binding_state(limits, values, 0))

    async def aclose(self) -> None:
        """Close the Redis connections."""
        if self._redis is not None:
            await self._redis.aclose()

    # -- internals ------------------------------------------------------------------------

    def _scopes(self, principal: Principal, kind: str) -> tuple[list[str], list[int]]:
        """Storage keys and limits of the subject's and the tenant's counters of `kind`."""
        config = self.config
        if kind == "r":
            own, tenant_limit = principal.rpm or config.rpm, config.tenant_rpm
        else:
            own, tenant_limit = principal.tpm or config.tpm, config.tenant_tpm
        keys, limits = [], []
        if own is not None:
            keys.append(f"{self._prefix}{kind}:s:{principal.sub}")
            limits.append(own)
        if tenant_limit is not None and principal.tenant is not None:
            keys.append(f"{self._prefix}{kind}:t:{principal.tenant}")
            limits.append(tenant_limit)
        return keys, limits

    async def _apply(
        self, mode: int, cost: int, keys: list[str], limits: list[int], read: Sequence[str]
    ) -> tuple[bool, list[int]]:
        """Test/charge `keys` against `limits` and read `read`: (allowed, [count, ttl_ms]*)."""
        if read:
            keys = keys + list(read)
        if self._script is not None and (
            not self._degraded or (not self._probing and time.monotonic() >= self._retry_at)
        ):
            probe = self._degraded  # during an outage one request at a time tries Redis
            self._probing = self._probing or probe
            try:
                args = [mode, cost, self._window_ms, len(limits), *limits]
                result = await self._script(keys=keys, args=args)
            except (RedisError, OSError) as exc:  # OSError covers socket errors and timeouts
                self._on_storage_error(exc)
            else:
                if self._degraded:
                    self._degraded = False
                    logger.warning("rate-limit storage is reachable again; limits are shared")
                return result[0] == 1, result[1:]
            finally:
                if probe:
                    self._probing = False
        if self._script is not None:
            if not self.config.fail_open:
                raise LimitsUnavailable("rate-limit storage (Redis) is unavailable")
            FALLBACK_DECISIONS.inc()
        return self._memory.apply(mode, cost, self._window_ms, keys, limits)

    def _on_storage_error(self, exc: BaseException) -> None:
        STORAGE_ERRORS.inc()
        self._retry_at = time.monotonic() + self.config.redis_retry_seconds
        if not self._degraded:
            self._degraded = True
            mode = "per-process limits" if self.config.fail_open else "refusing requests (503)"
            logger.error("rate-limit storage (Redis) failed: %r; %s until it is back", exc, mode)

    def _refusal(
        self, kind: str, cost: int, keys: list[str], limits: list[int], values: list[int]
    ) -> tuple[float | None, str]:
        """Retry-After seconds (None if the request can never fit) and the 429 message."""
        refusing = [
            (self._label(keys[i]), limit, values[2 * i], values[2 * i + 1])
            for i, limit in enumerate(limits)
            if values[2 * i] + cost > limit
        ]
        per = self._per()
        too_large = [r for r in refusing if cost > r[1]]
        if too_large:
            label, limit, _, _ = too_large[0]
            return None, (
                f"Request too large for {label}: {cost} {kind} requested, "
                f"but the limit is {limit} {kind} {per}."
            )
        label, limit, used, ttl_ms = max(refusing, key=lambda r: r[3])
        retry_after = ttl_ms / 1000
        return retry_after, (
            f"Rate limit reached for {kind} {per} on {label}: limit {limit}, used {used}, "
            f"requested {cost}. Please try again in {format_reset(retry_after)}."
        )

    def _per(self) -> str:
        window = self._window_ms
        return {60_000: "per minute"}.get(window) or (
            f"per {window // 1000}s" if window % 1000 == 0 else f"per {window}ms"
        )

    def _label(self, key: str) -> str:
        scope, _, name = key[len(self._prefix) + 2 :].partition(":")
        return f"{'subject' if scope == 's' else 'tenant'} {name!r}"


def format_reset(seconds: float) -> str:
    """Format a duration like OpenAI's reset headers: `20ms`, `1s`, `6m0s`, `1h2m5s`."""
    millis = math.ceil(seconds * 1000)
    if millis < 1000:
        return f"{max(0, millis)}ms"
    total = math.ceil(seconds)  # rounding up never sends a client back too early
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _binding_state(limits: list[int], values: list[int], offset: int) -> LimitState:
    """The limit with the least remaining (then the latest reset) among `limits`."""
    best_limit, best_remaining, best_ttl = 0, -1, 0
    for i, limit in enumerate(limits):
        count, ttl = values[offset + 2 * i], values[offset + 2 * i + 1]
        remaining = limit - count if count < limit else 0
        if (
            best_remaining < 0
            or remaining < best_remaining
            or (remaining == best_remaining and ttl > best_ttl)
        ):
            best_limit, best_remaining, best_ttl = limit, remaining, ttl
    return LimitState(best_limit, best_remaining, best_ttl / 1000)


class _MemoryCounters:
    """The same fixed windows in this process: default storage, and the fail-open fallback."""

    def __init__(self) -> None:
        self._entries: dict[str, list[float]] = {}  # key -> [count, expires_at_ms]
        self._next_sweep = 0.0

    def apply(
        self, mode: int, cost: int, window_ms: int, keys: list[str], limits: list[int]
    ) -> tuple[bool, list[int]]:
        # No await inside: on one event loop this is as atomic as the Lua script.
        now = time.monotonic() * 1000
        entries = self._entries
        if now >= self._next_sweep:
            for key in [k for k, entry in entries.items() if entry[1] <= now]:
                del entries[key]
            self._next_sweep = now + window_ms
        current = [entries.get(key) for key in keys]
        for i, entry in enumerate(current):
            if entry is not None and entry[1] <= now:
                del entries[keys[i]]
                current[i] = None
        allowed = True
        if mode != _ADD:
            for entry, limit in zip(current, limits, strict=False):
                if (entry[0] if entry is not None else 0) + cost > limit:
                    allowed = False
                    break
        charge = allowed and mode != _TEST
        values: list[int] = []
        for i, entry in enumerate(current):
            if charge and i < len(limits):
                if entry is None:
                    entry = entries[keys[i]] = [0, now + window_ms]
                entry[0] += cost
            if entry is None:
                values += (0, 0)
            else:
                values += (int(entry[0]), math.ceil(entry[1] - now))
        return allowed, values

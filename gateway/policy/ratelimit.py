"""Requests- and tokens-per-minute limits per subject and per tenant, in process or in Redis.

Fixed windows that start at a key's first hit, like `limits`' fixed-window strategy. With Redis,
one Lua script reads and charges all of a request's counters (subject and tenant) atomically:
replicas admit exactly N per window, in one round trip — why this is not `limits`/`slowapi`,
and what it costs, is in docs/auth-limits-cache.md. Tokens are charged after generation, so
concurrent requests may overshoot a `tpm` by what they generate.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.errors import LimitsUnavailable
from gateway.policy.auth import Principal
from gateway.policy.memory_counters import ADD, ADMIT, TEST, MemoryCounters
from gateway.policy.storage import redis_client
from gateway.settings import RateLimitSettings

__all__ = [
    "LimitDecision",
    "LimitState",
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

DECISIONS = Counter(
    "localmoe_ratelimit_decisions_total",
    "Rate-limit decisions on requests that have limits, by kind (requests, tokens) and decision",
    ["kind", "decision"],
)

_REQUESTS_REFUSED, _TOKENS_REFUSED = REJECTIONS.labels("requests"), REJECTIONS.labels("tokens")
_REQUESTS_ADMITTED, _REQUESTS_DENIED, _TOKENS_ADMITTED, _TOKENS_DENIED = (
    DECISIONS.labels(kind, decision)
    for kind in ("requests", "tokens")
    for decision in ("admitted", "refused")
)


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


_PREFIX = "localmoe:rl:"
_UNAVAILABLE = (
    "Rate limits cannot be checked right now (their storage is unreachable); try again shortly."
)


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

    def __init__(self, settings: RateLimitSettings, redis_url: str | None = None) -> None:
        """Counters in this process, or in the Redis at `redis_url` (shared by every replica)."""
        self.settings = settings
        self._window_ms = max(1, round(settings.window_s * 1000))
        self._memory = MemoryCounters(settings.window_s)
        self._redis: aioredis.Redis | None = None
        self._script: AsyncScript | None = None
        if redis_url:
            self._redis = redis_client(redis_url, settings.redis_timeout_s)
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
        allowed, values = await self._apply(ADMIT, 1, keys, limits, token_keys)
        requests = _binding_state(limits, values, 0)
        tokens = _binding_state(token_limits, values, 2 * len(keys)) if token_keys else None
        if allowed:
            _REQUESTS_ADMITTED.inc()
            return LimitDecision(True, requests, tokens)
        _REQUESTS_REFUSED.inc()
        _REQUESTS_DENIED.inc()
        retry_after, message = self._refusal("requests", 1, keys, limits, values)
        return LimitDecision(False, requests, tokens, retry_after, message)

    async def check_tokens(self, principal: Principal, prompt_tokens: int) -> LimitDecision:
        """Refuse when `prompt_tokens` alone exceed the remaining token budget; counts nothing."""
        keys, limits = self._scopes(principal, "t")
        if not keys:
            return _UNLIMITED
        cost = max(0, prompt_tokens)
        allowed, values = await self._apply(TEST, cost, keys, limits, ())
        tokens = _binding_state(limits, values, 0)
        if allowed:
            _TOKENS_ADMITTED.inc()
            return LimitDecision(True, None, tokens)
        _TOKENS_REFUSED.inc()
        _TOKENS_DENIED.inc()
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
            _TOKENS_ADMITTED.inc()
            return allowed
        cost = max(0, prompt_tokens)
        _TOKENS_REFUSED.inc()
        _TOKENS_DENIED.inc()
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

    def admits_tokens(self, admitted: LimitDecision, tokens: int) -> LimitDecision | None:
        """`room_for`, counted as a token decision when it admits (the metrics)."""
        decision = self.room_for(admitted, tokens)
        if decision is not None:
            _TOKENS_ADMITTED.inc()
        return decision

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
        _, values = await self._apply(ADD, n, keys, limits, ())
        return LimitDecision(True, None, _binding_state(limits, values, 0))

    async def aclose(self) -> None:
        """Close the Redis connections."""
        if self._redis is not None:
            await self._redis.aclose()

    # -- internals ------------------------------------------------------------------------

    def _scopes(self, principal: Principal, kind: str) -> tuple[list[str], list[int]]:
        """Storage keys and limits of the subject's and the tenant's counters of `kind`."""
        settings = self.settings
        if kind == "r":
            own, tenant_limit = principal.rpm or settings.rpm, settings.tenant_rpm
        else:
            own, tenant_limit = principal.tpm or settings.tpm, settings.tenant_tpm
        keys, limits = [], []
        if own is not None:
            keys.append(f"{_PREFIX}{kind}:s:{principal.sub}")
            limits.append(own)
        if tenant_limit is not None and principal.tenant is not None:
            keys.append(f"{_PREFIX}{kind}:t:{principal.tenant}")
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
            if not self.settings.fail_open:
                # Redis is tried again at `_retry_at`; OpenAI clients back off on Retry-After.
                retry_after = max(1, math.ceil(self._retry_at - time.monotonic()))
                raise LimitsUnavailable(_UNAVAILABLE, headers={"Retry-After": str(retry_after)})
            FALLBACK_DECISIONS.inc()
        return self._memory.apply(mode, cost, keys, limits)

    def _on_storage_error(self, exc: BaseException) -> None:
        STORAGE_ERRORS.inc()
        self._retry_at = time.monotonic() + self.settings.redis_retry_s
        if not self._degraded:
            self._degraded = True
            mode = "per-process limits" if self.settings.fail_open else "refusing requests (503)"
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
        scope, _, name = key[len(_PREFIX) + 2 :].partition(":")
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

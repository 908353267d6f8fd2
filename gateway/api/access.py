"""Who may call the `/v1` routes, and how often: JWT auth and the request limit, which the routes
call first thing, and the caller's `CallContext` (model access, token meter, cache tenant) for
the engine.

Everything is built once (`Access`, on `app.state.access`; the limiter opens in the app's
lifespan). Per request: one dict lookup for an already verified token, one limiter call (a few µs
in memory, one Redis round trip with Redis), and the `x-ratelimit-*` headers, which go into
`request.state.response_headers` — the `RequestContext` middleware adds them to whatever
response leaves, 200, 4xx and event streams alike.
"""

from __future__ import annotations

import logging

from fastapi import Request

from gateway.core.context import CallContext
from gateway.errors import LimitsUnavailable, RateLimited, Unauthorized
from gateway.policy import ratelimit as limits
from gateway.policy.auth import Authenticator, AuthError, Principal
from gateway.policy.ratelimit import LimitDecision, LimitsConfig, RateLimiter
from gateway.settings import Settings

log = logging.getLogger("localmoe.limits")

# With auth off every request is this caller: the default limits then hold for all of them.
ANONYMOUS = Principal(sub="anonymous")

_UNAVAILABLE = (
    "Rate limits cannot be checked right now (their storage is unreachable); try again shortly."
)


class Access:
    """The authenticator and the rate limiter of one gateway process."""

    def __init__(self, settings: Settings, authenticator: Authenticator | None):
        self.authenticator = authenticator
        self.limits = LimitsConfig(
            rpm=settings.ratelimit.rpm,
            tpm=settings.ratelimit.tpm,
            tenant_rpm=settings.ratelimit.tenant_rpm,
            tenant_tpm=settings.ratelimit.tenant_tpm,
            window_seconds=settings.ratelimit.window_s,
            redis_url=settings.redis_url,
            fail_open=settings.ratelimit.fail_open,
        )
        self.limiter: RateLimiter | None = None

    def open(self) -> None:
        """Create the limiter (its Redis connections belong to the running event loop)."""
        self.limiter = RateLimiter(self.limits)

    async def close(self) -> None:
        """Close the limiter's connections."""
        if self.limiter is not None:
            await self.limiter.aclose()

    def principal(self, authorization: str | None) -> Principal:
        """The caller of a request with this `Authorization` header, or 401."""
        if self.authenticator is None:
            return ANONYMOUS
        try:
            return self.authenticator.authenticate(authorization)
        except AuthError as exc:
            raise Unauthorized(
                exc.message, headers={"WWW-Authenticate": exc.www_authenticate}
            ) from None

    def meters_tokens(self, principal: Principal) -> bool:
        """Whether a tokens-per-minute limit applies to `principal`."""
        return bool(
            principal.tpm
            or self.limits.tpm
            or (self.limits.tenant_tpm and principal.tenant is not None)
        )


def authenticate(request: Request) -> Principal:
    """Every `/v1` route: the caller of a valid bearer token, or 401 with `WWW-Authenticate`."""
    access: Access = request.app.state.access
    principal = access.principal(request.headers.get("authorization"))
    request.state.principal = principal
    return principal


async def admit(request: Request, principal: Principal) -> None:
    """Generation routes: count the request against its caller's requests per minute, or 429."""
    access: Access = request.app.state.access
    assert access.limiter is not None
    try:
        decision = await access.limiter.check_request(principal)
    except limits.LimitsUnavailable:
        raise LimitsUnavailable(_UNAVAILABLE) from None
    request.state.response_headers = decision.headers()
    request.state.admission = decision
    if not decision.allowed:
        raise RateLimited(decision.message, kind="requests")


def call_context(request: Request) -> CallContext:
    """The engine's view of an admitted request's caller."""
    access: Access = request.app.state.access
    principal: Principal = request.state.principal
    headers: dict[str, str] = request.state.response_headers
    meter = None
    if access.meters_tokens(principal):
        assert access.limiter is not None
        meter = _Meter(access.limiter, principal, request.state.admission, headers)
    return CallContext(
        request_id=request.state.request_id,
        tenant=principal.tenant,
        allows_model=principal.allows_model if principal.models is not None else None,
        cache_control=request.headers.get("cache-control"),
        meter=meter,
        headers=headers,
    )


class _Meter:
    """A caller's token budget, as the engine's `TokenMeter`."""

    __slots__ = ("_admission", "_headers", "_limiter", "_principal")

    def __init__(
        self,
        limiter: RateLimiter,
        principal: Principal,
        admission: LimitDecision,
        headers: dict[str, str],
    ):
        self._limiter = limiter
        self._principal = principal
        self._admission = admission
        self._headers = headers

    async def check(self, prompt_tokens: int) -> None:
        # The admission read the token counters already, unless no request limit applies.
        decision = self._limiter.fit_tokens(self._admission, prompt_tokens)
        if decision is None:
            try:
                decision = await self._limiter.check_tokens(self._principal, prompt_tokens)
            except limits.LimitsUnavailable:
                raise LimitsUnavailable(_UNAVAILABLE) from None
        self._headers.update(decision.headers())
        if not decision.allowed:
            raise RateLimited(decision.message, kind="tokens")

    def admits(self, prompt_tokens: int) -> bool:
        decision = self._limiter.room_for(self._admission, prompt_tokens)
        if decision is None:
            return False
        self._headers.update(decision.headers())
        return True

    async def charge(self, tokens: int) -> None:
        try:
            await self._limiter.charge_tokens(self._principal, tokens)
        except limits.LimitsUnavailable:
            log.warning(
                "could not charge %d tokens to %s: limits unavailable", tokens, self._principal.sub
            )

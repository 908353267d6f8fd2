"""Who may call the `/v1` routes, and how often: JWT auth and the request limit, which the routes
call first thing, and the caller's `CallContext` (model access, token meter, cache tenant) for
the engine.

`Access` is built once (on `app.state.access`; the limiter opens in the app's lifespan). The
`x-ratelimit-*` headers go into `request.state.response_headers`, which the `RequestContext`
middleware adds to whatever response leaves, 200, 4xx and event streams alike.
"""

from __future__ import annotations

import logging

from fastapi import Request

from gateway.api import metrics
from gateway.core.context import CallContext
from gateway.errors import LimitsUnavailable, RateLimited, Unauthorized
from gateway.policy import keys
from gateway.policy.auth import Authenticator, AuthError, Principal
from gateway.policy.ratelimit import LimitDecision, RateLimiter
from gateway.settings import Settings

log = logging.getLogger("localmoe.limits")

# With auth off every request is this caller: the default limits then hold for all of them.
ANONYMOUS = Principal(sub="anonymous")


class Access:
    """The authenticator and the rate limiter of one gateway process."""

    def __init__(self, settings: Settings):
        """Raises `keys.KeyConfigError` when auth is on and no usable key is configured."""
        self.settings = settings
        self.authenticator: Authenticator | None = keys.authenticator(settings)
        self.limiter: RateLimiter | None = None

    def open(self) -> None:
        """Create the limiter (its Redis connections belong to the running event loop)."""
        self.limiter = RateLimiter(self.settings.ratelimit, self.settings.redis_url)

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
            metrics.AUTH_FAILURES.labels(exc.code).inc()
            raise Unauthorized(
                exc.message, headers={"WWW-Authenticate": exc.www_authenticate}
            ) from None

    def meters_tokens(self, principal: Principal) -> bool:
        """Whether a tokens-per-minute limit applies to `principal`."""
        limits = self.settings.ratelimit
        return bool(
            principal.tpm or limits.tpm or (limits.tenant_tpm and principal.tenant is not None)
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
    decision = await access.limiter.check_request(principal)
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
        session=request.headers.get("x-session-id"),
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
            decision = await self._limiter.check_tokens(self._principal, prompt_tokens)
        self._headers.update(decision.headers())
        if not decision.allowed:
            raise RateLimited(decision.message, kind="tokens")

    def admits(self, prompt_tokens: int) -> bool:
        decision = self._limiter.admits_tokens(self._admission, prompt_tokens)
        if decision is None:
            return False
        self._headers.update(decision.headers())
        return True

    async def charge(self, tokens: int) -> None:
        try:
            await self._limiter.charge_tokens(self._principal, tokens)
        except LimitsUnavailable:
            log.warning(
                "could not charge %d tokens to %s: limits unavailable", tokens, self._principal.sub
            )

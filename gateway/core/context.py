"""What the core is told about a request's caller, and what it hands back to the HTTP layer.

The HTTP layer authenticates and admits the request, then fills a `CallContext`; the core uses
it for model access, the token budget, the cache's tenant and opt-out, and writes the response
headers it decides (`x-cache`, the token `x-ratelimit-*`). No JWT or Redis types cross this line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class TokenMeter(Protocol):
    """The caller's tokens-per-minute budget."""

    async def check(self, prompt_tokens: int) -> None:
        """Raise `RateLimited` when the prompt alone exceeds the remaining budget."""
        ...

    def admits(self, prompt_tokens: int) -> bool:
        """True when the budget certainly has room for `prompt_tokens`, known without a round
        trip (the headers are set as by `check`); False means nothing: call `check`."""
        ...

    async def charge(self, tokens: int) -> None:
        """Charge tokens actually used (prompt + completion); never raises."""
        ...


@dataclass(slots=True)
class CallContext:
    """One request's caller, as far as the core needs to know."""

    request_id: str
    tenant: str | None = None
    """Cache namespace: tenants never share cached answers."""
    allows_model: Callable[[str], bool] | None = None
    """False for a model the caller may not use: it gets the 404 of a model that does not exist."""
    cache_control: str | None = None
    """The request's `Cache-Control` header (`no-cache` / `no-store` skip the cache)."""
    meter: TokenMeter | None = None
    """None: no token limit applies."""
    session: str | None = None
    """The `x-session-id` header: requests of one session stay on one upstream (affinity)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Response headers; the HTTP layer sends them with whatever the response turns out to be."""

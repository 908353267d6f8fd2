"""The FastAPI application: middleware, error handlers, routes, and the lifetime of what they
share (Triton clients, authenticator, rate limiter, response cache).

Request path: RequestContext (id, access log, metrics, response headers) → BodySizeLimit (413) →
`/v1` dependencies (JWT auth → request limit) → route → engine (validation and model access →
token budget → cache → Triton). `/health/*` is always open; `/metrics` needs a token when
`metrics_auth` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api import error_responses, metrics, routes
from gateway.api.access import Access
from gateway.api.middleware import BodySizeLimit, RequestContext
from gateway.core.catalogue import Catalogue, keep_discovering
from gateway.core.service import Engine
from gateway.policy import keys
from gateway.policy.cache import ResponseCache
from gateway.settings import Settings
from gateway.triton.backend import TritonBackend
from gateway.triton.client import TritonPool

_STARTUP_DISCOVERY_S = 10.0


class _GatewayApp(FastAPI):
    """FastAPI, with the generation routes served ahead of its middleware stack.

    They get the same request context and body limit as every route (`generation`), and skip
    Starlette's error and FastAPI's exit-stack, telemetry and body-limit middleware, the router
    and FastAPI's request handling: per request, those cost about as much as everything the
    gateway itself does."""

    generation: ASGIApp | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        generation = self.generation
        if generation is None:
            return stack

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if routes.is_generation(scope):
                await generation(scope, receive, send)
            else:
                await stack(scope, receive, send)

        return app


def create_app(settings: Settings) -> FastAPI:
    """The gateway application for `settings`; Triton and Redis clients open when it starts.

    Raises `keys.KeyConfigError` when auth is on and no usable key is configured (production)."""
    access = Access(settings, keys.authenticator(settings))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = TritonPool(
            settings.triton.urls,
            health_interval_s=settings.triton.health_interval_s,
            stream_timeout_s=settings.triton.timeout_s,
            shared_streams=settings.triton.streams,
        )
        await pool.start()
        catalogue = Catalogue(settings)
        await catalogue.load_configured()
        discovery = asyncio.create_task(
            keep_discovering(catalogue, pool, settings.triton.health_interval_s), name="discovery"
        )
        if pool.ready():
            # With Triton up, learn the models before accepting connections: otherwise a second
            # worker could take requests for a model it has not discovered yet.
            await asyncio.wait({discovery}, timeout=_STARTUP_DISCOVERY_S)
        access.open()
        cache = None
        if settings.cache.enabled:
            cache = ResponseCache(
                max_entries=settings.cache.max_entries,
                ttl_seconds=settings.cache.ttl_s,
                redis_url=settings.redis_url,
            )
        app.state.engine = Engine(settings, catalogue, TritonBackend(pool), cache=cache)
        try:
            yield
        finally:
            discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await discovery
            await pool.close()
            await access.close()
            if cache is not None:
                await cache.aclose()

    app = _GatewayApp(
        title="LocalMoE gateway",
        summary="OpenAI-compatible API in front of Triton Inference Server",
        lifespan=lifespan,
        # Our own Prometheus metrics cover requests; FastAPI's OpenTelemetry hooks would cost a
        # provider lookup on every request even with no provider configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.access = access
    error_responses.install(app)
    app.router.routes[:0] = routes.generation
    app.include_router(routes.v1)
    app.include_router(routes.health)
    app.include_router(metrics.router)
    # Added last = outermost.
    app.add_middleware(BodySizeLimit, max_bytes=settings.requests.max_body_bytes)
    app.add_middleware(RequestContext, access_log_enabled=settings.access_log)
    app.generation = RequestContext(
        BodySizeLimit(routes.generation_app, max_bytes=settings.requests.max_body_bytes),
        access_log_enabled=settings.access_log,
    )
    return app

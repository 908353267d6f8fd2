"""The gateway application: one middleware list and one router that every route goes through,
and the lifetime of what the routes share (Triton clients, access control, response cache).

Request path: RequestContext (id, access log, metrics, response headers, 500s) → BodySizeLimit
(413) → FastAPI's router and exception handlers (every error in OpenAI's shape) → route:
authentication → request limit → `OpenAIService` (validation → model access → token budget →
cache → Triton). `/health/*` is always open; `/metrics` needs a token when `auth.metrics` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

from fastapi import FastAPI
from starlette.middleware import Middleware

from gateway.api import embeddings, error_responses, fallback, metrics, openapi, routes
from gateway.api.access import Access
from gateway.api.admission import Admission
from gateway.api.drain import Drain
from gateway.api.middleware import BodySizeLimit, RequestContext
from gateway.api.reload import Reloader
from gateway.core.catalogue import Catalogue
from gateway.core.service import OpenAIService
from gateway.policy.cache import ResponseCache
from gateway.settings import TEXT_BODY_BYTES, Settings
from gateway.triton.backend import TritonBackend
from gateway.triton.discovery import keep_discovering, repository_models
from gateway.triton.pool import TritonPool

log = logging.getLogger("localmoe.gateway")

_STARTUP_DISCOVERY_S = 10.0

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(settings: Settings) -> FastAPI:
    """The gateway application for `settings`; Triton and Redis clients open when it starts.

    Raises `gateway.policy.keys.KeyConfigError` when auth is on and no usable key is configured
    (production)."""
    access = Access(settings)
    app = FastAPI(
        title="LocalMoE gateway",
        summary="OpenAI-compatible API in front of Triton Inference Server",
        lifespan=_lifespan(settings, access),
        # First is outermost. Pure ASGI: streams pass through untouched and a client's
        # disconnect still reaches the route, which stops the Triton request.
        middleware=[
            Middleware(RequestContext, access_log_enabled=settings.access_log),
            Middleware(BodySizeLimit, **body_limits(settings)),
        ],
        exception_handlers=error_responses.handlers(),
        # Our own Prometheus metrics cover requests; FastAPI's OpenTelemetry hooks would cost a
        # provider lookup on every request even with no provider configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # `POST /v1/chat/completions/` answers 404 in OpenAI's shape, not a 307 to follow.
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.access = access
    app.router.routes.extend(routes.generation)
    app.include_router(routes.v1)
    app.include_router(embeddings.router)
    app.include_router(routes.health)
    app.include_router(metrics.router)
    app.openapi = openapi.generator(app)  # type: ignore[method-assign]
    return app


def body_limits(settings: Settings) -> dict[str, Any]:
    """`BodySizeLimit`'s limits: the configured one on every route; unset, the text limit, and
    on the chat route room for as many images of the largest size as a request may hold (they
    travel as base64 data URLs)."""
    given = settings.requests.max_body_bytes
    if given is not None:
        return {"max_bytes": given}
    chat = TEXT_BODY_BYTES + settings.images.request_bytes()
    return {"max_bytes": TEXT_BODY_BYTES, "per_path": {"/v1/chat/completions": chat}}


def _lifespan(settings: Settings, access: Access) -> Lifespan:
    """Open what the routes share when the app starts, close it when it stops."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = TritonPool(settings.triton)
        await pool.start()
        app.state.pool = pool
        app.state.admission = Admission(settings.admission)
        app.state.fallback = fallback.build(settings.fallback)
        drain = app.state.drain = Drain(settings.drain_timeout_s, pool.abort)
        drain.install()
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
            cache = ResponseCache(settings.cache, redis_url=settings.redis_url)
        backend = TritonBackend(pool)
        service = app.state.service = OpenAIService(
            settings.requests, catalogue, backend, cache=cache, images=settings.images
        )
        reloader = Reloader(settings, partial(_apply, app, pool, service))
        reloader.install()
        try:
            yield
        finally:
            await reloader.close()
            drain.uninstall()
            if app.state.fallback is not None:
                await app.state.fallback.aclose()
            discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await discovery
            await pool.close()
            await access.close()
            if cache is not None:
                await cache.aclose()

    return lifespan


async def _apply(app: FastAPI, pool: TritonPool, service: OpenAIService, new: Settings) -> None:
    """A reloaded configuration, for the requests that arrive from now on."""
    await pool.reconfigure(new.triton)
    app.state.admission.settings = new.admission
    catalogue = Catalogue(new)
    await catalogue.load_configured()
    if not catalogue.complete and pool.ready():
        with contextlib.suppress(Exception):  # the old models stay if Triton cannot say
            await catalogue.discover(await repository_models(pool.ready_client()))
    if catalogue.complete and catalogue.all():
        service.reconfigure(new.requests, catalogue, new.images)
    else:
        log.warning("configuration reload: the new model list could not be loaded, keeping it")
        service.reconfigure(new.requests, images=new.images)

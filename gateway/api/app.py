"""The FastAPI application: middleware, error handlers, routes, and the engine's lifetime.

Request path: RequestContext (id, access log) → BodySizeLimit (413) → route → engine.
Issue 4's JWT auth and rate limits belong on the `/v1` router as dependencies (health stays open);
they need nothing from the engine but the model id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from gateway.api import errors, routes
from gateway.api.middleware import BodySizeLimit, RequestContext
from gateway.core.engine import Engine
from gateway.core.models import Catalogue, keep_discovering
from gateway.settings import Settings
from gateway.triton.backend import TritonBackend
from gateway.triton.client import TritonPool


def create_app(settings: Settings) -> FastAPI:
    """The gateway application for `settings`; Triton clients open when it starts."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = TritonPool(
            settings.triton_urls,
            health_interval_s=settings.health_interval_s,
            stream_timeout_s=settings.upstream_timeout_s,
        )
        await pool.start()
        catalogue = Catalogue(settings)
        await catalogue.load_configured()
        discovery = asyncio.create_task(
            keep_discovering(catalogue, pool, settings.health_interval_s), name="discovery"
        )
        app.state.engine = Engine(settings, catalogue, TritonBackend(pool))
        try:
            yield
        finally:
            discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await discovery
            await pool.close()

    app = FastAPI(
        title="LocalMoE gateway",
        summary="OpenAI-compatible API in front of Triton Inference Server",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(routes.v1)
    app.include_router(routes.health)
    # Added last = outermost.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContext, access_log_enabled=settings.access_log)
    return app

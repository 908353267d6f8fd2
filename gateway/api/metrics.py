"""Prometheus metrics of the gateway process and the `/metrics` route that exposes them.

Requests are counted by method, route template and status, with their duration (for a stream: up
to its last byte); the rate-limit and cache counters of `gateway.policy` share the same default
registry. `metrics_auth` puts `/metrics` behind a bearer token. Under
`serve --workers N` the counters live in prometheus_client's multiprocess files and a scrape of
any worker sums all of them.
"""

from __future__ import annotations

import os

from fastapi import APIRouter, Request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.responses import Response
from starlette.types import Scope

REQUESTS = Counter(
    "localmoe_http_requests_total",
    "HTTP requests by method, route template and status",
    ["method", "route", "status"],
)
DURATION = Histogram(
    "localmoe_http_request_duration_seconds",
    "HTTP request duration until the last byte of the response, by method and route template",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

IN_FLIGHT = Gauge(
    "localmoe_http_requests_in_flight",
    "HTTP requests being served (streams until their last byte)",
    multiprocess_mode="livesum",
)
ERRORS = Counter(
    "localmoe_errors_total",
    "Errors answered (HTTP error responses and SSE error events) by status, type and code",
    ["status", "type", "code"],
)
AUTH_FAILURES = Counter(
    "localmoe_auth_failures_total",
    "Requests refused for their bearer token, by reason (missing_token, expired_token, ...)",
    ["reason"],
)

# Label children by (method, route, status): a handful of routes, so this stays small.
_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this process's metrics."""
    if request.app.state.settings.auth.metrics:
        request.app.state.access.principal(request.headers.get("authorization"))
    return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)


def _registry() -> CollectorRegistry:
    # `serve --workers N` sets prometheus_client's multiprocess folder: every worker writes its
    # samples there and each scrape sums them all (process_* and python_* metrics are left out).
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def count_error(status: int, kind: str, code: str | None) -> None:
    """One error answered."""
    ERRORS.labels(str(status), kind, code or "").inc()


def observe(scope: Scope, status: int, seconds: float) -> None:
    """Count one finished request; `scope["route"]` names the matched route, if any."""
    route = scope.get("route")
    key = (scope["method"], getattr(route, "path", "unmatched"), status)
    children = _children.get(key)
    if children is None:
        children = _children[key] = (
            REQUESTS.labels(key[0], key[1], str(status)),
            DURATION.labels(key[0], key[1]),
        )
    children[0].inc()
    children[1].observe(seconds)

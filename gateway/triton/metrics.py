"""Per-upstream metrics: health, requests in flight, attempt latency and outcome, retries.

An attempt is one request sent to one Triton upstream; a request retried on another upstream
(unreachable before its first response) is two attempts and one retry, counted on the upstream
that failed. Under `serve --workers N` the gauges are summed (in flight) or maxed (up) across
workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram

from gateway.errors import UpstreamTimeout

UP = Gauge(
    "localmoe_upstream_up",
    "1 while the Triton upstream answered its last readiness probe and its last request, else 0",
    ["upstream"],
    multiprocess_mode="livemax",
)
IN_FLIGHT = Gauge(
    "localmoe_upstream_requests_in_flight",
    "Requests sent to the Triton upstream and not finished",
    ["upstream"],
    multiprocess_mode="livesum",
)
DURATION = Histogram(
    "localmoe_upstream_request_duration_seconds",
    "One attempt on the Triton upstream, from sending the request to its last response",
    ["upstream"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
REQUESTS = Counter(
    "localmoe_upstream_requests_total",
    "Attempts on the Triton upstream by outcome (ok, error, timeout, cancelled)",
    ["upstream", "outcome"],
)
CIRCUIT = Gauge(
    "localmoe_upstream_circuit_state",
    "1 for the upstream's current circuit state (closed, open, half_open), 0 for the others",
    ["upstream", "state"],
    multiprocess_mode="livemax",
)
RETRIES = Counter(
    "localmoe_upstream_retries_total",
    "Requests moved to another upstream because this one failed before its first response",
    ["upstream"],
)

_OUTCOMES = ("ok", "error", "timeout", "cancelled")


class _Series:
    """The label children of one upstream, looked up once (`labels()` costs a lock per call)."""

    __slots__ = ("duration", "in_flight", "outcomes", "retries", "up")

    def __init__(self, url: str) -> None:
        self.up = UP.labels(url)
        self.in_flight = IN_FLIGHT.labels(url)
        self.duration = DURATION.labels(url)
        self.outcomes = {outcome: REQUESTS.labels(url, outcome) for outcome in _OUTCOMES}
        self.retries = RETRIES.labels(url)


_series: dict[str, _Series] = {}


def _of(url: str) -> _Series:
    series = _series.get(url)
    if series is None:
        series = _series[url] = _Series(url)
    return series


_STATES = ("closed", "open", "half_open")


def set_circuit(url: str, state: str) -> None:
    """The upstream's circuit state as one-hot gauges."""
    for name in _STATES:
        CIRCUIT.labels(url, name).set(1 if name == state else 0)


def forget(url: str) -> None:
    """An upstream left (DNS): drop its series, so no alert watches a pod that is gone. Under
    `--workers N` the multiprocess files keep their last values until the workers restart."""
    series = _series.pop(url, None)
    if series is None:
        return
    for metric, labels in [
        (UP, (url,)), (IN_FLIGHT, (url,)), (DURATION, (url,)), (RETRIES, (url,)),
        *((REQUESTS, (url, outcome)) for outcome in _OUTCOMES),
        *((CIRCUIT, (url, state)) for state in _STATES),
    ]:  # fmt: skip
        with contextlib.suppress(KeyError):
            metric.remove(*labels)


def set_up(url: str, ready: bool) -> None:
    """The upstream's health as the gateway sees it."""
    _of(url).up.set(1 if ready else 0)


class Counted(Protocol):
    """What an attempt counts itself on: the upstream's URL and its in-flight count."""

    url: str
    in_flight: int


class Attempt:
    """One request on one upstream: in flight from creation until `finish`."""

    __slots__ = ("_series", "_started", "_upstream", "outcome")

    def __init__(self, upstream: Counted) -> None:
        self._upstream = upstream
        upstream.in_flight += 1
        self._series = _of(upstream.url)
        self._series.in_flight.inc()
        self._started = time.perf_counter()
        self.outcome: str | None = None

    def retried(self) -> None:
        """The request leaves this upstream for another one."""
        self.outcome = "error"
        self._series.retries.inc()

    def finish(self, error: BaseException | None) -> None:
        """The attempt ended: completed (`outcome` "ok"), or with `error` propagating."""
        self._upstream.in_flight -= 1
        series = self._series
        series.in_flight.dec()
        series.duration.observe(time.perf_counter() - self._started)
        outcome = self.outcome or _outcome(error)
        series.outcomes[outcome].inc()


def _outcome(error: Any) -> str:
    if error is None or isinstance(error, GeneratorExit | asyncio.CancelledError):
        return "cancelled"  # the caller stopped reading before the final response
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    return "error"

"""All Triton upstreams of the gateway, and how a request gets through them.

A request goes to one eligible upstream — ready by its last health probe, its circuit not open,
under `max_in_flight_per_upstream` — chosen by the balancer (`gateway.triton.balancer`). If
that upstream fails before the request has its first response (unreachable, its stream cut,
the model not loaded there), the request moves to another upstream after a short jittered wait:
always when that upstream is gone (its connection lost, its circuit open), else only within the
retry budget, so that retries cannot pile load on upstreams that are failing because they are
overloaded. A request that has produced output is never retried. Every outcome feeds the
upstream's circuit breaker (`gateway.triton.breaker`).

When nothing is eligible the answer is immediate: 503 `upstream_unavailable` with `Retry-After`
(every circuit open or every upstream down), or 503 `server_overloaded` (every upstream full).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import sys
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TypeVar

import grpc
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from gateway.errors import (
    GatewayError,
    ServerOverloaded,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.settings import TritonSettings
from gateway.triton import attempts, engine_load, metrics
from gateway.triton.attempts import Parse
from gateway.triton.balancer import Balancer
from gateway.triton.breaker import Breaker, RetryBudget, State
from gateway.triton.membership import Membership, Resolver, Targets, resolve
from gateway.triton.metrics import Attempt
from gateway.triton.upstream import Request, StopRequest, Upstream

log = logging.getLogger("localmoe.triton")

T = TypeVar("T")

_PROBE_TIMEOUT_S = 1.0
# Probes in a row without an answer before a server counts as stalled and its streams are cut.
# One late answer is a busy server (200 streams on 2 cores can delay a probe past 1 s), and
# cutting streams with responses in flight cancels their RPCs, which wedges Triton 2.51.
_STALLED_AFTER = 3
# An upstream whose address left DNS finishes what it carries for at most this long, then closes.
_RETIRE_GRACE_S = 120.0


class TritonPool:
    """Create and `start()` it inside the running event loop."""

    def __init__(self, settings: TritonSettings, *, resolver: Resolver = resolve) -> None:
        self.settings = settings
        self._membership = Membership(Targets.parse(settings.urls), resolver)
        self.balancer = Balancer(settings.balancing, load_factor=settings.affinity_load_factor)
        self.upstreams: list[Upstream] = []
        self._budget = RetryBudget(settings.retry_budget)
        self._tasks: list[asyncio.Task[None]] = []
        self._retiring: dict[Upstream, asyncio.Task[None]] = {}
        self._calls: set[grpc.aio.StreamStreamCall] = set()
        self._aborted: GatewayError | None = None

    # -- lifetime -------------------------------------------------------------------------

    async def start(self) -> None:
        """Resolve the upstreams, probe each once, then keep probing (and resolving `dns:///`
        entries, and reading engine loads for `engine_aware`) in the background."""
        await self.refresh()
        await self.check()
        self._tasks.append(asyncio.create_task(self._probe_forever(), name="triton-health"))
        if self._membership.targets.names:
            self._tasks.append(asyncio.create_task(self._resolve_forever(), name="triton-dns"))
        if self.settings.balancing == "engine_aware":
            self._tasks.append(asyncio.create_task(self._read_loads_forever(), name="triton-load"))

    async def close(self) -> None:
        """Stop the background work and close every client."""
        for task in [*self._tasks, *self._retiring.values()]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        everything = [*self.upstreams, *self._retiring]
        await asyncio.gather(*(u.close() for u in everything), return_exceptions=True)

    def abort(self, error: GatewayError) -> None:
        """End every request in flight with `error` and refuse new ones (the end of a drain)."""
        self._aborted = error
        for call in list(self._calls):
            call.cancel()
        for upstream in self.upstreams:
            upstream.break_streams(error)

    async def reconfigure(self, settings: TritonSettings) -> None:
        """Take new settings (a reload): upstreams, balancing and circuit parameters; requests
        in flight carry on where they are."""
        self.settings = settings
        self._membership = Membership(Targets.parse(settings.urls), self._membership.resolver)
        self.balancer = Balancer(settings.balancing, load_factor=settings.affinity_load_factor)
        self._budget.ratio = settings.retry_budget
        await self.refresh()

    async def refresh(self) -> None:
        """Bring the upstreams in line with the configuration and DNS: new addresses are opened
        and probed, vanished ones stop taking requests and close once idle."""
        urls = await self._membership.current()
        wanted = set(urls)
        known = {u.url: u for u in self.upstreams}
        added = [self._open(url) for url in urls if url not in known]
        opened = {u.url: u for u in added}
        gone = [u for u in self.upstreams if u.url not in wanted]
        await asyncio.gather(*(self._probe(u) for u in added))
        self.upstreams = [known.get(url) or opened[url] for url in urls]
        for upstream in gone:
            log.info("upstream %s left, closing it once idle", upstream.url)
            self._retiring[upstream] = asyncio.create_task(self._retire(upstream))

    # -- state ----------------------------------------------------------------------------

    def ready(self) -> bool:
        """True when at least one upstream answered its last readiness probe."""
        return any(u.ready for u in self.upstreams)

    def health(self) -> list[dict[str, object]]:
        """Each upstream's view for `/health/ready`: ready, circuit state, requests in flight."""
        return [
            {
                "upstream": u.url,
                "ready": u.ready,
                "circuit": u.breaker.state.value,
                "in_flight": u.in_flight,
            }
            for u in self.upstreams
        ]

    async def check(self) -> None:
        """Probe every upstream's readiness now."""
        await asyncio.gather(*(self._probe(u) for u in self.upstreams))

    def ready_client(self) -> InferenceServerClient:
        """A ready upstream's client, for control calls such as model discovery."""
        return self.ready_clients()[0]

    def ready_clients(self) -> list[InferenceServerClient]:
        """The clients of every ready upstream, the least loaded first."""
        ready = sorted((u for u in self.upstreams if u.ready), key=lambda u: u.in_flight)
        if not ready:
            raise UpstreamUnavailable("No Triton upstream is ready to serve this request.")
        return [u.client for u in ready]

    # -- requests -------------------------------------------------------------------------

    def stream(
        self,
        request: Request,
        *,
        parse: Parse[T],
        stop: StopRequest | None = None,
        affinity_key: str | None = None,
    ) -> AsyncGenerator[T, None]:
        """Stream `request`, yielding `parse(response)[0]` until `parse` says final.

        Closing the iterator early ends the request on Triton: with the message
        `stop(request_id)` where the route has one (on a shared stream), else by cancelling the
        request's own RPC. `affinity_key` (with `affinity` on) keeps a conversation on one
        upstream."""
        key = affinity_key if self.settings.affinity else None
        return self._run(request, parse, stop, key)

    async def _run(
        self, request: Request, parse: Parse[T], stop: StopRequest | None, key: str | None
    ) -> AsyncGenerator[T, None]:
        self._budget.request()
        shared = stop is not None and self.settings.streams > 0
        timeout_s = self.settings.timeout_s
        client_id = request.id
        tried: set[Upstream] = set()
        retries = 0
        while True:
            upstream = self._choose(tried, key)
            tried.add(upstream)
            attempt = Attempt(upstream)
            request.id = client_id
            try:
                if shared:
                    assert stop is not None
                    items = attempts.on_shared_stream(upstream, request, parse, stop, timeout_s)
                else:
                    items = attempts.on_own_call(
                        upstream, request, parse, timeout_s, self._calls, lambda: self._aborted
                    )
                async with aclosing(items):
                    async for item, final in items:
                        if final:
                            attempt.outcome = "ok"
                            upstream.breaker.success()
                        yield item
                return
            except attempts.Lost as lost:
                upstream.breaker.failure()
                # A request on an upstream that is gone (down, or its circuit open) moves to
                # another; one that failed on an upstream still up retries within the budget.
                gone = not upstream.ready or upstream.breaker.state is State.OPEN
                if retries >= self.settings.retries or not (gone or self._budget.allows_retry()):
                    raise lost.error from None
                log.warning("upstream %s failed (%s), trying another", upstream.url, lost)
                attempt.retried()
                retries += 1
                await asyncio.sleep(random.uniform(0, self.settings.retry_backoff_s * 2**retries))
            except (UpstreamTimeout, UpstreamUnavailable):
                upstream.breaker.failure()
                raise
            finally:
                error = sys.exc_info()[1]
                attempt.finish(error)
                if attempt.outcome is None and upstream.breaker.state is State.HALF_OPEN:
                    upstream.breaker.abandon()  # a cancelled trial says nothing either way

    def _choose(self, tried: set[Upstream], key: str | None) -> Upstream:
        if self._aborted is not None:
            raise self._aborted
        cap = self.settings.max_in_flight_per_upstream
        while True:
            eligible = [
                u
                for u in self.upstreams
                if u.ready
                and u not in tried
                and u.breaker.would_allow()
                and (cap is None or u.in_flight < cap)
            ]
            if not eligible:
                raise self._nothing_eligible(tried, cap)
            upstream = self.balancer.pick(eligible, key)
            if upstream.breaker.allows():  # takes the half-open trial, if that is what it is
                return upstream
            tried = {*tried, upstream}

    def _nothing_eligible(self, tried: set[Upstream], cap: int | None) -> GatewayError:
        usable = [u for u in self.upstreams if u.ready and u not in tried]
        if cap is not None and usable and all(u.in_flight >= cap for u in usable):
            return ServerOverloaded("Every Triton upstream is at its request limit; retry soon.")
        waits = [u.breaker.retry_after_s() for u in usable if u.breaker.state is State.OPEN]
        retry_after = math.ceil(min(waits)) if waits else math.ceil(self.settings.health_interval_s)
        return UpstreamUnavailable(
            "No Triton upstream is ready to serve this request.",
            headers={"Retry-After": str(max(1, retry_after))},
        )

    # -- background -----------------------------------------------------------------------

    def _open(self, url: str) -> Upstream:
        s = self.settings
        breaker = Breaker(
            failures=s.breaker_failures,
            error_ratio=s.breaker_error_ratio,
            min_requests=s.breaker_min_requests,
            window_s=s.breaker_window_s,
            open_s=s.breaker_open_s,
            max_open_s=s.breaker_max_open_s,
            on_change=lambda state: metrics.set_circuit(url, state.value),
        )
        metrics.set_circuit(url, breaker.state.value)
        upstream = Upstream.open(url, s.streams, breaker)
        upstream.metrics_url = engine_load.metrics_url(url, s.metrics_port, s.metrics_urls)
        return upstream

    async def _probe(self, upstream: Upstream) -> None:
        """Ask `upstream` whether it is ready. An answer (yes, no, or a refused connection)
        counts at once; silence counts only after `_STALLED_AFTER` probes in a row, and then
        its streams are cut too: they may never end on their own."""
        try:
            ready = await upstream.client.is_server_ready(client_timeout=_PROBE_TIMEOUT_S)
        except (InferenceServerException, grpc.RpcError, OSError) as exc:
            ready = False
            if _no_answer(exc):
                upstream.missed_probes += 1
                if upstream.missed_probes < _STALLED_AFTER:
                    log.info(
                        "upstream %s did not answer its readiness probe in %s s (%d in a row)",
                        upstream.url, _PROBE_TIMEOUT_S, upstream.missed_probes,
                    )  # fmt: skip
                    return  # busy or gone: the next probes tell
                if upstream.missed_probes == _STALLED_AFTER:
                    log.warning("upstream %s stopped answering; ending its streams", upstream.url)
                    upstream.break_streams(attempts.unavailable(upstream, "stopped answering"))
        else:
            upstream.missed_probes = 0
        if ready != upstream.ready:
            log.info("upstream %s is %s", upstream.url, "ready" if ready else "not ready")
            if ready:
                upstream.breaker.recovered()
        upstream.ready = bool(ready)

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            await self.check()

    async def _resolve_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.dns_interval_s)
            await self.refresh()

    async def _read_loads_forever(self) -> None:
        loop = asyncio.get_running_loop()
        last_at = loop.time()
        while True:
            upstreams = list(self.upstreams)
            loads = await asyncio.gather(
                *(engine_load.read(u.metrics_url, u.in_flight) for u in upstreams)
            )
            now = loop.time()
            for upstream, load in zip(upstreams, loads, strict=True):
                if load is not None:
                    load = engine_load.with_step_time(load, upstream.engine, now - last_at)
                upstream.engine = load
            last_at = now
            await asyncio.sleep(self.settings.engine_poll_s)

    async def _retire(self, upstream: Upstream) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _RETIRE_GRACE_S
        try:
            while upstream.in_flight and loop.time() < deadline:
                await asyncio.sleep(0.5)
            await upstream.close()
        finally:
            metrics.forget(upstream.url)
            self._retiring.pop(upstream, None)


def _no_answer(exc: BaseException) -> bool:
    """The probe timed out (the server may be busy or hung), rather than being answered."""
    if isinstance(exc, InferenceServerException):
        return exc.status() == str(grpc.StatusCode.DEADLINE_EXCEEDED)
    return isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED

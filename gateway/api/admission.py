"""Backpressure: at most `admission.max_in_flight` generations at once in this process, a bounded
queue in front of them ordered by the token's priority claim, and a 503 `server_overloaded` with
`Retry-After` when the queue is full or a request waited `queue_timeout_s` — load is shed at the
door instead of piling up in memory and in Triton's queue.

A place is held from admission until the answer's last byte (a stream's `[DONE]`), and handed
straight to the next waiter: highest priority first, then first come.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncGenerator

from prometheus_client import Counter, Gauge

from gateway.errors import ServerOverloaded
from gateway.settings import AdmissionSettings

QUEUED = Gauge(
    "localmoe_admission_queue_length",
    "Generation requests waiting for a place",
    multiprocess_mode="livesum",
)
SHED = Counter(
    "localmoe_admission_rejections_total",
    "Requests refused with 503 server_overloaded, by reason (queue_full, queue_timeout)",
    ["reason"],
)
_QUEUE_FULL, _QUEUE_TIMEOUT = SHED.labels("queue_full"), SHED.labels("queue_timeout")


class Admission:
    """The places and the queue of one gateway process."""

    def __init__(self, settings: AdmissionSettings) -> None:
        self.settings = settings
        self.in_flight = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def bounded(self) -> bool:
        return self.settings.max_in_flight is not None

    async def acquire(self, priority: int = 0) -> None:
        """Take a place, waiting in the queue if need be; ServerOverloaded when none comes."""
        limit = self.settings.max_in_flight
        if limit is None or (self.in_flight < limit and not self._waiters):
            self.in_flight += 1
            return
        if len(self._waiters) >= self.settings.max_queue:
            _QUEUE_FULL.inc()
            raise ServerOverloaded("The server is overloaded; retry after the Retry-After delay.")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (-priority, next(self._order), waiter)
        heapq.heappush(self._waiters, entry)
        QUEUED.inc()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.settings.queue_timeout_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the place arrived as we gave up: pass it on
            else:
                waiter.cancel()
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
            if isinstance(exc, TimeoutError):
                _QUEUE_TIMEOUT.inc()
                raise ServerOverloaded(
                    "The server is overloaded: no capacity freed up within "
                    f"{self.settings.queue_timeout_s:g} s; retry after the Retry-After delay."
                ) from None
            raise
        finally:
            QUEUED.dec()

    def release(self) -> None:
        """Give the place back: to the first waiter, else to the pool."""
        while self._waiters:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():
                waiter.set_result(None)  # the place moves over: in_flight stays
                return
        self.in_flight -= 1


async def released_after(
    admission: Admission, chunks: AsyncGenerator[bytes, None]
) -> AsyncGenerator[bytes, None]:
    """`chunks`, then the place goes back (also when the client leaves early)."""
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        admission.release()

"""Passive outlier detection and a circuit breaker per upstream, as Envoy does it.

Closed: every request may go. Open ("ejected"): none may, for `open_s`, which doubles each time
the circuit opens again before it has closed (up to `max_open_s`). Half-open: after that time,
one trial request at a time; its success closes the circuit, its failure opens it again. The
circuit opens after `failures` consecutive failed requests, or when at least `min_requests` over
the last `window_s` failed at `error_ratio` or more.

A failure is what says the upstream is broken: unreachable, its stream cut, a timeout. A request
Triton refused for its own content (a model error) is not one.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from enum import Enum

# The error-ratio window is kept in this many buckets.
_BUCKETS = 10


class _Window:
    """Two counts over the last `window_s`, kept in a few buckets that age out."""

    def __init__(self, window_s: float, now: Callable[[], float]) -> None:
        self._bucket_s = window_s / _BUCKETS
        self._buckets: deque[list[float]] = deque()  # [start, first count, second count]
        self._now = now

    def current(self) -> list[float]:
        """The newest bucket, after dropping those older than the window."""
        now = self._now()
        buckets = self._buckets
        while buckets and now - buckets[0][0] >= self._bucket_s * _BUCKETS:
            buckets.popleft()
        if not buckets or now - buckets[-1][0] >= self._bucket_s:
            buckets.append([now, 0.0, 0.0])
        return buckets[-1]

    def totals(self) -> tuple[float, float]:
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def clear(self) -> None:
        self._buckets.clear()


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    """The circuit of one upstream. Not thread-safe: the event loop's thread only."""

    def __init__(
        self,
        *,
        failures: int = 5,
        error_ratio: float = 0.5,
        min_requests: int = 20,
        window_s: float = 10.0,
        open_s: float = 2.0,
        max_open_s: float = 30.0,
        now: Callable[[], float] = time.monotonic,
        on_change: Callable[[State], None] | None = None,
    ) -> None:
        self.failures = failures
        self.error_ratio = error_ratio
        self.min_requests = min_requests
        self.open_s = open_s
        self.max_open_s = max_open_s
        self.state = State.CLOSED
        self.opened_times = 0
        """How often the circuit opened since it last closed (the backoff exponent)."""
        self._window = _Window(window_s, now)  # requests, failures
        self._consecutive = 0
        self._open_until = 0.0
        self._trial = False
        self._now = now
        self._on_change = on_change

    def _enter(self, state: State) -> None:
        self.state = state
        if self._on_change is not None:
            self._on_change(state)

    def allows(self) -> bool:
        """May a request go now? Takes the half-open trial slot when it is free."""
        if self.state is State.CLOSED:
            return True
        now = self._now()
        if self.state is State.OPEN:
            if now < self._open_until:
                return False
            self._enter(State.HALF_OPEN)
            self._trial = False
        if self._trial:
            return False
        self._trial = True
        return True

    def would_allow(self) -> bool:
        """`allows()` without taking the trial slot (for readiness and balancing views)."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            return self._now() >= self._open_until
        return not self._trial

    def retry_after_s(self) -> float:
        """How long until this circuit lets a request through (0 when it does now)."""
        if self.state is State.OPEN:
            return max(0.0, self._open_until - self._now())
        return 0.0

    def success(self) -> None:
        """A request on this upstream completed."""
        self._count(failed=False)
        self._consecutive = 0
        if self.state is not State.CLOSED:
            self._enter(State.CLOSED)
            self.opened_times = 0
            self._trial = False

    def failure(self) -> None:
        """A request on this upstream failed for the upstream's sake."""
        requests, failed = self._count(failed=True)
        self._consecutive += 1
        if self.state is State.HALF_OPEN or (
            self.state is State.CLOSED
            and (
                self._consecutive >= self.failures
                or (requests >= self.min_requests and failed >= self.error_ratio * requests)
            )
        ):
            self.trip()

    def abandon(self) -> None:
        """The half-open trial request ended without an outcome (its client left)."""
        self._trial = False

    def recovered(self) -> None:
        """An active health check finds the upstream ready again: allow a trial request now
        rather than at the end of the open time (which may have grown long)."""
        if self.state is State.OPEN:
            self._enter(State.HALF_OPEN)
            self._trial = False

    def trip(self) -> None:
        """Open the circuit now (also when an active health check finds the upstream down)."""
        if self.state is State.OPEN:
            return
        duration = min(self.max_open_s, self.open_s * 2**self.opened_times)
        self.opened_times += 1
        self._enter(State.OPEN)
        self._open_until = self._now() + duration
        self._trial = False
        self._consecutive = 0
        self._window.clear()

    def _count(self, *, failed: bool) -> tuple[float, float]:
        bucket = self._window.current()
        bucket[1] += 1
        bucket[2] += failed
        return self._window.totals()


class RetryBudget:
    """Retries stay under `ratio` of the requests over the last `window_s` (and a few are always
    allowed): when an upstream fails, retries must not multiply the load on the others — Envoy's
    retry budget, counted over a window rather than over active requests."""

    def __init__(
        self,
        ratio: float,
        *,
        minimum: int = 3,
        window_s: float = 10.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self.minimum = minimum
        self._window = _Window(window_s, now)  # requests, retries

    def request(self) -> None:
        self._window.current()[1] += 1

    def allows_retry(self) -> bool:
        """Takes one retry from the budget when there is one."""
        bucket = self._window.current()
        requests, retries = self._window.totals()
        if retries >= max(self.minimum, self.ratio * requests):
            return False
        bucket[2] += 1
        return True

"""Graceful drain. On SIGTERM (or SIGINT) uvicorn stops accepting connections and waits up to
`drain_timeout_s` for the open ones; on top of that, from the signal on, `/health/ready` answers
503 and a new request on a kept-alive connection gets 503 `server_shutting_down`, and shortly
before uvicorn would cut what is left, every request still in flight ends with that error — a
stream with an OpenAI error event and `[DONE]`, so no client is cut silently.

The signal handler chains to uvicorn's own (installed before the app starts), in every worker.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from gateway.errors import GatewayError, ShuttingDown

log = logging.getLogger("localmoe.gateway")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# What is left at the end of the drain is ended this long before uvicorn cancels it.
_MARGIN_S = 1.0


class Drain:
    """The drain of one gateway process."""

    def __init__(self, timeout_s: float, abort: Callable[[GatewayError], None]) -> None:
        self.timeout_s = timeout_s
        self.draining = False
        self._abort = abort
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: dict[int, Any] = {}
        self._timer: asyncio.TimerHandle | None = None

    def install(self) -> None:
        """Chain the signal handlers (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for sig, handler in self._previous.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, handler)
        self._previous.clear()

    def begin(self) -> None:
        """Stop being ready; end whatever is left when the drain time is nearly up."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: not ready, open requests have %.0f s to finish", self.timeout_s)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.1, self.timeout_s - _MARGIN_S), self._end)

    def refuse(self) -> None:
        """Raise for a new request while draining."""
        if self.draining:
            raise ShuttingDown("The server is shutting down; retry on another replica.")

    def _end(self) -> None:
        log.warning("drain time is up: ending the requests still in flight")
        self._abort(ShuttingDown("The server shut down before this request finished."))

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.begin)
        previous = self._previous.get(sig)
        if callable(previous):
            previous(sig, frame)

"""An asyncio event loop on a thread of its own, for a decoupled model whose `execute` hands each
request to a coroutine and returns at once.

Why not `async def execute`: the Python backend of Triton 2.51 runs such a coroutine in the
background and registers its future in a set only *after* adding the callback that removes it,
so a coroutine that is already done by then (a `stop`, a refused request) logs "Cannot remove
future from background; KeyError" and leaves its future in the set for good. Here the future is
recorded before its callback is added.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)


class LoopThread:
    """Runs coroutines submitted from any thread on one event loop thread."""

    def __init__(self, name: str = "model-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._futures: set[concurrent.futures.Future[Any]] = set()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Schedule `coroutine`; its exception, if any, is logged."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._done)
        return future

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._futures)

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what still runs, then stop the loop and its thread."""
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            future.cancel()
        concurrent.futures.wait(futures, timeout=timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _done(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)
        if not future.cancelled() and future.exception() is not None:
            exc = future.exception()
            logger.error("request coroutine failed: %r", exc, exc_info=exc)

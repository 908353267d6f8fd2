"""One thread that sends a model's responses and asks its requests' senders whether they were
cancelled.

Both are round trips to Triton's server process, kept off the engine thread. One thread also
keeps them ordered: `is_cancelled()` on a sender whose final response was already sent crashes
tritonserver 2.51, so a request stops being watched, on this thread, right before its final
response goes out. Every response of a watched request must go through its `QueuedSender`.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from moe_engine.python_backend.responses import Sender

logger = logging.getLogger(__name__)

_WATCH = object()  # in place of a response: start watching this sender


class Outbox:
    """Sends responses in the order they were queued and polls watched senders for cancelled
    clients, calling `cancel(request_id)` for each one found.

    A send waits for the server to take the response (a few hundred µs here): made on the engine
    thread, that wait came once per running sequence per step, 44 % of its time with 8 streams.
    """

    def __init__(
        self,
        cancel: Callable[[str], object],
        *,
        final_flag: int,
        poll_interval_s: float = 0.02,
        poll_batch: int = 32,
    ) -> None:
        self._cancel = cancel
        self._final = final_flag
        self._interval_s = max(0.001, poll_interval_s)
        # Senders asked per poll: each ask is a round trip, and sends wait meanwhile. With more
        # requests in flight than this, each is asked less often than every interval.
        self._batch = max(1, poll_batch)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # request id -> sender, in the order they are next asked; this thread only.
        self._watched: dict[str, Sender] = {}
        self._thread = threading.Thread(target=self._run, name="engine-outbox", daemon=True)
        self._thread.start()

    def watch(self, request_id: str, sender: Sender) -> QueuedSender:
        """Watch the request with this sender; send its responses with what this returns."""
        self._queue.put((request_id, sender, _WATCH, 0))
        return QueuedSender(self._queue, request_id, sender)

    def close(self, timeout: float = 5.0) -> bool:
        """Send what is queued, then stop; False if that took longer than `timeout`."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("responses still unsent after %s s of shutdown", timeout)
            return False
        return True

    def _run(self) -> None:
        next_poll = time.monotonic() + self._interval_s
        while True:
            # Nothing watched: nothing to poll, so wait for the next item however long it takes.
            wait = max(0.0, next_poll - time.monotonic()) if self._watched else None
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = ()
            if item is None:
                return
            try:
                if item:
                    self._handle(*item)
                if time.monotonic() >= next_poll:
                    self._poll()
            except Exception:  # this thread must outlive any one request
                logger.exception("engine outbox")
            if time.monotonic() >= next_poll or not self._watched:
                next_poll = time.monotonic() + self._interval_s

    def _handle(self, request_id: str, sender: Sender, response: Any, flags: int) -> None:
        if response is _WATCH:
            self._watched[request_id] = sender
            return
        if flags & self._final:
            self._watched.pop(request_id, None)  # never asked again: its factory is freed
        try:
            sender.send(response, flags)
        except Exception as exc:  # e.g. the client is gone; the next poll stops the request
            logger.warning("sending a response failed: %s", exc)

    def _poll(self) -> None:
        """Ask the next few watched senders; asked ones go to the back of the line."""
        for request_id in list(itertools.islice(self._watched, self._batch)):
            sender = self._watched.pop(request_id)
            try:
                cancelled = sender.is_cancelled()
            except Exception as exc:
                logger.warning("is_cancelled() failed, cancelling: %s", exc)
                cancelled = True
            if cancelled:
                self._cancel(request_id)  # its final response comes back through here
            else:
                self._watched[request_id] = sender


class QueuedSender:
    """A response sender whose `send` only queues, for the outbox to send."""

    __slots__ = ("_queue", "_request_id", "_sender")

    def __init__(self, outbox: queue.SimpleQueue, request_id: str, sender: Sender) -> None:
        self._queue, self._request_id, self._sender = outbox, request_id, sender

    def send(self, response: Any = None, flags: int = 0) -> None:
        self._queue.put((self._request_id, self._sender, response, flags))

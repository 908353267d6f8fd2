"""Requests in flight by client request id, for TensorRT-LLM's `stop` (a request with `stop=true`
ends the ones with its id), including stops that arrive before their request does.

A stop can overtake its request: both travel separately through the server, and a request may
wait a long time before it reaches the model. A stop that finds nothing is remembered for a while
(bounded in number and age), and the request it was meant for is stopped when it arrives.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Inflight(Generic[T]):
    """Client id -> its in-flight items, plus recent stops that found none (thread-safe)."""

    def __init__(
        self,
        *,
        early_stops: int = 1024,
        early_stop_ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, list[T]] = {}
        self._early: OrderedDict[str, float] = OrderedDict()  # client id -> when stopped
        self._max_early = early_stops
        self._ttl_s = early_stop_ttl_s
        self._clock = clock

    def add(self, client_id: str, item: T) -> bool:
        """Track `item` under `client_id`; False (and not tracked) if a stop for that id came
        first, in which case the caller ends the request at once."""
        if not client_id:
            return True
        with self._lock:
            stopped_at = self._early.pop(client_id, None)
            if stopped_at is not None and self._clock() - stopped_at <= self._ttl_s:
                return False
            self._items.setdefault(client_id, []).append(item)
            return True

    def remove(self, client_id: str, item: T) -> None:
        with self._lock:
            items = self._items.get(client_id)
            if items is None:
                return
            if item in items:
                items.remove(item)
            if not items:
                del self._items[client_id]

    def stop(self, client_id: str) -> list[T]:
        """The items in flight under `client_id`; none: remember the stop for a later arrival."""
        with self._lock:
            items = list(self._items.get(client_id, ()))
            if not items and client_id:
                self._early[client_id] = self._clock()
                self._early.move_to_end(client_id)
                while len(self._early) > self._max_early:
                    self._early.popitem(last=False)
            return items

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._items.values())

"""Rate-limit counters in this process: the same fixed windows and modes as the Redis script,
used when no Redis is configured and, failing open, while Redis is unreachable."""

from __future__ import annotations

import math

from cachetools import TTLCache

# How a call counts (the Redis script's ARGV[1] too): test only, admit if every limit has room,
# or add regardless.
TEST, ADMIT, ADD = 0, 1, 2


class MemoryCounters:
    """The same fixed windows in this process: default storage, and the fail-open fallback."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        # key -> [count, window end]; unbounded like Redis: evicting a live counter would give
        # its caller a fresh window.
        self._counters: TTLCache[str, list[float]] = TTLCache(math.inf, window_s)

    def apply(
        self, mode: int, cost: int, keys: list[str], limits: list[int]
    ) -> tuple[bool, list[int]]:
        # No await inside: on one event loop this is as atomic as the Lua script.
        counters = self._counters
        with counters.timer as now:  # one clock reading for our window ends and the cache's
            current = [_lookup(counters, key) for key in keys]
            allowed = mode == ADD or all(
                (entry[0] if entry is not None else 0) + cost <= limit
                for entry, limit in zip(current, limits, strict=False)
            )
            charge = allowed and mode != TEST
            values: list[int] = []
            for i, entry in enumerate(current):
                if charge and i < len(limits):
                    if entry is None:
                        entry = counters[keys[i]] = [0, now + self._window_s]
                    entry[0] += cost
                if entry is None:
                    values += (0, 0)
                else:
                    values += (int(entry[0]), math.ceil((entry[1] - now) * 1000))
        return allowed, values


def _lookup(counters: TTLCache[str, list[float]], key: str) -> list[float] | None:
    try:  # half the cost of TTLCache.get, which looks the key up twice
        return counters[key]
    except KeyError:
        return None

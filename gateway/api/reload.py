"""Configuration reload without a restart: on SIGHUP, or when `config_file` changes (polled every
`reload_watch_s`), the settings are read again from the same file, environment and command line.

A new configuration that does not validate is refused with one log line, and the running one
stays. A valid one applies to the requests that arrive from then on, while those in flight
finish where they are: the Triton upstreams (added ones are probed first, removed ones close
once idle), balancing, retries and circuit settings, the request and image limits (not the body
size limit, set at start-up), the admission bounds, and the models when the new list can be
loaded in full. Sections that cannot change under a
running process (auth keys, Redis, the cache, host and port) are named in a warning; they take
effect at the next restart. Under `serve --workers N` the supervisor reloads instead, by
restarting the workers one at a time (gateway/server.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter

from gateway.settings import Settings

log = logging.getLogger("localmoe.gateway")

RELOADS = Counter(
    "localmoe_config_reloads_total",
    "Configuration reloads by result (applied, refused, unchanged)",
    ["result"],
)
# What a running process applies; any other change waits for a restart.
_LIVE = {"triton", "requests", "images", "admission", "models", "discover_models"}


class Reloader:
    """Reads the settings again and hands them to `apply` when they changed."""

    def __init__(self, settings: Settings, apply: Callable[[Settings], Awaitable[None]]) -> None:
        self.settings = settings
        self._apply = apply
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def install(self) -> None:
        """SIGHUP reloads (main thread only), and the file is watched when asked to."""
        self._loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGHUP, self._on_signal)
        if self.settings.reload_watch_s and self.settings.config_file is not None:
            self._watch = asyncio.create_task(self._watch_file(), name="config-watch")

    async def close(self) -> None:
        if self._previous is not None and signal.getsignal(signal.SIGHUP) == self._on_signal:
            signal.signal(signal.SIGHUP, self._previous)
        for task in [*self._tasks, *([self._watch] if self._watch else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def reload(self) -> bool:
        """Read and apply the configuration; False when it was refused or unchanged."""
        async with self._lock:
            try:
                new = self.settings.reloaded()
            except Exception as exc:  # pydantic, YAML and file errors alike: keep running
                RELOADS.labels("refused").inc()
                log.error("configuration reload refused, keeping the running one: %s", exc)
                return False
            changed = _changed_sections(self.settings, new)
            if not changed:
                RELOADS.labels("unchanged").inc()
                log.info("configuration reload: nothing changed")
                return False
            later = sorted(changed - _LIVE)
            if later:
                log.warning("configuration reload: %s change at the next restart", ", ".join(later))
            await self._apply(new)
            self.settings = new
            RELOADS.labels("applied").inc()
            log.info("configuration reloaded: %s", ", ".join(sorted(changed & _LIVE)) or "-")
            return True

    def _on_signal(self, sig: int, frame: object) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._start_reload)

    def _start_reload(self) -> None:
        task = asyncio.create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_file(self) -> None:
        path = self.settings.config_file
        assert path is not None and self.settings.reload_watch_s is not None
        seen = _stamp(path)
        while True:
            await asyncio.sleep(self.settings.reload_watch_s)
            stamp = _stamp(path)
            if stamp != seen:
                seen = stamp
                await self.reload()


def _stamp(path: Any) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _changed_sections(old: Settings, new: Settings) -> set[str]:
    before, after = old.model_dump(), new.model_dump()
    return {key for key in after if before.get(key) != after.get(key)}

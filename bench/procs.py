"""Child processes of the benchmark: started so that none outlives it, stopped in order, and
their CPU time read from /proc.

Every child runs in its own session (a terminal's Ctrl-C reaches only the harness, which then
stops them in order) with a parent-death signal (if the harness itself is killed, they get
SIGTERM from the kernel). `Cleanup` stops what was started, last first, on exit, on an
exception and on SIGINT/SIGTERM (`signals_raise_interrupt`).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def popen(command: Sequence[str], *, name: str, **kwargs: Any) -> subprocess.Popen:
    """Start `command` detached from the terminal, dying with this process."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    try:
        return subprocess.Popen(list(command), preexec_fn=_detach_and_die_with_parent, **kwargs)
    except FileNotFoundError as exc:
        raise RuntimeError(f"cannot start {name}: {exc}") from exc


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL the process group if it lingers; its exit status."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    # Anything the child started in its session goes with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.returncode


class Cleanup:
    """Stop callbacks, run last-registered first; each runs once even if another fails."""

    def __init__(self) -> None:
        self._stops: list[tuple[str, Callable[[], object]]] = []

    def add(self, name: str, stop: Callable[[], object]) -> None:
        """Register `stop` for the thing called `name`."""
        self._stops.append((name, stop))

    def run(self) -> None:
        """Run every stop callback, last first."""
        while self._stops:
            name, stop = self._stops.pop()
            try:
                stop()
            except Exception as exc:  # keep stopping the others
                print(f"bench: stopping {name} failed: {exc!r}", file=sys.stderr)


@contextlib.contextmanager
def signals_raise_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt (like SIGINT) while inside the block."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cpu_seconds(pid: int, *, tree: bool = True) -> float:
    """User + system CPU seconds of `pid` (and, with `tree`, of its live descendants)."""
    pids = _descendants(pid) if tree else [pid]
    return sum(_own_cpu(p) for p in pids)


def children_cpu_seconds() -> float:
    """CPU seconds of this process's children that have exited and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _own_cpu(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _detach_and_die_with_parent() -> None:
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)

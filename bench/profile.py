"""Sampling profiles of a running process with py-spy, summarised for the report.

py-spy attaches from outside (no change to the gateway), samples only threads that are running
(idle waits in epoll are not counted), and writes collapsed stacks that speedscope or
flamegraph.pl open. The summary gives the frames with the most samples of their own, the most
inclusive samples, and the share of samples per library: enough to see where a request's CPU goes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.procs import popen, stop_process

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")
# Libraries to group samples by: py-spy names files relative to their import root.
_GROUPS = (
    ("gateway (ours)", ("gateway/",)),
    ("grpc", ("grpc/",)),
    ("tritonclient", ("tritonclient/",)),
    ("protobuf", ("google/protobuf/",)),
    ("numpy", ("numpy/",)),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("fastapi", ("fastapi/",)),
    ("starlette", ("starlette/",)),
    ("uvicorn / httptools", ("uvicorn/", "httptools/")),
    ("jinja2 (chat template)", ("jinja2/",)),
    ("tokenizers", ("tokenizers/",)),
    ("jwt / auth", ("jwt/", "cryptography/")),
    ("limits / redis", ("limits/", "slowapi/", "redis/")),
    ("prometheus_client", ("prometheus_client/",)),
    ("logging", ("logging/",)),
    ("json / orjson", ("json/", "orjson")),
    ("uuid", ("uuid.py",)),
    ("threads (to_thread, executors)", ("threading.py", "concurrent/futures/")),
)
# A sample whose innermost frame is the event loop's `run` is time in uvloop's C code
# (scheduling callbacks, socket I/O), which py-spy cannot see into.
_LOOP = ("Runner.run", "asyncio/runners.py")


def py_spy_binary() -> str | None:
    """The `py-spy` executable (pip package `py-spy`), or None."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def profile_during(
    pid: int, load: Callable[[], object], seconds: float, out_prefix: Path
) -> dict[str, Any]:
    """Sample `pid` for `seconds` while `load()` runs; the summary (and the stacks' file)."""
    binary = py_spy_binary()
    if binary is None:
        load()
        return {"error": "py-spy is not installed (pip install py-spy)"}
    raw = out_prefix.with_suffix(".collapsed.txt")
    command = [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    command += ["--rate", "250", "--nonblocking", "--format", "raw", "--output", str(raw)]
    process = popen(command, name="py-spy", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        load()
        _, err = process.communicate(timeout=seconds + 30)
    finally:
        stop_process(process, timeout=5)
    if not raw.exists():
        message = err.decode(errors="replace").strip() if err else ""
        return {"error": f"py-spy wrote nothing: {message[-500:]}"}
    summary = summarize_collapsed(raw.read_text())
    summary["stacks"] = raw.name
    text = format_summary(summary)
    out_prefix.with_suffix(".txt").write_text(text)
    summary["text"] = out_prefix.with_suffix(".txt").name
    return summary


def summarize_collapsed(text: str, top: int = 20) -> dict[str, Any]:
    """Top self and inclusive frames and per-library shares of collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        names = [_name(f) for f in frames]
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
        groups[_group(frames)] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(top)]

    return {
        "samples": total,
        "self_pct": share(own) if total else [],
        "inclusive_pct": share(inclusive) if total else [],
        "library_pct": share(groups) if total else [],
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as plain text."""
    lines = [f"samples: {summary['samples']}", "", "share of samples by library (leaf frame):"]
    lines += [f"  {pct:5.1f}%  {name}" for name, pct in summary["library_pct"]]
    lines += ["", "top frames by own samples:"]
    lines += [f"  {pct:5.1f}%  {name}" for name, pct in summary["self_pct"]]
    lines += ["", "top frames by inclusive samples:"]
    lines += [f"  {pct:5.1f}%  {name}" for name, pct in summary["inclusive_pct"]]
    return "\n".join(lines) + "\n"


def _name(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file")
    short = "/".join(path.split("/")[-2:]) if "site-packages" in path or "/lib/" in path else path
    short = short.split("/work/main/")[-1]
    return f"{match.group('func')} ({short})"


def _group(frames: list[str]) -> str:
    # Attribute a sample to the innermost frame that belongs to a known library.
    leaf = _FRAME.match(frames[-1])
    if leaf and leaf.group("func") == _LOOP[0] and leaf.group("file").endswith(_LOOP[1]):
        return "event loop (uvloop, C)"
    for frame in reversed(frames):
        match = _FRAME.match(frame)
        path = match.group("file") if match else frame
        for group, prefixes in _GROUPS:
            if any(path.startswith(p) or f"/{p}" in path for p in prefixes):
                return group
    return "other"

"""HTTP load with `wrk` (Debian package `wrk`): closed loop, keep-alive, POST bodies via Lua.

wrk is written in C and costs a few microseconds of CPU per request, so unlike a Python client
it is never the bottleneck on this machine. The generated Lua script sets the body and headers,
optionally numbers each request (`__COUNTER__` in the body, for cache misses), and prints the
summary and latency percentiles as one JSON line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import children_cpu_seconds, popen, stop_process
from bench.stats import CDF_POINTS

COUNTER = "__COUNTER__"
_MARK = "BENCH_JSON "


def wrk_binary() -> str | None:
    """The `wrk` executable, or None when it is not installed."""
    return shutil.which("wrk")


def lua_script(
    body: str, headers: dict[str, str], counter_from: int | None = None, cycle: int | None = None
) -> str:
    """The wrk script for POSTing `body`; with `counter_from`, `__COUNTER__` in the body becomes
    `counter_from + 1`, `+ 2`, … (or, with `cycle`, `counter_from + 1` … `counter_from + cycle`
    over and over)."""
    lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()]
    lines.append(f"local body = {_lua_string(body)}")
    if counter_from is None:
        lines.append("wrk.body = body")
    else:
        step = f"(i - 1) % {int(cycle)} + 1" if cycle else "i"
        lines += [
            "local i = 0",
            "request = function()",
            "  i = i + 1",
            f'  local b = string.gsub(body, "{COUNTER}", tostring({int(counter_from)} + {step}))',
            "  return wrk.format(nil, nil, nil, b)",
            "end",
        ]
    points = ", ".join(f"{p:g}" for p in CDF_POINTS)
    lines += [
        "done = function(summary, latency, requests)",
        "  local cdf = {}",
        f"  for _, p in ipairs({{{points}}}) do",
        "    local v = p >= 100 and latency.max or latency:percentile(p)",
        '    cdf[#cdf + 1] = string.format("[%.4f, %g]", v / 1000, p)',
        "  end",
        "  local e = summary.errors",
        "  io.write(string.format(",
        f'    \'{_MARK}{{"requests": %d, "duration_us": %d, "bytes": %d, \'',
        '    .. \'"errors": %d, "status_errors": %d, "mean_ms": %.4f, "max_ms": %.4f, \'',
        '    .. \'"p50_ms": %.4f, "p90_ms": %.4f, "p99_ms": %.4f, "cdf": [%s]}\\n\',',
        "    summary.requests, summary.duration, summary.bytes,",
        "    e.connect + e.read + e.write + e.timeout + e.status, e.status,",
        "    latency.mean / 1000, latency.max / 1000, latency:percentile(50) / 1000,",
        "    latency:percentile(90) / 1000, latency:percentile(99) / 1000,",
        '    table.concat(cdf, ", ")))',
        "end",
    ]
    return "\n".join(lines) + "\n"


def run_wrk(
    url: str,
    *,
    body: str,
    headers: dict[str, str],
    concurrency: int,
    duration: float,
    counter_from: int | None = None,
    cycle: int | None = None,
    threads: int = 1,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """One wrk run; requests, rps, latency summary (ms) and wrk's own CPU seconds."""
    binary = wrk_binary()
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua_script(body, headers, counter_from, cycle))
    command = [
        binary,
        f"-t{max(1, min(threads, concurrency))}",
        f"-c{concurrency}",
        f"-d{max(1, round(duration))}s",  # wrk counts whole seconds only
        f"--timeout={int(timeout_s)}s",
        "-s",
        script.name,
        url,
    ]
    cpu0, start = children_cpu_seconds(), time.perf_counter()
    process = popen(command, name="wrk", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=duration + timeout_s + 30)
    finally:
        stop_process(process, timeout=2)
        Path(script.name).unlink(missing_ok=True)
    wall = time.perf_counter() - start
    line = next((x for x in out.splitlines() if x.startswith(_MARK)), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}): {err.strip() or out.strip()}")
    raw = json.loads(line[len(_MARK) :])
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "errors": raw["errors"],
        "error_sample": f"{raw['status_errors']} non-2xx responses" if raw["errors"] else "",
        "window_s": seconds,
        "rps": raw["requests"] / seconds,
        "latency_ms": {
            "count": raw["requests"],
            "mean": raw["mean_ms"],
            "max": raw["max_ms"],
            "p50": raw["p50_ms"],
            "p90": raw["p90_ms"],
            "p99": raw["p99_ms"],
            "cdf": raw["cdf"],
        },
        "client_cpu_s": children_cpu_seconds() - cpu0,
        "client_wall_s": wall,
    }


def _lua_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r") + '"'

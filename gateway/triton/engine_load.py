"""Reading each upstream's engine gauges from its Triton metrics port, for `engine_aware`
balancing: `nv_trt_llm_request_metrics` (active, waiting, max) and
`nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}`, summed over the models
(the KV fraction: the fullest model's). The same names on TensorRT-LLM's GPU backend.

A scrape is a small HTTP GET; it runs in a thread (the standard library's client: the gateway has
no async HTTP client of its own, and two requests a second per upstream do not need one).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import urllib.request
from collections.abc import Mapping

from gateway.triton.balancer import EngineLoad

_SAMPLE = re.compile(
    r"^(nv_trt_llm_request_metrics|nv_trt_llm_kv_cache_block_metrics|nv_trt_llm_general_metrics)"
    r"\{([^}]*)\}\s+(\S+)",
    re.MULTILINE,
)
_TYPE = re.compile(r'(?:request_type|kv_cache_block_type|general_type)="([a-z_]+)"')
# The weight of a new reading in the averaged time per iteration.
_SMOOTHING = 0.3
_TIMEOUT_S = 1.0
_MAX_BYTES = 4 << 20


def metrics_url(url: str, port: int, overrides: Mapping[str, str]) -> str:
    """Where the upstream `host:grpc_port` publishes its metrics."""
    if url in overrides:
        return overrides[url]
    host = url.rpartition(":")[0]
    return f"http://{host}:{port}/metrics"


def parse(text: str, in_flight: int) -> EngineLoad:
    """The engine gauges in a Prometheus text exposition."""
    active = waiting = max_batch = kv = iterations = 0.0
    for family, labels, value in _SAMPLE.findall(text):
        kind = _TYPE.search(labels)
        if kind is None:
            continue
        number = float(value)
        name = kind.group(1)
        if family == "nv_trt_llm_request_metrics":
            if name == "active":
                active += number
            elif name == "waiting":
                waiting += number
            elif name == "max":
                max_batch += number
        elif family == "nv_trt_llm_general_metrics":
            if name == "iteration_counter":
                iterations += number
        elif name == "fraction":
            kv = max(kv, number)
    return EngineLoad(active, waiting, max_batch, kv, in_flight, iterations)


def with_step_time(
    new: EngineLoad, previous: EngineLoad | None, seconds_between: float
) -> EngineLoad:
    """`new` with the time per iteration measured since `previous` (while the engine had work),
    averaged into the earlier measurement; kept as it was over idle stretches."""
    step_s = previous.step_s if previous is not None else None
    if previous is not None and seconds_between > 0 and (new.active or previous.active):
        ran = new.iterations - previous.iterations
        if ran > 0:
            measured = seconds_between / ran
            step_s = measured if step_s is None else step_s + _SMOOTHING * (measured - step_s)
    return dataclasses.replace(new, step_s=step_s)


async def read(url: str, in_flight: int) -> EngineLoad | None:
    """One reading, or None when the metrics port does not answer."""
    try:
        text = await asyncio.to_thread(_get, url)
    except (OSError, ValueError):
        return None
    return parse(text, in_flight)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
        return response.read(_MAX_BYTES).decode("utf-8", "replace")

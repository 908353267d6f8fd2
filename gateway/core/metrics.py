"""What generations cost, as Prometheus metrics: time to first token, inter-token latency and
end-to-end latency histograms, and prompt and completion tokens, per model; images accepted and
refused.

Buckets fit LLM serving (vLLM's, stretched for CPU engines): a cache hit is sub-millisecond, a
first token on the CPU engine tens of milliseconds, a whole answer up to minutes. Under
`serve --workers N` they live in prometheus_client's multiprocess files like every other metric.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram

_LATENCY_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0,
)  # fmt: skip
_TOKEN_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip

TIME_TO_FIRST_TOKEN = Histogram(
    "localmoe_time_to_first_token_seconds",
    "From the request being ready for the backend to its first generated text or cached piece",
    ["model", "cache"],
    buckets=_LATENCY_BUCKETS,
)
INTER_TOKEN_LATENCY = Histogram(
    "localmoe_inter_token_latency_seconds",
    "Between consecutive deltas of one streamed choice",
    ["model"],
    buckets=_TOKEN_BUCKETS,
)
GENERATION_DURATION = Histogram(
    "localmoe_generation_duration_seconds",
    "From the request being ready for the backend to its last delta",
    ["model", "cache"],
    buckets=_LATENCY_BUCKETS,
)
PROMPT_TOKENS = Counter(
    "localmoe_prompt_tokens_total", "Prompt tokens of answered requests", ["model"]
)
COMPLETION_TOKENS = Counter(
    "localmoe_completion_tokens_total", "Completion tokens of answered requests", ["model"]
)
IMAGES = Counter(
    "localmoe_images_total",
    "Images of chat requests that passed every check, by source (data: URL, or fetched http)",
    ["source"],
)
IMAGE_REFUSALS = Counter(
    "localmoe_image_refusals_total",
    "Image parts refused with a 400, by reason (corrupt, format, too_many_pixels, "
    "private_address, timeout, too_many_images, text_only_model, ...)",
    ["reason"],
)


def count_image(source: str) -> None:
    """One image accepted from `source` (`data` or `http`)."""
    IMAGES.labels(source).inc()


def count_image_refusal(reason: str) -> None:
    """One image part refused for `reason` (`ImageRefused.reason`, or the gateway's own)."""
    IMAGE_REFUSALS.labels(reason).inc()


# Label children per (model, cache result), looked up once: `labels()` costs a lock and a tuple
# per call, which added up to several microseconds per request.
_children: dict[tuple[str, bool], tuple[Any, Any, Any, Any, Any]] = {}


def _series(model: str, cached: bool) -> tuple[Any, Any, Any, Any, Any]:
    series = _children.get((model, cached))
    if series is None:
        label = "hit" if cached else "miss"
        series = _children[(model, cached)] = (
            TIME_TO_FIRST_TOKEN.labels(model, label),
            GENERATION_DURATION.labels(model, label),
            INTER_TOKEN_LATENCY.labels(model),
            PROMPT_TOKENS.labels(model),
            COMPLETION_TOKENS.labels(model),
        )
    return series


class GenerationClock:
    """Times one request's deltas into the histograms above; counts its tokens at the end."""

    __slots__ = ("_first", "_series", "_start")

    def __init__(self, model: str, *, cached: bool) -> None:
        self._series = _series(model, cached)
        self._start = time.perf_counter()
        self._first: float | None = None

    def tick(self, previous: float | None) -> float:
        """A delta arrived for a choice whose previous delta came at `previous`; now."""
        now = time.perf_counter()
        if self._first is None:
            self._first = now
            self._series[0].observe(now - self._start)
        elif previous is not None:
            self._series[2].observe(now - previous)
        return now

    def finish(self, prompt_tokens: int, completion_tokens: int) -> None:
        """The answer is complete: its duration and the tokens it took."""
        _, total, _, prompt, completion = self._series
        total.observe(time.perf_counter() - self._start)
        if prompt_tokens or completion_tokens:
            prompt.inc(prompt_tokens)
            completion.inc(completion_tokens)

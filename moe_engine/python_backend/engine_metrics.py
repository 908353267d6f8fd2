"""Publishes the engine's state as the server's custom metrics (Triton's `pb_utils.MetricFamily`),
under the names, labels and value meanings of NVIDIA's TensorRT-LLM backend where it has them,
so the same dashboards and alerts read a CPU and a GPU deployment.

Gauges and the work counters are brought up to date every 100 ms on a thread; the per-expert
counters and the imbalance ratios every second (each metric update is a round trip to the
server, and a real model has thousands of experts).

Metric families come from a `family(name, description, kind)` callable, so the publishing runs
without Triton in tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch

from moe_engine.engine import Engine, EngineStats

logger = logging.getLogger(__name__)

MetricKind = Literal["gauge", "counter"]
FamilyFactory = Callable[[str, str, MetricKind], Any]
"""Returns an object whose `Metric(labels=...)` has `set(value)` (gauges) / `increment(delta)`."""

DEFAULT_EXPERT_MAX_SERIES = 2048
"""Default bound on `nv_moe_expert_tokens_total` series: every pair of the tiny model (4 × 8),
16 whole layers of a 128-expert model (of 48), 8 of a 256-expert one (of 58)."""

REQUEST_TYPES = ("active", "max", "scheduled", "context", "waiting", "peak_active")
KV_CACHE_BLOCK_TYPES = ("max", "free", "used", "tokens_per", "reused", "fraction")
INFLIGHT_BATCHER_METRICS = (
    "total_context_tokens",
    "generation_requests",
    "micro_batch_id",
    "paused_requests",
)
GENERAL_TYPES = ("iteration_counter", "timestamp")
STEP_KINDS = ("decode_steps", "decode_tokens", "prefill_tokens", "finished_requests")


class EngineMetrics:
    """TensorRT-LLM's request, KV-cache, in-flight-batcher and general gauges, the engine's work
    counters, and per-expert routing counters (bounded) and imbalance ratios for one engine."""

    def __init__(
        self,
        engine: Engine,
        family: FamilyFactory,
        *,
        model: str = "tensorrt_llm",
        version: str = "1",
        expert_max_series: int = DEFAULT_EXPERT_MAX_SERIES,
        period_s: float = 0.1,
        expert_period_s: float = 1.0,
        imbalance_window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if expert_max_series < 0:
            raise ValueError(f"expert_metrics_max_series must be >= 0, got {expert_max_series}")
        self.engine = engine
        self.period_s = period_s
        self.expert_period_s = expert_period_s
        self.imbalance_window_s = imbalance_window_s
        self.clock = clock
        base = {"model": model, "version": str(version)}
        # pb_utils refuses updates to a metric whose family was garbage-collected: keep them all.
        self.families: list[Any] = []

        def new_family(name: str, description: str, kind: MetricKind) -> Any:
            self.families.append(family(name, description, kind))
            return self.families[-1]

        def group(name: str, description: str, label: str, values: Iterable[str]) -> dict:
            metrics = new_family(name, description, "gauge")
            return {v: metrics.Metric(labels={**base, label: v}) for v in values}

        self.requests = group(
            "nv_trt_llm_request_metrics", "TRT LLM request metrics", "request_type", REQUEST_TYPES
        )
        self.kv_cache = group(
            "nv_trt_llm_kv_cache_block_metrics",
            "TRT LLM KV cache block metrics",
            "kv_cache_block_type",
            KV_CACHE_BLOCK_TYPES,
        )
        self.inflight_batcher = group(
            "nv_trt_llm_inflight_batcher_metrics",
            "TRT LLM inflight_batcher-specific metrics",
            "inflight_batcher_specific_metric",
            INFLIGHT_BATCHER_METRICS,
        )
        self.general = group(
            "nv_trt_llm_general_metrics", "General TRT LLM metrics", "general_type", GENERAL_TYPES
        )
        steps = new_family(
            "nv_moe_engine_steps_total", "Engine iterations and the tokens they produced", "counter"
        )
        self.steps = {k: steps.Metric(labels={**base, "kind": k}) for k in STEP_KINDS}

        self.moe_layers = list(engine.moe_layers)
        num_experts = engine.num_experts
        self.expert_layers = self.moe_layers[: expert_max_series // max(num_experts, 1)]
        _log_expert_series(self.moe_layers, self.expert_layers, num_experts, expert_max_series)
        experts = new_family(
            "nv_moe_expert_tokens_total",
            "Tokens routed to each expert of each MoE layer",
            "counter",
        )
        self.expert_tokens = {
            (layer, expert): experts.Metric(
                labels={**base, "layer": str(layer), "expert": str(expert)}
            )
            for layer in self.expert_layers
            for expert in range(num_experts)
        }
        imbalance = new_family(
            "nv_moe_expert_imbalance_ratio",
            "Max over mean tokens per expert of each MoE layer in the recent window (1 = balanced)",
            "gauge",
        )
        self.imbalance = {
            layer: imbalance.Metric(labels={**base, "layer": str(layer)})
            for layer in self.moe_layers
        }

        counts = engine.expert_counts_tensor()
        self._published_counts = torch.zeros_like(counts)
        self._window: deque[tuple[float, torch.Tensor]] = deque([(clock(), counts)])
        self._next_experts = clock()
        self.seen: dict[Any, float] = {}
        self._last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop publishing; returns once the thread has ended (or `timeout` passed)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("engine metrics thread did not stop within %s s", timeout)

    def publish(self) -> None:
        """Bring every metric up to the engine's current numbers (the expert families only when
        `expert_period_s` has passed since they were last brought up)."""
        self.publish_engine(self.engine.stats())
        now = self.clock()
        if now >= self._next_experts:
            self._next_experts = now + self.expert_period_s
            self.publish_experts(now)

    def publish_engine(self, stats: EngineStats) -> None:
        it = stats.last_iteration
        free = stats.kv_max_blocks - stats.kv_used_blocks
        fraction = stats.kv_used_blocks / stats.kv_max_blocks if stats.kv_max_blocks else 0.0
        values = {
            self.requests["active"]: stats.active,
            self.requests["max"]: stats.max_batch_size,
            self.requests["scheduled"]: it.scheduled,
            self.requests["context"]: it.context_requests,
            self.requests["waiting"]: stats.waiting,
            self.requests["peak_active"]: stats.peak_active,
            self.kv_cache["max"]: stats.kv_max_blocks,
            self.kv_cache["free"]: free,
            self.kv_cache["used"]: stats.kv_used_blocks,
            self.kv_cache["tokens_per"]: stats.kv_tokens_per_block,
            self.kv_cache["reused"]: 0,  # no prefix reuse: every request prefills its prompt
            self.kv_cache["fraction"]: fraction,
            self.inflight_batcher["total_context_tokens"]: it.context_tokens,
            self.inflight_batcher["generation_requests"]: it.generation_requests,
            self.inflight_batcher["micro_batch_id"]: 0,  # one micro-batch: no pipeline stages
            self.inflight_batcher["paused_requests"]: 0,  # a request keeps its slot to the end
            self.general["iteration_counter"]: stats.iterations_total,
            # TensorRT-LLM's timestamp: the latest iteration's, in microseconds since the epoch.
            self.general["timestamp"]: round(stats.last_iteration_time * 1e6),
        }
        for metric, value in values.items():
            self._set(metric, value)
        for kind, total in (
            ("decode_steps", stats.decode_steps_total),
            ("decode_tokens", stats.decode_tokens_total),
            ("prefill_tokens", stats.prefill_tokens_total),
            ("finished_requests", stats.finished_total),
        ):
            self._add(self.steps[kind], total)

    def publish_experts(self, now: float) -> None:
        counts = self.engine.expert_counts_tensor()
        if self.expert_layers:
            rows = (counts - self._published_counts)[self.expert_layers].tolist()
            for layer, row in zip(self.expert_layers, rows, strict=True):
                for expert, delta in enumerate(row):
                    if delta > 0:
                        self.expert_tokens[(layer, expert)].increment(delta)
                # Per layer, so a failed update never counts a layer's tokens twice.
                self._published_counts[layer] = counts[layer]

        window = self._window
        window.append((now, counts))
        # Keep the newest snapshot at least a window old as the base, and nothing older.
        while len(window) > 1 and window[1][0] <= now - self.imbalance_window_s:
            window.popleft()
        if self.moe_layers:
            recent = (counts - window[0][1])[self.moe_layers].double()
            mean, peak = recent.mean(dim=1), recent.max(dim=1).values
            ratios = torch.where(mean > 0, peak / mean.clamp(min=1e-12), torch.ones_like(mean))
            for layer, ratio in zip(self.moe_layers, ratios.tolist(), strict=True):
                self._set(self.imbalance[layer], ratio)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.publish()
            except Exception as exc:  # metrics must never take the model down
                message = f"{type(exc).__name__}: {exc}"
                if message != self._last_error:
                    logger.warning("engine metrics update failed: %s", message)
                    self._last_error = message

    def _set(self, metric: Any, value: float) -> None:
        if self.seen.get(metric) != value:
            metric.set(value)
            self.seen[metric] = value

    def _add(self, metric: Any, total: float) -> None:
        delta = total - self.seen.get(metric, 0)
        if delta > 0:
            metric.increment(delta)
            self.seen[metric] = total


def start_engine_metrics(
    engine: Engine, family: FamilyFactory, **options: Any
) -> EngineMetrics | None:
    """Create and start the publisher; on any failure log it and return None, so a server
    without metrics (or a metrics bug) still serves."""
    try:
        metrics = EngineMetrics(engine, family, **options)
        metrics.start()
    except ValueError:
        raise  # a bad setting is the operator's to fix, like any other bad model parameter
    except Exception as exc:
        logger.warning("engine metrics disabled: %s: %s", type(exc).__name__, exc)
        return None
    return metrics


def _log_expert_series(
    moe_layers: list[int], kept: list[int], num_experts: int, max_series: int
) -> None:
    if len(kept) == len(moe_layers):
        logger.info(
            "engine metrics: nv_moe_expert_tokens_total for all %d MoE layers x %d experts",
            len(moe_layers),
            num_experts,
        )
        return
    dropped = [layer for layer in moe_layers if layer not in kept]
    logger.warning(
        "engine metrics: nv_moe_expert_tokens_total bounded by expert_metrics_max_series=%d: "
        "layers %s kept (%d series), layers %s dropped (%d series); "
        "nv_moe_expert_imbalance_ratio covers every MoE layer",
        max_series,
        _ranges(kept) or "none",
        len(kept) * num_experts,
        _ranges(dropped),
        len(dropped) * num_experts,
    )


def _ranges(layers: list[int]) -> str:
    """`[0, 1, 2, 5, 7, 8]` -> `"0-2, 5, 7-8"`."""
    spans: list[list[int]] = []
    for layer in layers:
        if spans and layer == spans[-1][1] + 1:
            spans[-1][1] = layer
        else:
            spans.append([layer, layer])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)

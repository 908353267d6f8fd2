"""Publishes the engine's load gauges and work counters, and its per-expert routing counters,
as the server's custom metrics (Triton's `pb_utils.MetricFamily`), every 100 ms on a thread.

Metric families come from a `family(name, description, kind)` callable, so the publishing runs
without Triton in tests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Literal

from moe_engine.engine import Engine

logger = logging.getLogger(__name__)

MetricKind = Literal["gauge", "counter"]
FamilyFactory = Callable[[str, str, MetricKind], Any]
"""Returns an object whose `Metric(labels=...)` has `set(value)` (gauges) / `increment(delta)`."""


class EngineMetrics:
    """`nv_trt_llm_request_metrics` gauges, `nv_moe_engine_steps_total` and
    `nv_moe_expert_tokens_total` counters for one engine."""

    def __init__(
        self,
        engine: Engine,
        family: FamilyFactory,
        *,
        model: str = "tensorrt_llm",
        period_s: float = 0.1,
    ) -> None:
        self.engine = engine
        self.model = model
        self.period_s = period_s
        self.requests = family(
            "nv_trt_llm_request_metrics",
            "TensorRT-LLM-style request metrics of the CPU MoE engine",
            "gauge",
        )
        self.steps = family(
            "nv_moe_engine_steps_total", "Engine iterations and the tokens they produced", "counter"
        )
        self.experts = family(
            "nv_moe_expert_tokens_total",
            "Tokens routed to each expert of each MoE layer",
            "counter",
        )
        self.gauges = {
            kind: self.requests.Metric(labels={"request_type": kind, "model": model})
            for kind in ("active", "waiting", "max", "peak_active")
        }
        self.counters = {
            kind: self.steps.Metric(labels={"kind": kind, "model": model})
            for kind in ("decode_steps", "decode_tokens", "prefill_tokens", "finished_requests")
        }
        self.expert_metrics: dict[tuple[int, int], Any] = {}
        self.seen: dict[Any, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def publish(self) -> None:
        """Bring every metric up to the engine's current numbers."""
        stats = self.engine.stats()
        for kind, value in (
            ("active", stats.active),
            ("waiting", stats.waiting),
            ("max", stats.max_batch_size),
            ("peak_active", stats.peak_active),
        ):
            self._set(self.gauges[kind], value)
        for kind, value in (
            ("decode_steps", stats.decode_steps_total),
            ("decode_tokens", stats.decode_tokens_total),
            ("prefill_tokens", stats.prefill_tokens_total),
            ("finished_requests", stats.finished_total),
        ):
            self._add(self.counters[kind], value)
        counts = self.engine.expert_counts()
        for layer in self.engine.moe_layers:
            for expert, value in enumerate(counts[layer]):
                metric = self.expert_metrics.get((layer, expert))
                if metric is None:
                    labels = {"model": self.model, "layer": str(layer), "expert": str(expert)}
                    metric = self.experts.Metric(labels=labels)
                    self.expert_metrics[(layer, expert)] = metric
                self._add(metric, value)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.publish()
            except Exception as exc:  # metrics must never take the model down
                logger.warning("engine metrics update failed: %s", exc)

    def _set(self, metric: Any, value: float) -> None:
        if self.seen.get(metric) != value:
            metric.set(value)
            self.seen[metric] = value

    def _add(self, metric: Any, total: float) -> None:
        delta = total - self.seen.get(metric, 0)
        if delta > 0:
            metric.increment(delta)
            self.seen[metric] = total

"""The engine's custom metrics: gauges follow the engine, counters only ever grow by the delta."""

from __future__ import annotations

from typing import Any

from moe_engine.engine import EngineStats
from moe_engine.python_backend.engine_metrics import EngineMetrics


class Metric:
    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels
        self.value = 0.0
        self.calls: list[tuple[str, float]] = []

    def set(self, value: float) -> None:
        self.calls.append(("set", value))
        self.value = value

    def increment(self, delta: float) -> None:
        self.calls.append(("increment", delta))
        self.value += delta


class Family:
    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind = name, kind
        self.metrics: list[Metric] = []

    def Metric(self, labels: dict[str, str]) -> Metric:  # pb_utils spells it so
        metric = Metric(labels)
        self.metrics.append(metric)
        return metric

    def get(self, **labels: str) -> Metric:
        (metric,) = [m for m in self.metrics if labels.items() <= m.labels.items()]
        return metric


class Engine:
    moe_layers = (0, 2)

    def __init__(self) -> None:
        self.decoded = 0
        self.counts = [[0, 0], [0, 0], [0, 0]]

    def stats(self) -> EngineStats:
        return EngineStats(3, 1, 8, 4, self.decoded, self.decoded * 2, 10, 0)

    def expert_counts(self) -> list[list[int]]:
        return self.counts


def test_gauges_and_counters_follow_the_engine() -> None:
    families: dict[str, Family] = {}

    def family(name: str, description: str, kind: Any) -> Family:
        families[name] = Family(name, description, kind)
        return families[name]

    engine = Engine()
    metrics = EngineMetrics(engine, family)  # type: ignore[arg-type]
    engine.decoded, engine.counts[2] = 5, [7, 1]
    metrics.publish()
    engine.decoded, engine.counts[2] = 9, [8, 1]
    metrics.publish()
    metrics.publish()  # nothing changed: nothing sent
    requests, steps = families["nv_trt_llm_request_metrics"], families["nv_moe_engine_steps_total"]
    experts = families["nv_moe_expert_tokens_total"]
    assert requests.kind == "gauge" and steps.kind == "counter"
    assert requests.get(request_type="active").calls == [("set", 3)]
    decode_tokens = steps.get(kind="decode_tokens")
    assert decode_tokens.calls == [("increment", 10), ("increment", 8)]
    assert experts.get(layer="2", expert="0").value == 8
    assert {m.labels["layer"] for m in experts.metrics} == {"0", "2"}  # MoE layers only

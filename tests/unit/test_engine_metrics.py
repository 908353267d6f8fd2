"""The engine's custom metrics after real engine work: TensorRT-LLM's gauges mean what NVIDIA's
mean, counters only ever grow by the delta, per-expert series are bounded, the imbalance ratio
covers every MoE layer over a recent window, and a metrics failure never stops the engine."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moe_engine import Engine, EngineConfig, SamplingParams, StepOutput
from moe_engine.python_backend.engine_metrics import EngineMetrics, start_engine_metrics
from tests.unit.test_engine import PROMPT, Collector, model_dir, wait_until  # noqa: F401

SLOTS = 4
MAX_SEQ_LEN = 256  # 4 blocks of 64 positions per slot: 16 blocks in all


class FakeMetric:
    """Stands in for `pb_utils.Metric`: records what the publisher sends, and refuses updates
    once its family is garbage-collected, as pb_utils does."""

    def __init__(self, family: FakeFamily, labels: dict[str, str]) -> None:
        self.family = weakref.ref(family)
        self.labels = labels
        self.value = 0.0
        self.calls: list[tuple[str, float]] = []

    def set(self, value: float) -> None:
        self._check()
        self.calls.append(("set", value))
        self.value = value

    def increment(self, delta: float) -> None:
        self._check()
        self.calls.append(("increment", delta))
        self.value += delta

    def _check(self) -> None:
        if self.family() is None:
            raise RuntimeError("the corresponding 'MetricFamily' has been deleted")


class FakeFamily:
    """Stands in for `pb_utils.MetricFamily`."""

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind = name, kind
        self.metrics: list[FakeMetric] = []

    def Metric(self, labels: dict[str, str]) -> FakeMetric:  # pb_utils spells it so
        metric = FakeMetric(self, labels)
        self.metrics.append(metric)
        return metric

    def get(self, **labels: str) -> FakeMetric:
        (metric,) = [m for m in self.metrics if labels.items() <= m.labels.items()]
        return metric


class FakeRegistry:
    """The `family` factory the publisher is given. It finds families by name without keeping
    them alive: holding them is the publisher's job, as with pb_utils."""

    def __init__(self) -> None:
        self.families: weakref.WeakValueDictionary[str, FakeFamily] = weakref.WeakValueDictionary()

    def __call__(self, name: str, description: str, kind: Any) -> FakeFamily:
        family = FakeFamily(name, description, kind)
        self.families[name] = family
        return family

    def __getitem__(self, name: str) -> FakeFamily:
        return self.families[name]

    def value(self, name: str, **labels: str) -> float:
        return self[name].get(**labels).value

    def calls(self) -> int:
        return sum(len(m.calls) for family in self.families.values() for m in family.metrics)


class Gate:
    """An `on_output` that holds the engine thread on a request's `at`-th output until opened:
    the engine is frozen mid-generation, so its numbers can be read exactly."""

    def __init__(self, at: int) -> None:
        self.at, self.count = at, 0
        self.reached, self.opened, self.done = (
            threading.Event(),
            threading.Event(),
            threading.Event(),
        )

    def __call__(self, output: StepOutput) -> None:
        self.count += 1
        if self.count == self.at:
            self.reached.set()
            assert self.opened.wait(30)
        if output.finished:
            self.done.set()


@pytest.fixture
def engine(model_dir: Path) -> Iterator[Engine]:  # noqa: F811
    engine = Engine.from_pretrained(
        model_dir, EngineConfig(max_batch_size=SLOTS, max_seq_len=MAX_SEQ_LEN, num_threads=1)
    )
    yield engine
    engine.shutdown()


def greedy(tokens: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=tokens, temperature=0)


def publisher(engine: Engine, **options: Any) -> tuple[EngineMetrics, FakeRegistry]:
    registry = FakeRegistry()
    return EngineMetrics(engine, registry, version="3", **options), registry


def test_gauges_read_a_full_batch_and_its_queue(engine: Engine) -> None:
    metrics, m = publisher(engine)
    gate = Gate(at=3)  # request 0's third output: the second iteration's decode step
    engine.submit("r0", PROMPT, greedy(8), gate)
    others = [Collector() for _ in range(5)]
    for i, collector in enumerate(others, 1):
        engine.submit(f"r{i}", PROMPT, greedy(8), collector)
    engine.start()
    assert gate.reached.wait(30)
    metrics.publish()
    # Iteration 1 prefilled the 4 slots' requests and decoded them; 2 wait for a slot.
    requests = "nv_trt_llm_request_metrics"
    assert m.value(requests, request_type="active") == 4
    assert m.value(requests, request_type="max") == SLOTS
    assert m.value(requests, request_type="scheduled") == 4
    assert m.value(requests, request_type="context") == 4
    assert m.value(requests, request_type="waiting") == 2
    batcher = "nv_trt_llm_inflight_batcher_metrics"
    metric = "inflight_batcher_specific_metric"
    assert m.value(batcher, **{metric: "total_context_tokens"}) == 4 * len(PROMPT)
    assert m.value(batcher, **{metric: "generation_requests"}) == 4
    assert m.value(batcher, **{metric: "paused_requests"}) == 0
    assert m.value("nv_trt_llm_general_metrics", general_type="iteration_counter") == 1
    timestamp = m.value("nv_trt_llm_general_metrics", general_type="timestamp")
    assert abs(timestamp / 1e6 - time.time()) < 30
    # Each running request holds prompt + 2 positions: one block of 64.
    kv = "nv_trt_llm_kv_cache_block_metrics"
    blocks = {t: m.value(kv, kv_cache_block_type=t) for t in ("max", "used", "free", "tokens_per")}
    assert blocks == {"max": 16, "used": 4, "free": 12, "tokens_per": 64}
    assert m.value(kv, kv_cache_block_type="fraction") == 0.25
    assert m.value(kv, kv_cache_block_type="reused") == 0

    gate.opened.set()
    for collector in others:
        collector.wait()
    wait_until(lambda: engine.stats().last_iteration.scheduled == 0)  # the engine went idle
    metrics.publish()
    for kind in ("active", "scheduled", "context", "waiting"):
        assert m.value(requests, request_type=kind) == 0, kind
    assert m.value(kv, kv_cache_block_type="used") == 0
    assert m.value(kv, kv_cache_block_type="fraction") == 0
    # 8 tokens: a prefill and 7 decode steps per request, the 2 late ones a batch behind.
    assert m.value("nv_trt_llm_general_metrics", general_type="iteration_counter") == 14
    assert m.value("nv_trt_llm_general_metrics", general_type="timestamp") >= timestamp


def test_kv_blocks_count_the_positions_a_request_holds(engine: Engine) -> None:
    metrics, m = publisher(engine)
    gate = Gate(at=60)  # prompt 8 + 59 decoded positions = 67: two blocks of 64
    engine.submit("long", PROMPT, greedy(100), gate)
    engine.start()
    assert gate.reached.wait(30)
    metrics.publish()
    kv = "nv_trt_llm_kv_cache_block_metrics"
    assert m.value(kv, kv_cache_block_type="used") == 2
    assert m.value(kv, kv_cache_block_type="fraction") == 2 / 16
    requests = "nv_trt_llm_request_metrics"
    assert m.value(requests, request_type="scheduled") == 1
    assert m.value(requests, request_type="context") == 0  # prefilled 58 iterations ago
    steps = "nv_moe_engine_steps_total"
    assert m.value(steps, kind="decode_steps") == 59
    assert m.value(steps, kind="prefill_tokens") == len(PROMPT)
    gate.opened.set()
    assert gate.done.wait(30)


def test_every_series_carries_model_and_version(engine: Engine) -> None:
    _alive, m = publisher(engine)  # the publisher holds its families
    for family in m.families.values():
        for metric in family.metrics:
            assert metric.labels["model"] == "tensorrt_llm", family.name
            assert metric.labels["version"] == "3", family.name
    kinds = {name: family.kind for name, family in m.families.items()}
    assert kinds == {
        "nv_trt_llm_request_metrics": "gauge",
        "nv_trt_llm_kv_cache_block_metrics": "gauge",
        "nv_trt_llm_inflight_batcher_metrics": "gauge",
        "nv_trt_llm_general_metrics": "gauge",
        "nv_moe_engine_steps_total": "counter",
        "nv_moe_expert_tokens_total": "counter",
        "nv_moe_expert_imbalance_ratio": "gauge",
    }


def test_counters_grow_by_the_delta_and_nothing_is_sent_when_nothing_changed(
    engine: Engine,
) -> None:
    metrics, m = publisher(engine, expert_period_s=0)
    engine.start()
    first = Collector()
    engine.submit("a", PROMPT, greedy(5), first)
    first.wait()
    metrics.publish()
    second = Collector()
    engine.submit("b", PROMPT, greedy(3), second)
    second.wait()
    wait_until(lambda: engine.stats().last_iteration.scheduled == 0)
    metrics.publish()
    calls = m.calls()
    metrics.publish()
    assert m.calls() == calls  # nothing changed: nothing sent
    decode_tokens = m["nv_moe_engine_steps_total"].get(kind="decode_tokens")
    assert decode_tokens.calls == [("increment", 4), ("increment", 2)]
    experts = m["nv_moe_expert_tokens_total"]
    assert all(call[0] == "increment" and call[1] > 0 for e in experts.metrics for call in e.calls)
    counts = engine.expert_counts()
    for layer in (0, 2):
        published = [m.value(experts.name, layer=str(layer), expert=str(e)) for e in range(4)]
        assert published == counts[layer]
    assert {e.labels["layer"] for e in experts.metrics} == {"0", "2"}  # MoE layers only


def test_expert_series_are_bounded_to_whole_first_layers(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        metrics, m = publisher(engine, expert_max_series=7)  # 2 MoE layers of 4 experts
    experts = m["nv_moe_expert_tokens_total"]
    assert {(e.labels["layer"], e.labels["expert"]) for e in experts.metrics} == {
        ("0", str(e)) for e in range(4)
    }
    assert "layers 0 kept (4 series), layers 2 dropped (4 series)" in caplog.text
    engine.start()
    done = Collector()
    engine.submit("a", PROMPT, greedy(4), done)
    done.wait()
    metrics.publish()
    assert sum(e.value for e in experts.metrics) == sum(engine.expert_counts()[0])
    # Imbalance is exported for every MoE layer whatever the bound.
    imbalance = m["nv_moe_expert_imbalance_ratio"]
    assert {i.labels["layer"] for i in imbalance.metrics} == {"0", "2"}
    assert all(i.value >= 1 for i in imbalance.metrics)


def test_a_zero_bound_exports_no_expert_series(engine: Engine) -> None:
    _alive, m = publisher(engine, expert_max_series=0)
    assert m["nv_moe_expert_tokens_total"].metrics == []
    assert len(m["nv_moe_expert_imbalance_ratio"].metrics) == 2


def test_imbalance_is_max_over_mean_over_the_recent_window(engine: Engine) -> None:
    now = [0.0]
    metrics, m = publisher(engine, imbalance_window_s=60, clock=lambda: now[0])
    engine.start()

    def generate(prompt: list[int]) -> list[list[int]]:
        done = Collector()
        engine.submit(f"r{time.monotonic_ns()}", prompt, greedy(6), done)
        done.wait()
        return engine.expert_counts()

    def ratios() -> list[float]:
        return [m.value("nv_moe_expert_imbalance_ratio", layer=str(la)) for la in (0, 2)]

    def expected(rows: list[list[int]]) -> list[float]:
        return [max(row) / (sum(row) / len(row)) for row in (rows[0], rows[2])]

    first = generate(PROMPT)
    now[0] = 1.0
    metrics.publish_experts(now[0])
    assert ratios() == pytest.approx(expected(first))
    assert all(r >= 1 for r in ratios())

    second = generate([5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5])
    now[0] = 70.0  # the first request's tokens are now older than the window
    metrics.publish_experts(now[0])
    recent = [
        [b - a for a, b in zip(ra, rb, strict=True)] for ra, rb in zip(first, second, strict=True)
    ]
    assert ratios() == pytest.approx(expected(recent))
    assert expected(recent) != pytest.approx(expected(second))  # the window did leave some out

    now[0] = 200.0  # nothing routed for a whole window
    metrics.publish_experts(now[0])
    assert ratios() == [1.0, 1.0]


def test_a_failing_update_is_logged_once_and_publishing_goes_on(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    registry = FakeRegistry()
    metrics = EngineMetrics(engine, registry, period_s=0.01)
    active = registry["nv_trt_llm_request_metrics"].get(request_type="max")
    failures = [RuntimeError("server busy")] * 3

    def flaky_set(value: float) -> None:
        if failures:
            raise failures.pop()
        FakeMetric.set(active, value)

    active.set = flaky_set  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        metrics.start()
        wait_until(lambda: active.value == SLOTS)
        metrics.stop()
    assert caplog.text.count("engine metrics update failed: RuntimeError: server busy") == 1


def test_stop_ends_publishing(engine: Engine) -> None:
    metrics, m = publisher(engine, period_s=0.01)
    metrics.start()
    wait_until(lambda: m.value("nv_trt_llm_request_metrics", request_type="max") == SLOTS)
    metrics.stop()
    calls = m.calls()
    engine.start()
    done = Collector()
    engine.submit("after", PROMPT, greedy(4), done)
    done.wait()
    time.sleep(0.1)
    assert m.calls() == calls


def test_metrics_that_cannot_be_created_leave_the_engine_serving(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    def no_metrics(name: str, description: str, kind: Any) -> Any:
        raise RuntimeError("metrics are disabled on this server")

    with caplog.at_level(logging.WARNING):
        assert start_engine_metrics(engine, no_metrics) is None
    assert "engine metrics disabled: RuntimeError: metrics are disabled" in caplog.text
    engine.start()
    done = Collector()
    engine.submit("served", PROMPT, greedy(2), done)
    assert done.wait().final.finish_reason == "length"


def test_a_negative_bound_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="expert_metrics_max_series"):
        start_engine_metrics(engine, FakeRegistry(), expert_max_series=-1)

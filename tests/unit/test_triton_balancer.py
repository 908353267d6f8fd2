"""Choosing among eligible upstreams: in turn, fewest in flight, engine load, affinity with a
bound on load."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from gateway.triton.balancer import Balancer, EngineLoad
from gateway.triton.engine_load import metrics_url, parse, with_step_time


@dataclass(eq=False)
class Up:
    url: str
    in_flight: int = 0
    engine: EngineLoad | None = None


def test_round_robin_takes_each_in_turn() -> None:
    ups = [Up("a"), Up("b"), Up("c")]
    balancer = Balancer("round_robin")
    assert Counter(balancer.pick(ups).url for _ in range(9)) == {"a": 3, "b": 3, "c": 3}


def test_least_outstanding_takes_the_fewest_in_flight_and_spreads_ties() -> None:
    ups = [Up("a", 5), Up("b", 1), Up("c", 1)]
    balancer = Balancer("least_outstanding")
    picks = Counter(balancer.pick(ups).url for _ in range(10))
    assert picks["a"] == 0 and picks["b"] == picks["c"] == 5


def test_engine_aware_prefers_the_shorter_queue_and_emptier_kv_cache() -> None:
    busy = Up("busy", engine=EngineLoad(active=8, waiting=6, max_batch=8, kv_fraction=0.9))
    idle = Up("idle", engine=EngineLoad(active=1, waiting=0, max_batch=8, kv_fraction=0.1))
    balancer = Balancer("engine_aware")
    assert {balancer.pick([busy, idle]).url for _ in range(4)} == {"idle"}


def test_engine_aware_counts_what_was_sent_since_the_reading() -> None:
    reading = EngineLoad(active=0, waiting=0, max_batch=4, in_flight_then=0)
    a, b = Up("a", 8, reading), Up("b", 0, reading)
    assert Balancer("engine_aware").pick([a, b]).url == "b"


def test_affinity_keeps_a_key_on_one_upstream_until_it_is_overloaded() -> None:
    ups = [Up("a"), Up("b"), Up("c")]
    balancer = Balancer("least_outstanding", load_factor=1.25)
    home = balancer.pick(ups, key="conversation-1")
    assert {balancer.pick(ups, key="conversation-1").url for _ in range(5)} == {home.url}
    home.in_flight = 10  # far over 1.25 × the mean
    assert balancer.pick(ups, key="conversation-1") is not home
    keys = Counter(balancer.pick([Up("a"), Up("b"), Up("c")], key=f"k{i}").url for i in range(300))
    assert min(keys.values()) > 50  # the ring spreads keys over every upstream


def test_engine_gauges_are_read_from_a_triton_exposition() -> None:
    text = "\n".join([
        '# TYPE nv_trt_llm_request_metrics gauge',
        'nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 3',
        'nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="waiting",version="1"} 2',
        'nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 8',
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="m"} 0.25',
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="m",version="1"} 64',
        'nv_inference_count{model="tensorrt_llm",version="1"} 99',
    ])  # fmt: skip
    load = parse(text, in_flight=4)
    assert (load.active, load.waiting, load.max_batch, load.kv_fraction) == (3, 2, 8, 0.25)
    assert load.in_flight_then == 4
    assert metrics_url("10.0.0.5:8001", 8002, {}) == "http://10.0.0.5:8002/metrics"
    assert metrics_url("a:1", 8002, {"a:1": "http://x/m"}) == "http://x/m"


def test_engine_aware_avoids_a_replica_whose_iterations_are_slow() -> None:
    # The slow replica runs one request and has an empty queue: by its gauges alone it looks
    # the less loaded; its measured time per iteration gives it away.
    fast = Up("fast", 7, EngineLoad(active=7, max_batch=8, in_flight_then=7, step_s=0.005))
    slow = Up("slow", 1, EngineLoad(active=1, max_batch=8, in_flight_then=1, step_s=0.025))
    assert Balancer("engine_aware").pick([fast, slow]).url == "fast"
    fast.in_flight = 40  # until the fast one's queue makes its tokens slower still
    fast.engine = EngineLoad(active=8, waiting=32, max_batch=8, in_flight_then=40, step_s=0.005)
    assert Balancer("engine_aware").pick([fast, slow]).url == "slow"


def test_a_replica_not_measured_yet_counts_as_fast_as_the_fastest() -> None:
    # Idle since it started, so no time per iteration yet: it still gets its share.
    known = Up("known", 0, EngineLoad(max_batch=8, step_s=0.01))
    new = Up("new", 0, EngineLoad(max_batch=8))
    balancer = Balancer("engine_aware")
    assert Counter(balancer.pick([known, new]).url for _ in range(4)) == {"known": 2, "new": 2}


def test_the_time_per_iteration_is_measured_while_the_engine_has_work() -> None:
    first = EngineLoad(active=2, iterations=100)
    second = with_step_time(EngineLoad(active=2, iterations=200), first, 1.0)
    assert second.step_s == pytest.approx(0.01)
    third = with_step_time(EngineLoad(active=2, iterations=250), second, 1.0)  # 20 ms now
    assert second.step_s < third.step_s < 0.02  # averaged, moving towards it
    idle = with_step_time(EngineLoad(active=0, iterations=250), EngineLoad(iterations=250), 1.0)
    assert idle.step_s is None  # nothing ran: nothing learnt

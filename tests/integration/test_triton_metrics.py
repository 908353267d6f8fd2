"""The engine's custom metrics on the real Triton's metrics port, under NVIDIA's TensorRT-LLM
names and labels, read while a long generation runs and after it has been stopped."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcclient

from gateway.local.repository import fill_repository
from gateway.local.triton import TritonProcess
from tests.integration.test_triton import _tensor, bls
from tests.support import free_port, wait_for

MODEL = {"model": "tensorrt_llm", "version": "1"}
SLOTS = 8  # the CPU profile's engine_max_batch_size
MAX_BLOCKS = SLOTS * 2048 // 64  # the tiny model's 2,048 positions per slot, in blocks of 64
LAYERS, EXPERTS, TOP_K = 4, 8, 2  # the tiny model
NVIDIA_FAMILIES = {
    "nv_trt_llm_request_metrics": (
        "request_type",
        {"active", "max", "scheduled", "context", "waiting"},
    ),
    "nv_trt_llm_kv_cache_block_metrics": (
        "kv_cache_block_type",
        {"max", "free", "used", "tokens_per", "fraction", "reused"},
    ),
    "nv_trt_llm_inflight_batcher_metrics": (
        "inflight_batcher_specific_metric",
        {"total_context_tokens", "generation_requests", "paused_requests", "micro_batch_id"},
    ),
    "nv_trt_llm_general_metrics": ("general_type", {"iteration_counter", "timestamp"}),
    "nv_moe_engine_steps_total": (
        "kind",
        {"decode_steps", "decode_tokens", "prefill_tokens", "finished_requests"},
    ),
}
TRITON_FAMILIES = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_request_duration_us",
    "nv_inference_exec_count",
    "nv_inference_count",
    "nv_inference_pending_request_count",
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(triton: TritonProcess) -> Samples:
    """Every sample on the metrics port, keyed by name and labels."""
    with urllib.request.urlopen(triton.metrics_url, timeout=5) as response:
        text = response.read().decode()
    samples: Samples = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})?\s+(\S+)$", line)
        if match and not line.startswith("#"):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset({**MODEL, **labels}.items()))]


def gauge(samples: Samples, family: str, label_value: str) -> float:
    return value(samples, family, **{NVIDIA_FAMILIES[family][0]: label_value})


async def generate_and_scrape(triton: TritonProcess) -> tuple[Samples, Samples]:
    """Start a 1,500-token generation on `tensorrt_llm`, scrape twice while it runs (KV cache in
    use, then the iteration counter moved on), and cancel it."""
    inputs = [
        _tensor("input_ids", list(range(1, 41)), np.int32),
        _tensor("input_lengths", [40], np.int32),
        _tensor("request_output_len", [1500], np.int32),
        _tensor("streaming", [True], np.bool_),
        _tensor("ignore_eos", [True], np.bool_),
    ]

    async def requests():
        yield {"model_name": "tensorrt_llm", "inputs": inputs, "request_id": "metrics"}

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        stream = client.stream_infer(requests())
        scrapes: list[Samples] = []

        def running() -> bool:
            # A scrape can fall between two updates of one publish: wait for all of them.
            samples = scrape(triton)
            if min(
                gauge(samples, "nv_trt_llm_request_metrics", "active"),
                gauge(samples, "nv_trt_llm_request_metrics", "scheduled"),
                gauge(samples, "nv_trt_llm_kv_cache_block_metrics", "used"),
                gauge(samples, "nv_trt_llm_inflight_batcher_metrics", "generation_requests"),
            ):
                scrapes.append(samples)
            return bool(scrapes)

        def moved_on() -> bool:
            samples = scrape(triton)
            counter = "nv_trt_llm_general_metrics", "iteration_counter"
            if gauge(samples, *counter) > gauge(scrapes[0], *counter):
                scrapes.append(samples)
            return len(scrapes) == 2

        tokens = 0
        async for result, error in stream:
            assert error is None, error
            tokens += result.as_numpy("output_ids").size
            if tokens >= 3:
                assert await asyncio.to_thread(wait_for, running, 10, 0.05)
                assert await asyncio.to_thread(wait_for, moved_on, 10, 0.05)
                stream.cancel()
                break
        assert tokens < 1500, "the generation ended before the metrics were read"
        return scrapes[0], scrapes[1]
    finally:
        await client.close()


def test_engine_metrics_have_nvidia_names_and_sane_values(triton: TritonProcess) -> None:
    during, later = asyncio.run(asyncio.wait_for(generate_and_scrape(triton), 60))

    for family, (label, values) in NVIDIA_FAMILIES.items():
        for v in values:
            assert (family, frozenset({**MODEL, label: v}.items())) in during, (family, v)
    for family in TRITON_FAMILIES:
        assert any(name == family for name, _ in during), family

    requests = "nv_trt_llm_request_metrics"
    assert gauge(during, requests, "max") == SLOTS
    assert gauge(during, requests, "active") >= 1
    assert gauge(during, requests, "scheduled") >= 1
    kv = "nv_trt_llm_kv_cache_block_metrics"
    assert gauge(during, kv, "max") == MAX_BLOCKS
    assert gauge(during, kv, "tokens_per") == 64
    assert gauge(during, kv, "used") + gauge(during, kv, "free") == MAX_BLOCKS
    assert 0 < gauge(during, kv, "fraction") <= 1
    assert gauge(during, kv, "fraction") == gauge(during, kv, "used") / MAX_BLOCKS
    batcher = "nv_trt_llm_inflight_batcher_metrics"
    assert gauge(during, batcher, "generation_requests") >= 1
    assert gauge(during, batcher, "paused_requests") == 0
    general = "nv_trt_llm_general_metrics"
    assert gauge(later, general, "iteration_counter") > gauge(during, general, "iteration_counter")
    assert abs(gauge(later, general, "timestamp") / 1e6 - time.time()) < 60
    steps = "nv_moe_engine_steps_total"
    assert 0 < gauge(later, steps, "decode_steps") <= gauge(later, steps, "decode_tokens")
    assert gauge(later, steps, "prefill_tokens") >= 40

    def idle() -> bool:
        samples = scrape(triton)
        return gauge(samples, requests, "active") == gauge(samples, requests, "scheduled") == 0

    assert wait_for(idle, timeout=10)
    samples = scrape(triton)
    assert gauge(samples, kv, "used") == 0 and gauge(samples, kv, "fraction") == 0
    assert gauge(samples, steps, "finished_requests") > gauge(during, steps, "finished_requests")

    # Expert families follow every second. The tiny model is far under the default bound:
    # every layer x expert series is there, and they add up to top-2 per token and layer.
    def routed(samples: Samples) -> list[float]:
        return [
            value(samples, "nv_moe_expert_tokens_total", layer=str(la), expert=str(e))
            for la in range(LAYERS)
            for e in range(EXPERTS)
        ]

    published: list[Samples] = []

    def caught_up() -> bool:
        # A publish can land mid-step (some layers counted, not yet the next): wait for one
        # after the engine went idle, where each layer has seen the same tokens.
        published.append(scrape(triton))
        per_layer = np.asarray(routed(published[-1])).reshape(LAYERS, EXPERTS).sum(axis=1)
        return sum(per_layer) > sum(routed(during)) and len(set(per_layer)) == 1

    assert wait_for(caught_up, timeout=5)
    samples = published[-1]
    assert sum(routed(samples)) % (LAYERS * TOP_K) == 0
    for layer in range(LAYERS):
        ratio = value(samples, "nv_moe_expert_imbalance_ratio", layer=str(layer))
        assert 1 <= ratio <= EXPERTS / TOP_K, (layer, ratio)


def test_expert_series_bound_is_a_repository_setting(tiny_model_dir: Path, tmp_path: Path) -> None:
    # `localmoe build repository --set expert_metrics_max_series=8`: one whole layer of 8 experts.
    repository = fill_repository(
        tmp_path / "repo", model_dir=tiny_model_dir, overrides={"expert_metrics_max_series": "8"}
    )
    server = TritonProcess(
        repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    server.start()
    try:
        bls(server, max_tokens=4, temperature=0.0)

        def layer_zero_counted() -> bool:
            samples = scrape(server)
            return any(
                name == "nv_moe_expert_tokens_total" and value > 0
                for (name, _), value in samples.items()
            )

        assert wait_for(layer_zero_counted, timeout=5)
        samples = scrape(server)
        experts = [dict(labels) for name, labels in samples if name == "nv_moe_expert_tokens_total"]
        series = {(labels["layer"], labels["expert"]) for labels in experts}
        assert series == {("0", str(e)) for e in range(EXPERTS)}
        ratios = [value(samples, "nv_moe_expert_imbalance_ratio", layer=str(la)) for la in range(4)]
        assert all(r >= 1 for r in ratios), ratios
        log = "\n".join(server.log_tail)
        assert "layers 0 kept (8 series), layers 1-3 dropped (24 series)" in log
    finally:
        server.stop()

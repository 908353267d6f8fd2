"""bench/gpu_check.py in its CPU smoke mode (tiny shapes, seconds), so the script a GPU machine
runs is exercised here: every dispatch variant decodes, the ceilings are positive, the CPU and
the device agree, and the byte model matches the published parameter counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gpu_check
from moe_engine.config import ModelConfig


def test_the_smoke_run_measures_every_variant_and_agrees(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--device", "cpu", "--smoke", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["agreement"]["agree"]
    assert set(results["models"]) == {"mixtral-toy", "qwen3-moe-toy"}
    for model in results["models"].values():
        measured = [r for r in model["rows"] if "tokens_per_s" in r]
        assert {r["variant"] for r in measured} == set(gpu_check.VARIANTS)
        assert all(r["tokens_per_s"] > 0 and r["ceiling_tokens_per_s"] > 0 for r in measured)
        assert model["layers"] == model["full_layers"]


@pytest.mark.parametrize(
    ("name", "total", "active"), [("Mixtral-8x7B", 46.7, 12.7), ("Qwen3-30B-A3B", 30.5, 3.0)]
)
def test_the_byte_model_counts_the_published_parameters(
    name: str, total: float, active: float
) -> None:
    config = ModelConfig.from_dict(gpu_check.shapes(False)[name])
    s = gpu_check.sizes(config, 1)
    assert s.total / 1e9 == pytest.approx(total, abs=0.1)
    per_token = s.dense + config.num_layers * config.num_experts_per_tok * s.expert
    assert per_token / 1e9 == pytest.approx(active, abs=0.1)


def test_a_batch_of_256_decodes_with_more_rows_than_cached_positions() -> None:
    # 256 sequences x 2 key/value heads outnumber the 264 positions each slot caches.
    import torch

    config = ModelConfig.from_dict(gpu_check.shapes(True)["mixtral-toy"])
    model = gpu_check.random_model(
        config, torch.device("cpu"), torch.float32, gpu_check.CONTEXT + 8
    )
    assert gpu_check.time_decode(model, 256, False, 1, torch.device("cpu")) > 0

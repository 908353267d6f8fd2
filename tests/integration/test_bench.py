"""The benchmark harness (`python -m bench`) end to end on its quick setting,
against the real processes: Triton, the gateway, and the LiteLLM proxy and wrk where installed.

These check that the harness runs and reports plausible numbers, not that the goals are met.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.profile import py_spy_binary, summarize_collapsed
from bench.wrk import lua_script
from tests.support import processes_mentioning

REPO_ROOT = Path(__file__).resolve().parents[2]

# Minutes on 2 cores: the whole stack, started twice (`make test-quick` leaves it out).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One quick benchmark with profiling; its results folder."""
    out = tmp_path_factory.mktemp("bench") / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--profile", "--out", str(out),
         "--model-dir", str(tiny_model_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_quick_run_writes_json_markdown_and_charts(quick_run: Path) -> None:
    data = json.loads((quick_run / "results.json").read_text())
    assert {"meta", "notes", "goals", "summary", "measurements", "profiles"} <= set(data)
    markdown = (quick_run / "results.md").read_text()
    assert "## Goals (issue 5)" in markdown and "## 1. Gateway cost" in markdown
    charts = sorted(p.name for p in quick_run.glob("*.png"))
    assert {"gateway_cost_rps.png", "streaming.png", "engine.png"} <= set(charts)
    assert all((quick_run / name).read_bytes().startswith(b"\x89PNG") for name in charts)
    for name in charts:
        assert f"]({name})" in markdown


def test_every_scenario_measures_positive_numbers(quick_run: Path) -> None:
    data = json.loads((quick_run / "results.json").read_text())
    rows = data["summary"]
    assert {r["scenario"] for r in rows} >= {"gateway_cost", "real_route", "streaming", "engine"}
    targets = {r["target"] for r in rows if r["scenario"] == "gateway_cost"}
    assert {"gateway", "triton-grpc", "triton-http"} <= targets
    for row in rows:
        assert row["errors"] == 0, row
        if row["stream"]:
            assert row["tokens_per_s"] > 0 and row["ttft_p50_ms"] > 0 and row["itl_p50_ms"] > 0
        else:
            assert row["rps"] > 0 and 0 < row["latency_p50_ms"] <= row["latency_p99_ms"]
        if row["scenario"] != "cache":  # cache hits never reach Triton
            assert row["cpu_ms_per_request"]["triton"] > 0
    gateway = next(r for r in rows if r["scenario"] == "gateway_cost" and r["target"] == "gateway")
    assert gateway["cpu_ms_per_request"]["gateway"] > 0


def test_peer_is_the_litellm_proxy_with_its_version_and_config(quick_run: Path) -> None:
    data = json.loads((quick_run / "results.json").read_text())
    if not data["meta"]["litellm"]:
        pytest.skip("LiteLLM is not installed here")
    assert data["meta"]["litellm"]["version"]
    assert data["meta"]["litellm"]["config"]["model_list"][0]["litellm_params"]["model"]
    peer = [r for r in data["summary"] if r["target"] == "litellm"]
    assert peer and all(r["rps"] > 0 or r["tokens_per_s"] > 0 for r in peer)


def test_goals_are_reported_each_with_a_verdict(quick_run: Path) -> None:
    goals = json.loads((quick_run / "results.json").read_text())["goals"]
    assert len(goals) >= 10
    measured = [g for g in goals if g["met"] is not None]
    assert measured and all(isinstance(g["value"], int | float) for g in measured)


def test_gateway_profile_names_frames(quick_run: Path) -> None:
    if py_spy_binary() is None:
        pytest.skip("py-spy is not installed here")
    profiles = json.loads((quick_run / "results.json").read_text())["profiles"]
    assert profiles and all("error" not in p for p in profiles), profiles
    assert all(p["samples"] > 0 and p["self_pct"] for p in profiles)
    assert (quick_run / profiles[0]["stacks"]).stat().st_size > 0


def test_no_process_outlives_the_run(quick_run: Path) -> None:
    assert processes_mentioning(quick_run) == []


def test_sigterm_stops_every_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    with (tmp_path / "stderr").open("w") as stderr:
        bench = subprocess.Popen(
            [sys.executable, "-m", "bench", "--quick", "--no-litellm", "--echo-only",
             "--scenarios", "gateway_cost", "--out", str(out), "--model-dir", str(tiny_model_dir)],
            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not (out / "work" / "loadgen.log").exists() and time.monotonic() < deadline:
            assert bench.poll() is None, (tmp_path / "stderr").read_text()
            time.sleep(0.2)
        assert processes_mentioning(out), "the harness started nothing"
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=60) == 130
    assert processes_mentioning(out) == []


def test_wrk_script_sends_the_body_verbatim() -> None:
    script = lua_script('{"a": "x\\"y\\n", "n": "__COUNTER__"}', {"Authorization": "Bearer t"}, 7)
    assert 'local body = "{\\"a\\": \\"x\\\\\\"y\\\\n\\", \\"n\\": \\"__COUNTER__\\"}"' in script
    assert 'wrk.headers["Authorization"] = "Bearer t"' in script
    assert "tostring(7 + i)" in script


def test_profile_summary_attributes_samples_to_libraries() -> None:
    stacks = (
        "process 1;run (uvicorn/server.py:10);send (gateway/api/sse.py:5) 3\n"
        "process 1;run (uvicorn/server.py:10);dumps (json/encoder.py:1) 1\n"
    )
    summary = summarize_collapsed(stacks)
    assert summary["samples"] == 4
    assert summary["library_pct"][0] == ["gateway (ours)", 75.0]
    assert summary["inclusive_pct"][0] == ["run (uvicorn/server.py)", 100.0]

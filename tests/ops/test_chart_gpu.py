"""The chart's GPU values (helm/localmoe/values-gpu.yaml) and its two GPU launches: one
tritonserver per tensor-parallel rank under MPI (the engine path, NVIDIA's
launch_triton_server.py --world_size N), or one under trtllm-llmapi-launch whose LLM API starts
its own workers (the llmapi model, --world_size 1 --trtllm_llmapi_launch)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import yaml

from tests.ops.test_chart import CHART, KUBE_VERSIONS, RELEASE, _render, container, one
from tests.support import tool

GPU_VALUES = CHART / "values-gpu.yaml"


def _triton(docs: list[dict]) -> dict:
    return container(one(docs, "Deployment", "-triton"), "triton")


def test_gpu_values_render_valid_objects() -> None:
    docs = list(_render((str(GPU_VALUES),)))
    for doc in docs:
        if doc["kind"] in {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject"}:
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_gpu_values_ask_for_the_tensor_parallel_gpus_and_start_a_rank_each() -> None:
    values = yaml.safe_load(GPU_VALUES.read_text())
    tp = values["triton"]["gpu"]["tensorParallel"]
    triton = _triton(list(_render((str(GPU_VALUES),))))
    assert triton["image"] == "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3"
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == tp
    command = triton["command"]
    assert command[:2] == ["mpirun", "--allow-run-as-root"]
    assert command.count("tritonserver") == tp
    repository = values["triton"]["gpu"]["repositoryPath"]
    assert command.count(f"--model-repository={repository}") == tp
    assert "--disable-auto-complete-config" in command


def test_the_llmapi_launch_is_one_tritonserver_under_trtllm_llmapi_launch(tmp_path: Path) -> None:
    command = [tool("helm"), "template", RELEASE, str(CHART), "-f", str(GPU_VALUES)]
    command += ["--set", "triton.gpu.launcher=llmapi", "--set", "triton.gpu.tensorParallel=4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    triton = _triton(docs)
    assert triton["command"][:6] == [
        "mpirun", "--allow-run-as-root", "-n", "1", "trtllm-llmapi-launch", "tritonserver"
    ]  # fmt: skip
    assert triton["command"].count("tritonserver") == 1
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 4

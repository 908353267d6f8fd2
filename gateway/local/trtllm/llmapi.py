"""`--profile trtllm-llmapi`: NVIDIA's `llmapi` Triton model over TensorRT-LLM's LLM API.

Nothing is compiled: the LLM API loads the Hugging Face checkpoint with the PyTorch backend when
Triton loads the model. The repository holds one model, `tensorrt_llm`: LocalMoE's filled
`config.pbtxt` (NVIDIA's tensors), a `model.yaml` of LLM arguments for this checkpoint and split,
and NVIDIA's `model.py` + `helpers.py` copied from a TensorRT-LLM checkout (they are NVIDIA's
code: LocalMoE does not ship them).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.local import paths
from gateway.local.trtllm import fill
from gateway.local.trtllm.families import Checkpoint
from gateway.local.trtllm.parallel import Parallelism

MODEL_NAME = "tensorrt_llm"
NVIDIA_FILES = ("model.py", "helpers.py")
NVIDIA_MODEL_DIR = Path("triton_backend/all_models/llmapi/tensorrt_llm/1")


@dataclass(frozen=True)
class LlmapiOptions:
    """LLM arguments that matter for serving; the rest keep the LLM API's defaults."""

    max_batch_size: int = 64
    max_seq_len: int | None = None  # default: the model's positions, at most 8192
    max_num_tokens: int = 8192
    kv_cache_free_gpu_mem_fraction: float = 0.9
    kv_cache_reuse: bool = True
    max_kv_cache_tokens: int | None = None
    trtllm_src: Path = Path("TensorRT-LLM")
    """A TensorRT-LLM checkout whose triton_backend/all_models/llmapi model is copied."""


@dataclass
class LlmapiPlan:
    model_yaml: dict[str, Any]
    values: dict[str, str]
    multimodal: bool
    nvidia_model_dir: Path
    launch: tuple[str, ...]
    notes: list[str] = field(default_factory=list)


def plan(
    checkpoint: Checkpoint, split: Parallelism, options: LlmapiOptions, out_dir: Path
) -> LlmapiPlan:
    """model.yaml and the template values for this checkpoint and split."""
    model_dir = checkpoint.path.resolve()
    seq = options.max_seq_len or min(checkpoint.max_positions, 8192)
    multimodal = checkpoint.vision == "hf"
    notes = []
    if checkpoint.vision == "folder":
        notes.append(
            "the vision/ tower is LocalMoE's own, which the LLM API cannot load: this model "
            "serves text only (--profile trtllm-engine serves its images)"
        )
    triton_config: dict[str, Any] = {"max_batch_size": 0, "decoupled": True}
    if multimodal:
        triton_config["multimodal"] = True
        notes.append(
            "multimodal: needs an llmapi model.py with image_url support (TensorRT-LLM PR "
            "#18381, not in 1.2.1)"
        )
    model_yaml: dict[str, Any] = {
        "model": str(model_dir),
        "backend": "pytorch",
        "tensor_parallel_size": split.tp,
        "pipeline_parallel_size": split.pp,
        "moe_tensor_parallel_size": split.moe_tp,
        "moe_expert_parallel_size": split.moe_ep,
        "enable_attention_dp": split.attention_dp,
        "max_batch_size": options.max_batch_size,
        "max_num_tokens": options.max_num_tokens,
        "max_seq_len": seq,
        "kv_cache_config": {
            "free_gpu_memory_fraction": options.kv_cache_free_gpu_mem_fraction,
            "enable_block_reuse": options.kv_cache_reuse,
            **({"max_tokens": options.max_kv_cache_tokens} if options.max_kv_cache_tokens else {}),
        },
        "triton_config": triton_config,
    }
    values = {
        "llmapi_model_name": MODEL_NAME,
        "decoupled_mode": "true",
        "served_model_name": model_dir.name,
        "tokenizer_dir": str(model_dir),
        "max_seq_len": str(seq),
        "llmapi_engine_model": "",
        "llmapi_multimodal": "true" if multimodal else "false",
    }
    out_dir = out_dir.resolve()
    # One tritonserver; the LLM API starts its tp × pp workers itself (MpiPoolSession), which
    # trtllm-llmapi-launch makes possible under Triton.
    launch = (
        "python3",
        str(options.trtllm_src / "triton_backend" / "scripts" / "launch_triton_server.py"),
        "--world_size", "1",
        "--trtllm_llmapi_launch",
        "--model_repo", str(out_dir),
    )  # fmt: skip
    return LlmapiPlan(
        model_yaml=model_yaml,
        values=values,
        multimodal=multimodal,
        nvidia_model_dir=options.trtllm_src / NVIDIA_MODEL_DIR,
        launch=launch,
        notes=notes,
    )


def render_model_yaml(model_yaml: dict[str, Any]) -> str:
    header = (
        "# LLM arguments for tensorrt_llm.LLM (PyTorch backend), written by localmoe build "
        "repository;\n# triton_config is read by NVIDIA's llmapi model.py, the rest goes to the "
        "LLM API.\n"
    )
    return header + yaml.safe_dump(model_yaml, sort_keys=False)


def copy_commands(plan: LlmapiPlan, out_dir: Path) -> list[tuple[str, ...]]:
    """How to add NVIDIA's model files by hand when no checkout was found."""
    dest = out_dir.resolve() / MODEL_NAME / "1"
    return [("cp", str(plan.nvidia_model_dir / name), str(dest / name)) for name in NVIDIA_FILES]


def write_repository(plan: LlmapiPlan, out_dir: Path, templates: Path | None = None) -> bool:
    """Write the `tensorrt_llm` llmapi model; True when NVIDIA's model files were copied in."""
    templates = (templates or paths.templates_dir()).resolve()
    staging = fill.staging_for(out_dir)
    dest = fill.write_model(staging, templates / "llmapi", plan.values, name=MODEL_NAME, code=False)
    (dest / "1" / "model.yaml").write_text(render_model_yaml(plan.model_yaml))
    copied = all((plan.nvidia_model_dir / name).is_file() for name in NVIDIA_FILES)
    if copied:
        for name in NVIDIA_FILES:
            shutil.copyfile(plan.nvidia_model_dir / name, dest / "1" / name)
    marker = {"profile": "trtllm-llmapi", "values": plan.values, "model_yaml": plan.model_yaml}
    fill.replace_with(staging, out_dir, marker)
    return copied

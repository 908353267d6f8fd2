"""`--profile trtllm-engine`: TensorRT-LLM 1.2.1's engine path, the last release that has it.

`convert_checkpoint.py` (the family's, from TensorRT-LLM's `examples/`) shards the Hugging Face
weights for `tp`/`pp`/`moe_tp`/`moe_ep`, `trtllm-build` compiles one engine per rank, and the
repository's `tensorrt_llm` model becomes the C++ `tensorrtllm` backend over that engine; the
Python models around it (tokenisation, BLS, the image encoder) are LocalMoE's own.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.local import paths
from gateway.local.repository import MODELS, VISION_MODELS, profile_values
from gateway.local.trtllm import fill
from gateway.local.trtllm.families import Checkpoint, Family
from gateway.local.trtllm.parallel import Parallelism

TRTLLM_VERSION = "1.2.1"
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3"


class BuildError(RuntimeError):
    """A build step failed, or cannot run here."""


@dataclass(frozen=True)
class EngineOptions:
    """What the engine is compiled for and how the backend runs it."""

    max_batch_size: int = 64
    max_seq_len: int | None = None  # default: the model's positions, at most 8192
    max_num_tokens: int = 8192
    dtype: str | None = None  # default: the checkpoint's bf16/fp16, else bfloat16
    kv_cache_free_gpu_mem_fraction: float = 0.9
    kv_cache_reuse: bool = True
    max_tokens_in_paged_kv_cache: int | None = None
    max_images: int = 1  # per request, for the prompt-table size of a vision checkpoint
    trtllm_src: Path = Path("TensorRT-LLM")
    """A TensorRT-LLM v1.2.1 checkout (examples/, triton_backend/scripts/)."""
    engine_dir: Path | None = None  # default: beside the repository, named by model and split


@dataclass(frozen=True)
class Step:
    label: str
    argv: tuple[str, ...]


@dataclass
class EnginePlan:
    """Everything the engine profile will do, so that it can be printed before it runs."""

    checkpoint_dir: Path  # TensorRT-LLM's converted checkpoint
    engine_dir: Path
    steps: list[Step]
    values: dict[str, str]
    engine_parameters: dict[str, str]
    models: list[str]
    launch: tuple[str, ...]
    notes: list[str] = field(default_factory=list)


def plan(
    checkpoint: Checkpoint,
    family: Family,
    split: Parallelism,
    options: EngineOptions,
    out_dir: Path,
) -> EnginePlan:
    """The convert and build commands, and the template values, for this checkpoint and split."""
    assert family.convert_script is not None
    model_dir = checkpoint.path.resolve()
    out_dir = out_dir.resolve()
    engine_dir = (
        options.engine_dir or out_dir.parent / "engines" / f"{model_dir.name}-{split.tag}"
    ).resolve()
    converted = engine_dir.with_name(engine_dir.name + ".checkpoint")
    seq = options.max_seq_len or min(checkpoint.max_positions, 8192)
    dtype = options.dtype or _checkpoint_dtype(checkpoint)
    examples = options.trtllm_src / "examples"
    convert = (
        "python3",
        str(examples / family.convert_script),
        "--model_dir", str(model_dir),
        "--output_dir", str(converted),
        "--dtype", dtype,
        "--tp_size", str(split.tp),
        "--pp_size", str(split.pp),
        "--moe_tp_size", str(split.moe_tp),
        "--moe_ep_size", str(split.moe_ep),
        "--workers", str(split.world_size),
    )  # fmt: skip
    build = [
        "trtllm-build",
        "--checkpoint_dir", str(converted),
        "--output_dir", str(engine_dir),
        "--max_batch_size", str(options.max_batch_size),
        "--max_seq_len", str(seq),
        "--max_input_len", str(seq - 1),
        "--max_num_tokens", str(options.max_num_tokens),
        "--gemm_plugin", "auto",
        "--gpt_attention_plugin", "auto",
        "--moe_plugin", "auto",
        "--kv_cache_type", "paged",
        "--remove_input_padding", "enable",
        "--context_fmha", "enable",
        # KV-cache reuse needs paged context attention.
        "--use_paged_context_fmha", "enable" if options.kv_cache_reuse else "disable",
        "--workers", str(split.world_size),
    ]  # fmt: skip
    models = list(MODELS)
    notes: list[str] = []
    vision = checkpoint.vision == "folder"
    if vision:
        features = _vision_features(checkpoint.path)
        table = options.max_batch_size * options.max_images * features
        build += ["--max_prompt_embedding_table_size", str(table)]
        models += list(VISION_MODELS)
        notes.append(
            f"vision checkpoint: {features} image features, up to {options.max_images} image(s) "
            f"per request in a batch of {options.max_batch_size} (prompt table {table} rows)"
        )
    values = {
        **profile_values("cpu", model_dir),
        "tensorrt_llm_backend": "tensorrtllm",
        "triton_max_batch_size": str(options.max_batch_size),
        "engine_max_batch_size": str(options.max_batch_size),
        "decoupled_mode": "true",
        "max_queue_delay_microseconds": "0",
        "max_seq_len": str(seq),
        "engine_dtype": dtype,
        "engine_dir": str(engine_dir),
        "checkpoint_dir": str(model_dir),
        "preprocessing_instance_count": "4",
        "postprocessing_instance_count": "4",
        # One: a `stop` finds its request by id in this instance's memory (Triton may hand it
        # to another instance); scale with replicas.
        "bls_instance_count": "1",
    }
    engine_parameters = {
        # The C++ backend's names (inflight_batcher_llm/tensorrt_llm/config.pbtxt).
        "gpt_model_type": "inflight_fused_batching",
        "max_beam_width": "1",
        "batch_scheduler_policy": "guaranteed_no_evict",
        "kv_cache_free_gpu_mem_fraction": str(options.kv_cache_free_gpu_mem_fraction),
        "enable_kv_cache_reuse": _bool(options.kv_cache_reuse),
        "enable_chunked_context": "true",
        "exclude_input_in_output": "true",
    }
    if options.max_tokens_in_paged_kv_cache:
        engine_parameters["max_tokens_in_paged_kv_cache"] = str(
            options.max_tokens_in_paged_kv_cache
        )
    launch = (
        "python3",
        str(options.trtllm_src / "triton_backend" / "scripts" / "launch_triton_server.py"),
        "--world_size", str(split.world_size),
        "--model_repo", str(out_dir),
    )  # fmt: skip
    return EnginePlan(
        checkpoint_dir=converted,
        engine_dir=engine_dir,
        steps=[
            Step(f"convert the checkpoint for {split.tag}", convert),
            Step(f"build {split.world_size} engine(s)", tuple(build)),
        ],
        values=values,
        engine_parameters=engine_parameters,
        models=models,
        launch=launch,
        notes=notes,
    )


def write_repository(plan: EnginePlan, out_dir: Path, templates: Path | None = None) -> Path:
    """Fill the templates for the engine: `tensorrt_llm` on the `tensorrtllm` backend."""
    templates = (templates or paths.templates_dir()).resolve()
    staging = fill.staging_for(out_dir)
    for model in plan.models:
        native = model == "tensorrt_llm"
        fill.write_model(
            staging,
            templates / model,
            plan.values,
            code=not native,
            extra_parameters=plan.engine_parameters if native else None,
        )
    marker = {
        "profile": "trtllm-engine",
        "tensorrt_llm": TRTLLM_VERSION,
        "engine_dir": str(plan.engine_dir),
        "values": plan.values,
    }
    return fill.replace_with(staging, out_dir, marker)


def tensorrt_llm_version() -> str | None:
    """The importable `tensorrt_llm`'s version (inside NVIDIA's container), else None."""
    if importlib.util.find_spec("tensorrt_llm") is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tensorrt_llm")
    except PackageNotFoundError:
        return "unknown"


def run_steps(
    steps: Sequence[Step],
    *,
    log: Callable[[str], None] = print,
    runner: Callable[[Sequence[str]], int] | None = None,
) -> None:
    """Run each step in order, its output passed through, with progress and timings."""
    runner = runner or _run
    for i, step in enumerate(steps, 1):
        log(f"[{i}/{len(steps)}] {step.label}: {shlex.join(step.argv)}")
        started = time.monotonic()
        code = runner(step.argv)
        elapsed = time.monotonic() - started
        if code != 0:
            raise BuildError(f"step {i} ({step.label}) failed with exit code {code}")
        log(f"[{i}/{len(steps)}] done in {elapsed:.1f} s")


def _run(argv: Sequence[str]) -> int:
    return subprocess.run(list(argv), stdout=sys.stdout, stderr=sys.stderr).returncode


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _checkpoint_dtype(checkpoint: Checkpoint) -> str:
    dtype = checkpoint.config.get("torch_dtype") or checkpoint.config.get("dtype")
    return dtype if dtype in ("bfloat16", "float16") else "bfloat16"


def _vision_features(model_dir: Path) -> int:
    config = json.loads((model_dir / "vision" / "config.json").read_text())
    return int(config.get("num_image_tokens") or 1)

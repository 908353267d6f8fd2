"""`localmoe build repository --profile trtllm-engine|trtllm-llmapi`: check, plan, print, run.

Without `tensorrt_llm` (anywhere but NVIDIA's container) the engine profile writes the
repository and prints the exact commands that build its engine; `--dry-run` prints everything
and writes nothing. The printed text is stable (golden-tested): paths, then one flag per line.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.local.trtllm import engine, llmapi
from gateway.local.trtllm.families import Checkpoint, Family, read_checkpoint, require
from gateway.local.trtllm.parallel import Parallelism, resolve


@dataclass(frozen=True)
class Request:
    """What the command line asked for."""

    profile: str
    model_dir: Path
    out_dir: Path
    tp: int = 1
    pp: int = 1
    ep: int | None = None
    moe_tp: int | None = None
    attention_dp: bool = False
    gpus: int | None = None
    max_batch_size: int = 64
    max_seq_len: int | None = None
    max_num_tokens: int = 8192
    dtype: str | None = None
    kv_cache_fraction: float = 0.9
    kv_cache_reuse: bool = True
    max_kv_cache_tokens: int | None = None
    trtllm_src: Path = Path("TensorRT-LLM")
    engine_dir: Path | None = None
    max_images: int = 1
    dry_run: bool = False


def build(
    request: Request,
    *,
    log: Callable[[str], None] = print,
    tensorrt_llm: str | bool | None = False,
    runner: Callable[[Sequence[str]], int] | None = None,
) -> Path | None:
    """Build the repository (or print how, for a dry run); the repository's path, or None.

    `tensorrt_llm`: the importable version; False (the default) looks it up.
    Raises UnsupportedModel / ParallelError / BuildError (ValueErrors and a RuntimeError) with
    a message for the user.
    """
    if not 0 < request.kv_cache_fraction <= 1:
        raise ValueError(f"--kv-cache-fraction must be in (0, 1], got {request.kv_cache_fraction}")
    checkpoint = read_checkpoint(request.model_dir)
    family = require(checkpoint, request.profile)
    split = resolve(
        checkpoint,
        family,
        tp=request.tp,
        pp=request.pp,
        ep=request.ep,
        moe_tp=request.moe_tp,
        attention_dp=request.attention_dp,
        gpus=request.gpus,
    )
    if split.attention_dp and request.profile == "trtllm-engine":
        raise engine.BuildError(
            "attention data parallelism is an LLM API feature: --profile trtllm-llmapi"
        )
    log(
        f"# {request.profile}: {family.name} ({checkpoint.model_type}), {split.tag} "
        f"(moe_tp {split.moe_tp} x moe_ep {split.moe_ep}), {split.world_size} GPU(s) per instance"
    )
    if request.profile == "trtllm-engine":
        return _engine(request, checkpoint, family, split, log, tensorrt_llm, runner)
    return _llmapi(request, checkpoint, split, log)


def _engine(
    request: Request,
    checkpoint: Checkpoint,
    family: Family,
    split: Parallelism,
    log: Callable[[str], None],
    tensorrt_llm: str | bool | None,
    runner: Callable[[Sequence[str]], int] | None,
) -> Path | None:
    options = engine.EngineOptions(
        max_batch_size=request.max_batch_size,
        max_seq_len=request.max_seq_len,
        max_num_tokens=request.max_num_tokens,
        dtype=request.dtype,
        kv_cache_free_gpu_mem_fraction=request.kv_cache_fraction,
        kv_cache_reuse=request.kv_cache_reuse,
        max_tokens_in_paged_kv_cache=request.max_kv_cache_tokens,
        trtllm_src=request.trtllm_src,
        engine_dir=request.engine_dir,
        max_images=request.max_images,
    )
    the_plan = engine.plan(checkpoint, family, split, options, request.out_dir)
    for note in the_plan.notes:
        log(f"# {note}")
    version = engine.tensorrt_llm_version() if tensorrt_llm is False else tensorrt_llm
    run = not request.dry_run and version is not None
    if run and not str(version).startswith("1.2."):
        raise engine.BuildError(
            f"tensorrt_llm {version} is importable, but the engine path is TensorRT-LLM "
            f"{engine.TRTLLM_VERSION}'s (removed after 1.2): run in {engine.TRITON_IMAGE}, or use "
            f"--profile trtllm-llmapi"
        )
    if request.dry_run:
        log("# dry run: nothing is written or run; the build would run:")
    elif not run:
        log(
            f"# tensorrt_llm is not importable here: run these in {engine.TRITON_IMAGE} "
            f"(TensorRT-LLM {engine.TRTLLM_VERSION}, examples from a v{engine.TRTLLM_VERSION} "
            f"checkout at {request.trtllm_src}):"
        )
    if not run:
        for step in the_plan.steps:
            log(format_command(step.argv))
    else:
        engine.run_steps(the_plan.steps, log=log, runner=runner)
    models = ", ".join(the_plan.models)
    if request.dry_run:
        log(f"# would write {request.out_dir}: {models}; tensorrt_llm on the tensorrtllm backend")
        log(f"# engine: {the_plan.engine_dir}")
        log("# then serve it with:")
        log(format_command(the_plan.launch))
        return None
    out = engine.write_repository(the_plan, request.out_dir)
    log(f"# repository written to {out}: {models}")
    log(f"# engine: {the_plan.engine_dir}")
    log("# serve it with:")
    log(format_command(the_plan.launch))
    return out


def _llmapi(
    request: Request, checkpoint: Checkpoint, split: Parallelism, log: Callable[[str], None]
) -> Path | None:
    options = llmapi.LlmapiOptions(
        max_batch_size=request.max_batch_size,
        max_seq_len=request.max_seq_len,
        max_num_tokens=request.max_num_tokens,
        kv_cache_free_gpu_mem_fraction=request.kv_cache_fraction,
        kv_cache_reuse=request.kv_cache_reuse,
        max_kv_cache_tokens=request.max_kv_cache_tokens,
        trtllm_src=request.trtllm_src,
    )
    the_plan = llmapi.plan(checkpoint, split, options, request.out_dir)
    for note in the_plan.notes:
        log(f"# {note}")
    if request.dry_run:
        log(f"# dry run: would write {request.out_dir}/{llmapi.MODEL_NAME}/1/model.yaml:")
        for line in llmapi.render_model_yaml(the_plan.model_yaml).splitlines():
            log(line)
        log("# then serve it with:")
        log(format_command(the_plan.launch))
        return None
    copied = llmapi.write_repository(the_plan, request.out_dir)
    log(f"# repository written to {request.out_dir}: {llmapi.MODEL_NAME} (llmapi, model.yaml)")
    if not copied:
        log(
            f"# NVIDIA's llmapi model files are not at {the_plan.nvidia_model_dir}: copy them "
            f"from a TensorRT-LLM checkout:"
        )
        for command in llmapi.copy_commands(the_plan, request.out_dir):
            log(shlex.join(command))
    log("# serve it with:")
    log(format_command(the_plan.launch))
    return request.out_dir


def format_command(argv: Sequence[str]) -> str:
    """A shell command, one `--flag value` per line (continuation backslashes)."""
    head: list[str] = []
    rest = list(argv)
    while rest and not rest[0].startswith("--"):
        head.append(rest.pop(0))
    lines = [shlex.join(head)]
    while rest:
        flag = [rest.pop(0)]
        if rest and not rest[0].startswith("--"):
            flag.append(rest.pop(0))
        lines.append("  " + shlex.join(flag))
    return " \\\n".join(lines)

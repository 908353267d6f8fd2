"""Fill the `model_repository/` templates for a deployment profile (like NVIDIA's fill_template.py).

The templates keep `${name}` placeholders for everything that differs between a laptop CPU and
a GPU cluster; a profile is just the set of values. Filling is strict: a placeholder without a
value is an error, never an empty string in a config Triton will half-accept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from gateway.local import paths

MODELS = ("preprocessing", "tensorrt_llm", "postprocessing", "ensemble", "tensorrt_llm_bls")
# The CPU profile also serves NVIDIA's LLM-API tensor interface over the same engine, so the
# gateway's llmapi protocol runs against a real Triton without a GPU.
CPU_MODELS = ("llmapi", "embeddings")
# Written only for a vision checkpoint (one with `vision/config.json`).
VISION_MODELS = ("multimodal_encoders", "ensemble_multimodal")
ENCODER_MODEL = "multimodal_encoders"

# Values per profile; `${model_dir}`-relative ones are resolved in `profile_values`.
PROFILES: dict[str, dict[str, str]] = {
    "cpu": {
        "tensorrt_llm_backend": "python",
        "triton_max_batch_size": "64",
        "decoupled_mode": "true",
        "max_queue_delay_microseconds": "0",
        "engine_max_batch_size": "8",
        "engine_dtype": "float32",
        # Half the CPUs: torch's default (all of them) keeps OpenMP threads spinning on the
        # cores Triton's Python stubs need (`python -m bench.engine_threads` compares).
        "engine_num_threads": str(max(1, (os.cpu_count() or 2) // 2)),
        "preprocessing_instance_count": "1",
        "postprocessing_instance_count": "1",
        # One: a `stop` finds its request by id in this instance's memory (Triton may hand it
        # to another instance); scale with replicas.
        "bls_instance_count": "1",
        # Images: at most this many per request inside Triton (the gateway has its own limit);
        # concurrent image requests wait up to the delay to be encoded in one call.
        "max_num_images": "8",
        "encoder_instance_count": "1",
        "encoder_max_queue_delay_microseconds": "2000",
        "expert_metrics_max_series": "2048",
        "bench_step_delay_ms": "0",
        "llmapi_model_name": "llmapi",
        "llmapi_engine_model": "tensorrt_llm",
        "llmapi_multimodal": "false",
        # Concurrent embeddings requests wait up to this long to share one forward.
        "embeddings_max_queue_delay_microseconds": "2000",
    },
}

_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


class TemplateError(ValueError):
    """A template placeholder has no value, or a profile/model is unknown."""


def profile_values(
    profile: str, model_dir: Path, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """All template values for `profile` serving the checkpoint in `model_dir`."""
    if profile not in PROFILES:
        raise TemplateError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    model_dir = model_dir.resolve()
    values = {
        **PROFILES[profile],
        "checkpoint_dir": str(model_dir),
        "engine_dir": str(model_dir),
        "tokenizer_dir": str(model_dir),
        "served_model_name": model_dir.name,
        "max_seq_len": str(_max_positions(model_dir)),
        "multimodal_encoders_name": ENCODER_MODEL if is_vision_checkpoint(model_dir) else "",
    }
    values.update(overrides or {})
    return values


def is_vision_checkpoint(model_dir: Path) -> bool:
    """Whether the checkpoint has a vision tower (`moe_engine.vision`'s test, without torch)."""
    return (model_dir / "vision" / "config.json").is_file()


def models_for(model_dir: Path) -> tuple[str, ...]:
    """The models a CPU repository serving this checkpoint holds."""
    return MODELS + CPU_MODELS + (VISION_MODELS if is_vision_checkpoint(model_dir) else ())


def fill_template(text: str, values: Mapping[str, str], *, source: str = "template") -> str:
    """Replace every `${name}`; raise TemplateError naming each placeholder left without value."""
    missing = sorted({m for m in _PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise TemplateError(f"{source}: no value for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def fill_repository(
    out_dir: Path,
    *,
    model_dir: Path,
    profile: str = "cpu",
    overrides: Mapping[str, str] | None = None,
    templates: Path | None = None,
) -> Path:
    """Write a servable model repository for `profile` into `out_dir` (replacing it).

    `templates` defaults to the templates shipped in the package (`paths.templates_dir()`).
    """
    templates = (templates or paths.templates_dir()).resolve()
    if not (model_dir / "config.json").is_file():
        raise TemplateError(f"{model_dir} is not a Hugging Face checkpoint (no config.json)")
    values = profile_values(profile, model_dir, overrides)
    staging = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    for model in models_for(model_dir):
        src = templates / model
        config = src / "config.pbtxt"
        if not config.is_file():
            raise TemplateError(f"{templates} is not a template folder: no {model}/config.pbtxt")
        dest = staging / model
        (dest / "1").mkdir(parents=True)
        dest.joinpath("config.pbtxt").write_text(
            fill_template(config.read_text(), values, source=str(config))
        )
        code = src / "1" / "model.py"
        if code.is_file() and not _uses_native_backend(model, values):
            # Link rather than copy: edits to the templates apply without refilling.
            os.symlink(code.resolve(), dest / "1" / "model.py")
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    (out_dir / ".localmoe.json").write_text(
        json.dumps(_marker(profile, values, templates), indent=2, sort_keys=True)
    )
    return out_dir


def ensure_default_repository(
    model_dir: Path | None = None, out_dir: Path | None = None, *, templates: Path | None = None
) -> Path:
    """The default CPU repository for the tiny model, building the model first if missing."""
    model_dir = model_dir or paths.default_model_dir()
    out_dir = out_dir or paths.default_repository_dir()
    templates = (templates or paths.templates_dir()).resolve()
    if not (model_dir / "config.json").is_file():
        from moe_build.tiny import build_tiny_model

        print(f"building the tiny MoE model into {model_dir} (first run only)", flush=True)
        build_tiny_model(model_dir)
    marker = _marker("cpu", profile_values("cpu", model_dir), templates)
    if _filled_with(out_dir, marker, models_for(model_dir)):
        # Refilling replaces the folder: don't pull it from under a Triton already serving it.
        return out_dir
    return fill_repository(out_dir, model_dir=model_dir, profile="cpu", templates=templates)


def holds_templates(repository: Path) -> bool:
    """Whether `repository` is a template folder (`${…}` placeholders in a `config.pbtxt`),
    which Triton cannot serve before it is filled."""
    return any(
        _PLACEHOLDER.search(config.read_text(errors="replace"))
        for config in Path(repository).glob("*/config.pbtxt")
    )


def _marker(profile: str, values: Mapping[str, str], templates: Path) -> dict[str, object]:
    return {"profile": profile, "values": dict(values), "templates": str(templates)}


def _filled_with(out_dir: Path, marker: Mapping[str, object], models: tuple[str, ...]) -> bool:
    path = out_dir / ".localmoe.json"
    if not path.is_file() or not all((out_dir / m / "config.pbtxt").is_file() for m in models):
        return False
    return json.loads(path.read_text()) == marker


def _uses_native_backend(model: str, values: Mapping[str, str]) -> bool:
    return model == "tensorrt_llm" and values.get("tensorrt_llm_backend") == "tensorrtllm"


def _max_positions(model_dir: Path) -> int:
    config = json.loads((model_dir / "config.json").read_text())
    return int(min(config.get("max_position_embeddings", 2048), 4096))

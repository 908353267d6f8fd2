"""Which deployment profiles a checkpoint's architecture supports, decided from its `config.json`.

Facts from NVIDIA/TensorRT-LLM (1.2.1 and main): the legacy engine path converts Mixtral with
the LLaMA `convert_checkpoint.py`, Qwen2-MoE and Qwen3-MoE with the Qwen one, Phi-3.5-MoE with
the Phi one (no pipeline parallelism); the PyTorch backend behind the LLM API runs Mixtral,
Qwen2-MoE, Qwen3-MoE, DeepSeek-V3 and gpt-oss, but not Phi-3.5-MoE or OLMoE (DeepSeek-V2 only
through AutoDeploy). The CPU profile runs what `moe_engine` implements.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROFILES = ("cpu", "trtllm-engine", "trtllm-llmapi")


class UnsupportedModel(ValueError):
    """The checkpoint cannot be built for the requested profile; the message says what can."""


@dataclass(frozen=True)
class Family:
    """One model architecture and what each profile can do with it."""

    name: str
    convert_script: str | None
    """`convert_checkpoint.py` under TensorRT-LLM 1.2.1's `examples/`; None: no engine path."""
    llmapi: bool
    cpu: bool
    pipeline_parallel: bool = True
    refusals: tuple[tuple[str, str], ...] = ()
    """(profile, why) for the profiles it does not support, said in the error."""

    def supports(self, profile: str) -> bool:
        if profile == "trtllm-engine":
            return self.convert_script is not None
        if profile == "trtllm-llmapi":
            return self.llmapi
        return self.cpu


_NO_ENGINE = (
    "TensorRT-LLM has no engine (convert_checkpoint) path for it; it runs on the PyTorch backend"
)
_NOT_PYTORCH = "TensorRT-LLM's PyTorch backend (the LLM API) does not implement it"
_NOT_CPU = "the CPU engine (moe_engine) implements Qwen3-MoE, Qwen2-MoE and Mixtral only"

# By Hugging Face `model_type`.
FAMILIES: dict[str, Family] = {
    "mixtral": Family("Mixtral", "models/core/llama/convert_checkpoint.py", llmapi=True, cpu=True),
    "qwen2_moe": Family(
        "Qwen2-MoE", "models/core/qwen/convert_checkpoint.py", llmapi=True, cpu=True
    ),
    "qwen3_moe": Family(
        "Qwen3-MoE", "models/core/qwen/convert_checkpoint.py", llmapi=True, cpu=True
    ),
    "deepseek_v3": Family(
        "DeepSeek-V3",
        None,
        llmapi=True,
        cpu=False,
        refusals=(("trtllm-engine", _NO_ENGINE), ("cpu", _NOT_CPU)),
    ),
    "gpt_oss": Family(
        "gpt-oss",
        None,
        llmapi=True,
        cpu=False,
        refusals=(("trtllm-engine", _NO_ENGINE), ("cpu", _NOT_CPU)),
    ),
    "phimoe": Family(
        "Phi-3.5-MoE",
        "models/core/phi/convert_checkpoint.py",
        llmapi=False,
        cpu=False,
        pipeline_parallel=False,
        refusals=(("trtllm-llmapi", _NOT_PYTORCH), ("cpu", _NOT_CPU)),
    ),
    "olmoe": Family(
        "OLMoE",
        None,
        llmapi=False,
        cpu=False,
        refusals=(
            ("trtllm-engine", "TensorRT-LLM has no convert_checkpoint for OLMoE"),
            ("trtllm-llmapi", _NOT_PYTORCH),
            ("cpu", _NOT_CPU),
        ),
    ),
    "deepseek_v2": Family(
        "DeepSeek-V2",
        None,
        llmapi=False,
        cpu=False,
        refusals=(
            ("trtllm-engine", "its converter is a contrib example LocalMoE does not drive"),
            ("trtllm-llmapi", "TensorRT-LLM runs it on the PyTorch path only through AutoDeploy"),
            ("cpu", _NOT_CPU),
        ),
    ),
}

# Hugging Face vision-language MoE types that TensorRT-LLM's PyTorch backend serves with images
# (the `llmapi` model's `image_url`, `triton_config.multimodal`).
LLMAPI_VISION_TYPES = {"llama4": "Llama-4"}


@dataclass(frozen=True)
class Checkpoint:
    """What the build needs to know about a Hugging Face checkpoint folder."""

    path: Path
    config: dict[str, Any]
    """The language model's config (a VLM's `text_config`)."""
    model_type: str
    vision: str | None
    """"folder" (LocalMoE's `vision/`), "hf" (a `vision_config` in config.json) or None."""
    outer_type: str
    """config.json's own `model_type` (the VLM's, for an HF VLM)."""

    @property
    def family(self) -> Family | None:
        return FAMILIES.get(self.model_type)

    @property
    def num_experts(self) -> int:
        c = self.config
        return int(
            c.get("num_local_experts") or c.get("num_experts") or c.get("n_routed_experts") or 0
        )

    @property
    def num_heads(self) -> int:
        return int(self.config.get("num_attention_heads") or 0)

    @property
    def num_kv_heads(self) -> int:
        return int(self.config.get("num_key_value_heads") or self.num_heads)

    @property
    def num_layers(self) -> int:
        return int(self.config.get("num_hidden_layers") or 0)

    @property
    def max_positions(self) -> int:
        return int(self.config.get("max_position_embeddings") or 2048)


def read_checkpoint(model_dir: Path) -> Checkpoint:
    """The checkpoint in `model_dir`; ValueError when it is no Hugging Face checkpoint."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise UnsupportedModel(f"{model_dir} is not a Hugging Face checkpoint (no config.json)")
    raw = json.loads(config_file.read_text())
    outer = str(raw.get("model_type", ""))
    text = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else raw
    vision = None
    if (model_dir / "vision" / "config.json").is_file():
        vision = "folder"
    elif isinstance(raw.get("vision_config"), dict):
        vision = "hf"
    return Checkpoint(
        path=model_dir,
        config=text,
        model_type=str(text.get("model_type", outer)),
        vision=vision,
        outer_type=outer,
    )


def require(checkpoint: Checkpoint, profile: str) -> Family:
    """The checkpoint's family if `profile` supports it, else UnsupportedModel saying why and
    which profiles would take it."""
    if checkpoint.vision == "hf" and checkpoint.outer_type in LLMAPI_VISION_TYPES:
        if profile == "trtllm-llmapi":
            return Family(LLMAPI_VISION_TYPES[checkpoint.outer_type], None, llmapi=True, cpu=False)
        raise UnsupportedModel(
            f"{LLMAPI_VISION_TYPES[checkpoint.outer_type]} ({checkpoint.outer_type}) is a "
            f"vision-language model TensorRT-LLM serves through the LLM API only: use "
            f"--profile trtllm-llmapi"
        )
    family = checkpoint.family
    if family is None:
        known = ", ".join(f"{f.name} ({t})" for t, f in FAMILIES.items())
        raise UnsupportedModel(
            f"model_type {checkpoint.model_type!r} is not a MoE family LocalMoE builds; known: "
            f"{known}"
        )
    if not family.supports(profile):
        why = dict(family.refusals).get(profile, "not supported")
        others = [p for p in PROFILES if family.supports(p)]
        hint = f"; use --profile {' or '.join(others)}" if others else ""
        raise UnsupportedModel(f"{family.name} cannot be built for {profile}: {why}{hint}")
    if checkpoint.vision == "hf" and profile == "trtllm-engine":
        raise UnsupportedModel(
            f"{checkpoint.path.name} is a Hugging Face vision-language model: the engine path "
            f"needs NVIDIA's per-model visual engines, which LocalMoE does not build; use "
            f"--profile trtllm-llmapi"
        )
    return family

"""Writing a Qwen3-MoE model as a Hub-layout checkpoint: per-expert safetensors and configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel, Qwen3MoeConfig

# Suffixes of the fused 3D expert parameters that transformers v5 keeps in memory.
_FUSED_GATE_UP = "mlp.experts.gate_up_proj"
_FUSED_DOWN = "mlp.experts.down_proj"


def canonical_state_dict(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The model's weights under the Hub's per-expert names, tied copies left out.

    transformers v5 holds a layer's experts as `experts.gate_up_proj` [E, 2I, H] (gate rows
    first) and `experts.down_proj` [E, H, I]; released checkpoints, older transformers and
    other engines name each expert's `gate_proj` / `up_proj` / `down_proj` separately.
    Already per-expert parameters (transformers v4) pass through unchanged.
    """
    tied = bool(model.config.tie_word_embeddings)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        if tied and name == "lm_head.weight":
            continue
        if name.endswith(_FUSED_GATE_UP):
            prefix = name.removesuffix("gate_up_proj")
            gate, up = tensor.chunk(2, dim=1)
            for e in range(tensor.shape[0]):
                out[f"{prefix}{e}.gate_proj.weight"] = gate[e]
                out[f"{prefix}{e}.up_proj.weight"] = up[e]
        elif name.endswith(_FUSED_DOWN):
            prefix = name.removesuffix("down_proj")
            for e in range(tensor.shape[0]):
                out[f"{prefix}{e}.down_proj.weight"] = tensor[e]
        else:
            out[name] = tensor
    # safetensors refuses views that share storage; clone gives each tensor its own.
    return {name: tensor.contiguous().clone() for name, tensor in sorted(out.items())}


def save_checkpoint(
    model: PreTrainedModel, out_dir: Path, *, generation_config: dict[str, Any]
) -> None:
    """Write `model.safetensors`, `config.json` and `generation_config.json` into `out_dir`."""
    save_file(canonical_state_dict(model), out_dir / "model.safetensors", metadata={"format": "pt"})
    write_json(out_dir / "config.json", hub_config_dict(model.config))
    write_json(out_dir / "generation_config.json", generation_config)


def hub_config_dict(config: Qwen3MoeConfig) -> dict[str, Any]:
    """`config.to_dict()` with the key spellings released Qwen3-MoE checkpoints use.

    transformers v5 stores the expert count as `num_local_experts`, the dtype as `dtype` and
    RoPE under `rope_parameters`; readers built for the Hub (transformers v4, vLLM, our own
    engine) look for `num_experts`, `torch_dtype` and `rope_theta`. v5 accepts both.
    """
    raw = config.to_dict()
    for noise in ("id2label", "label2id", "problem_type", "_name_or_path"):
        raw.pop(noise, None)
    raw["architectures"] = ["Qwen3MoeForCausalLM"]
    raw["num_experts"] = raw.pop("num_local_experts")
    raw["torch_dtype"] = raw["dtype"]
    raw["rope_theta"] = raw["rope_parameters"]["rope_theta"]
    return dict(sorted(raw.items()))


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Pretty, stable JSON (the same data always gives the same bytes)."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

"""Typed configuration: the model's architecture read from `config.json`, and the engine's knobs."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("qwen3_moe", "qwen2_moe", "mixtral")
SUPPORTED_DTYPES = ("float32", "bfloat16")
DEFAULT_MAX_SEQ_LEN_CAP = 2048


@dataclass
class EngineConfig:
    """How the engine runs a model: batch slots, context length, precision and CPU threads."""

    max_batch_size: int = 8
    max_seq_len: int | None = None  # default: the model's max positions, capped at 2048
    dtype: str = "float32"
    num_threads: int | None = None  # None: leave torch's process-wide setting alone
    step_delay_s: float = 0.0
    """Benchmarks only: a pause after every iteration, for a replica made slow on purpose."""


@dataclass(frozen=True)
class ModelConfig:
    """The architecture facts the forward pass needs, normalised across model families."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    norm_topk_prob: bool
    qk_norm: bool
    shared_expert_intermediate_size: int  # 0: no shared expert
    intermediate_size: int  # dense MLP layers only
    moe_layers: tuple[bool, ...]  # per layer: sparse MoE block (True) or dense MLP (False)
    sliding_window: int | None
    eos_token_ids: tuple[int, ...]

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        """Read `config.json` (and end ids from `generation_config.json`) from a checkpoint."""
        path = Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ValueError(f"no config.json in model directory {path}")
        raw = json.loads(config_file.read_text())
        generation_file = path / "generation_config.json"
        generation = json.loads(generation_file.read_text()) if generation_file.is_file() else {}
        return cls.from_dict(raw, generation)

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], generation: dict[str, Any] | None = None
    ) -> ModelConfig:
        """Normalise a Hugging Face config dict; raise ValueError for anything we cannot run."""
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_ARCHITECTURES:
            supported = ", ".join(SUPPORTED_ARCHITECTURES)
            raise ValueError(f"unsupported model_type {model_type!r}; supported: {supported}")
        act = raw.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"unsupported hidden_act {act!r}; only 'silu' is implemented")

        hidden = int(raw["hidden_size"])
        num_heads = int(raw["num_attention_heads"])
        num_layers = int(raw["num_hidden_layers"])
        head_dim = raw.get("head_dim") or hidden // num_heads
        num_kv_heads = int(raw.get("num_key_value_heads") or num_heads)
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_attention_heads {num_heads} is not divisible by num_key_value_heads "
                f"{num_kv_heads}"
            )
        is_mixtral = model_type == "mixtral"
        num_experts = raw.get("num_experts", raw.get("num_local_experts"))
        if not num_experts:
            raise ValueError("config has no num_experts / num_local_experts: not an MoE model")

        if is_mixtral:
            moe_layers = (True,) * num_layers
            moe_intermediate = int(raw["intermediate_size"])
            dense_intermediate = 0
            norm_topk = True  # Mixtral always renormalises its top-k weights
            sliding = raw.get("sliding_window")
        else:
            step = int(raw.get("decoder_sparse_step", 1))
            dense_only = set(raw.get("mlp_only_layers") or [])
            moe_layers = tuple(
                i not in dense_only and (i + 1) % step == 0 for i in range(num_layers)
            )
            moe_intermediate = int(raw["moe_intermediate_size"])
            dense_intermediate = int(raw.get("intermediate_size") or 0)
            norm_topk = bool(raw.get("norm_topk_prob", False))
            sliding = raw.get("sliding_window") if raw.get("use_sliding_window") else None

        eos = _token_ids((generation or {}).get("eos_token_id"))
        eos = eos or _token_ids(raw.get("eos_token_id"))
        return cls(
            model_type=model_type,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=int(head_dim),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5 if is_mixtral else 1e-6)),
            rope_theta=_rope_theta(raw, default=1e6 if is_mixtral else 1e4),
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            num_experts=int(num_experts),
            num_experts_per_tok=int(raw["num_experts_per_tok"]),
            moe_intermediate_size=moe_intermediate,
            norm_topk_prob=norm_topk,
            qk_norm=model_type == "qwen3_moe",
            shared_expert_intermediate_size=int(raw.get("shared_expert_intermediate_size") or 0)
            if model_type == "qwen2_moe"
            else 0,
            intermediate_size=dense_intermediate,
            moe_layers=moe_layers,
            sliding_window=int(sliding) if sliding else None,
            eos_token_ids=eos,
        )

    @property
    def num_moe_layers(self) -> int:
        return sum(self.moe_layers)


def resolve_max_seq_len(model: ModelConfig, requested: int | None) -> int:
    """The KV-cache length per slot: what was asked for, within what the model can attend over."""
    limit = model.max_position_embeddings
    if model.sliding_window and model.sliding_window < limit:
        # Within the window, sliding-window attention equals full attention, so capping the
        # context keeps results exact without implementing windowed masks.
        logger.warning(
            "model uses sliding-window attention (%d); capping context to the window",
            model.sliding_window,
        )
        limit = model.sliding_window
    if requested is None:
        return min(limit, DEFAULT_MAX_SEQ_LEN_CAP)
    if requested < 2:
        raise ValueError(f"max_seq_len must be at least 2, got {requested}")
    if requested > limit:
        raise ValueError(f"max_seq_len {requested} exceeds the model's limit of {limit} positions")
    return requested


def _rope_theta(raw: dict[str, Any], default: float) -> float:
    # transformers v5 writes `rope_parameters`; older checkpoints use `rope_theta` + `rope_scaling`.
    params = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    if rope_type not in (None, "default"):
        raise ValueError(f"unsupported rope scaling {rope_type!r}; only plain RoPE is implemented")
    factor = params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))
    if factor != 1.0:
        raise ValueError(f"unsupported partial_rotary_factor {factor}; only full RoPE works")
    return float(params.get("rope_theta", raw.get("rope_theta", default)))


def _token_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)

"""The engine's own MoE forward pass against transformers' reference implementation."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    MixtralConfig,
    PretrainedConfig,
    Qwen2MoeConfig,
    Qwen3MoeConfig,
)

from moe_engine import Engine, EngineConfig, ModelConfig, SamplingParams, StepOutput
from moe_engine.model import MoEModel
from moe_engine.weights import load_weights

VOCAB = 256
SMALL = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 256,
    # Larger than the default 0.02 so logits, routing and attention are far from uniform.
    "initializer_range": 0.1,
}
CONFIGS: dict[str, PretrainedConfig] = {
    # A dense layer (mlp_only_layers) and tied embeddings exercise the less common paths.
    "qwen3_moe": Qwen3MoeConfig(
        **SMALL,
        num_hidden_layers=3,
        head_dim=32,
        num_experts=6,
        moe_intermediate_size=32,
        intermediate_size=96,
        mlp_only_layers=[1],
        norm_topk_prob=True,
        tie_word_embeddings=True,
    ),
    "mixtral": MixtralConfig(
        **SMALL, num_hidden_layers=2, num_local_experts=4, intermediate_size=48
    ),
    "qwen2_moe": Qwen2MoeConfig(
        **SMALL,
        num_hidden_layers=2,
        num_experts=4,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=64,
        intermediate_size=96,
        decoder_sparse_step=2,  # layer 0 dense, layer 1 sparse
    ),
}
ATOL = 1e-4


@pytest.fixture(scope="module", params=list(CONFIGS))
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A random tiny model of each architecture, saved with `save_pretrained`."""
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(CONFIGS[request.param]).eval()
    reference.generation_config.eos_token_id = None  # generate exactly max_new_tokens
    path = tmp_path_factory.mktemp(request.param)
    reference.save_pretrained(path)
    return reference, path


def load_ours(path: Path, dtype: torch.dtype = torch.float32) -> MoEModel:
    config = ModelConfig.from_dir(path)
    return MoEModel(config, load_weights(path, config, dtype), max_seq_len=64)


def reference_logits(reference: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return reference(torch.tensor([ids])).logits[0]


def test_prefill_logits_match_transformers(checkpoint) -> None:
    reference, path = checkpoint
    ours = load_ours(path)
    prompt = torch.randint(0, VOCAB, (12,), generator=torch.Generator().manual_seed(1))
    logits = ours.prefill(prompt, ours.new_cache(2), slot=1, all_logits=True)
    expected = reference_logits(reference, prompt.tolist())
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)


def test_batched_cached_decode_matches_transformers(checkpoint) -> None:
    reference, path = checkpoint
    ours = load_ours(path)
    cache = ours.new_cache(3)
    generator = torch.Generator().manual_seed(2)
    # Three sequences of different lengths decode together; each must match its own full pass.
    sequences = [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in (3, 9, 5)]
    for slot, ids in enumerate(sequences):
        ours.prefill(torch.tensor(ids), cache, slot)
    for _ in range(4):
        tokens = torch.randint(0, VOCAB, (3,), generator=generator)
        positions = torch.tensor([len(ids) for ids in sequences])
        logits = ours.decode(tokens, positions, cache, max_len=int(positions.max()) + 1)
        for row, ids in enumerate(sequences):
            ids.append(int(tokens[row]))
            expected = reference_logits(reference, ids)[-1]
            torch.testing.assert_close(logits[row], expected, atol=ATOL, rtol=0)


def test_greedy_generation_matches_transformers_generate(checkpoint) -> None:
    reference, path = checkpoint
    prompt = [5, 17, 99, 3, 42, 7]
    with torch.no_grad():
        expected = reference.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0
        )[0, len(prompt) :].tolist()
    engine = Engine.from_pretrained(path, EngineConfig(max_batch_size=2, max_seq_len=64))
    assert generate(engine, prompt, SamplingParams(max_new_tokens=12, temperature=0)) == expected


def test_fused_expert_tensors_load_like_per_expert_tensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(CONFIGS["qwen3_moe"]).eval()
    # transformers v5 holds experts as 3D `experts.gate_up_proj` / `experts.down_proj`.
    state = {k: v.contiguous() for k, v in reference.state_dict().items() if k != "lm_head.weight"}
    assert "model.layers.0.mlp.experts.gate_up_proj" in state
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(reference.config.to_dict()))
    ours = load_ours(tmp_path)
    prompt = torch.arange(10)
    logits = ours.prefill(prompt, ours.new_cache(1), 0, all_logits=True)
    expected = reference_logits(reference, prompt.tolist())
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)


def test_sharded_checkpoint_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(CONFIGS["mixtral"]).eval()
    reference.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = load_ours(tmp_path)
    prompt = torch.arange(8)
    logits = ours.prefill(prompt, ours.new_cache(1), 0, all_logits=True)
    expected = reference_logits(reference, prompt.tolist())
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)


def test_bfloat16_logits_stay_close_to_float32(tmp_path: Path) -> None:
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(CONFIGS["qwen3_moe"]).save_pretrained(tmp_path)
    prompt = torch.arange(10)
    fp32, bf16 = load_ours(tmp_path), load_ours(tmp_path, torch.bfloat16)
    full = fp32.prefill(prompt, fp32.new_cache(1), 0)
    half = bf16.prefill(prompt, bf16.new_cache(1), 0)
    assert half.dtype == torch.float32  # logits are always handed to the sampler in fp32
    assert (half - full).abs().max() < 0.05 * full.abs().max()


def test_unsupported_rope_scaling_is_rejected() -> None:
    raw = CONFIGS["qwen3_moe"].to_dict()
    raw["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    with pytest.raises(ValueError, match="unsupported rope scaling 'yarn'"):
        ModelConfig.from_dict(raw)


def test_unsupported_architecture_is_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported model_type 'llama'"):
        ModelConfig.from_dict({"model_type": "llama"})


def generate(engine: Engine, prompt: list[int], params: SamplingParams) -> list[int]:
    """Run one request to completion on a started-and-stopped engine; return its tokens."""
    tokens: list[int] = []
    done = threading.Event()

    def on_output(out: StepOutput) -> None:
        tokens.extend(out.token_ids)
        if out.finished:
            done.set()

    engine.start()
    try:
        engine.submit("r", prompt, params, on_output)
        assert done.wait(30), "request did not finish"
    finally:
        engine.shutdown()
    return tokens

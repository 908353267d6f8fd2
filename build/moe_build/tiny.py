"""`localmoe build tiny`: generate the embedded default model, a tiny Qwen3-MoE checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

from tqdm import tqdm
from transformers import Qwen3MoeConfig

from moe_build.checkpoint import save_checkpoint
from moe_build.corpus import ENDOFTEXT, IM_END, build_corpus
from moe_build.tokenizer import save_tokenizer, train_tokenizer
from moe_build.train import MAX_POSITIONS, TrainSettings, tiny_config, token_stream, train

# About 80 s of training on 2 idle CPU cores (0.44 s a step): the whole build stays under 2 min.
DEFAULT_STEPS = 180
VOCAB_SIZE = 4096


def build_tiny_model(
    out_dir: Path, *, seed: int = 0, steps: int | None = None, progress: bool = True
) -> Path:
    """Generate the tiny MoE checkpoint in Hugging Face format into out_dir; returns out_dir.

    Everything is made here from the local Python standard library (corpus, tokenizer,
    weights); nothing is downloaded. The same seed gives byte-identical weights and tokenizer
    on the same machine. The model is built in a sibling `<name>.tmp` folder and renamed into
    place, so `out_dir` either holds a complete model or does not exist; an existing
    `out_dir` is replaced.
    """
    out_dir = Path(out_dir)
    steps = DEFAULT_STEPS if steps is None else steps
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    staging = out_dir.with_name(out_dir.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)  # left behind by a build that was killed outright
    staging.mkdir(parents=True)
    try:
        _build(staging, seed=seed, steps=steps, progress=progress)
        _move_into_place(staging, out_dir)
    except BaseException:  # KeyboardInterrupt too: never leave a half-built model behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _build(out_dir: Path, *, seed: int, steps: int, progress: bool) -> None:
    corpus = build_corpus(progress=progress)
    with tqdm(total=3, desc="tokenizer", unit="step", disable=not progress) as bar:
        tokenizer = train_tokenizer(corpus.tokenizer_texts, VOCAB_SIZE)
        bar.update()
        save_tokenizer(tokenizer, out_dir, model_max_length=MAX_POSITIONS)
        bar.update()
        tokens = token_stream(corpus.training_texts, tokenizer, seed=seed)
        bar.update()

    eos_id, pad_id = tokenizer.token_to_id(IM_END), tokenizer.token_to_id(ENDOFTEXT)
    config = tiny_config(tokenizer.get_vocab_size(), eos_token_id=eos_id, pad_token_id=pad_id)
    model = train(config, tokens, steps=steps, seed=seed, progress=progress)

    with tqdm(total=2, desc="saving", unit="step", disable=not progress) as bar:
        save_checkpoint(model, out_dir, generation_config=_generation_config(eos_id, pad_id))
        bar.update()
        facts = {"params": model.num_parameters(), "tokens": tokens.numel()}
        readme = _readme(config, seed=seed, steps=steps, **facts)
        (out_dir / "README.md").write_text(readme, encoding="utf-8")
        bar.update()


def _generation_config(eos_id: int, pad_id: int) -> dict:
    # Both end tokens stop generation: <|im_end|> closes a chat turn, <|endoftext|> a document.
    return {
        "eos_token_id": [eos_id, pad_id],
        "pad_token_id": pad_id,
        "do_sample": True,
        "temperature": 0.7,
        "top_k": 40,
        "top_p": 0.9,
        "repetition_penalty": 1.1,
    }


def _move_into_place(staging: Path, out_dir: Path) -> None:
    # A directory rename cannot replace a non-empty directory, so the old model steps aside
    # first; at no moment does out_dir name a partial model.
    old = out_dir.with_name(out_dir.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        out_dir.rename(old)
    staging.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _readme(config: Qwen3MoeConfig, *, seed: int, steps: int, params: int, tokens: int) -> str:
    settings = TrainSettings()
    return f"""# LocalMoE tiny MoE

The embedded default model of LocalMoE: a toy Qwen3-MoE language model generated locally by
`localmoe build tiny --seed {seed} --steps {steps}`. Nothing was downloaded. It exists so the
whole serving stack (Triton, the MoE engine, the gateway, expert-load metrics) runs on a laptop
CPU. Its output is word-like English, not sensible answers.

## Model

- Architecture: `Qwen3MoeForCausalLM` (`model_type: qwen3_moe`), float32, {params:,} parameters
- {config.num_hidden_layers} layers, hidden {config.hidden_size}, \
{config.num_attention_heads} attention heads ({config.num_key_value_heads} KV heads, \
head_dim {config.head_dim})
- Every layer sparse: {config.num_experts} experts, top-{config.num_experts_per_tok} routing \
(`norm_topk_prob`), expert width {config.moe_intermediate_size}
- Vocabulary {config.vocab_size}, context {config.max_position_embeddings}, tied embeddings
- Weights in `model.safetensors` under the Hub's per-expert names
  (`model.layers.N.mlp.experts.E.{{gate,up,down}}_proj.weight`)

## Tokenizer

Byte-level BPE trained with `tokenizers` on the corpus below (`tokenizer.json`); any UTF-8
text round-trips exactly. Special tokens `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`;
ChatML chat template in `tokenizer_config.json`; generation stops at `<|im_end|>` or
`<|endoftext|>`.

## Training

Corpus: prose paragraphs from the docstrings of this machine's Python standard library, as
plain documents and as ChatML question/answer pairs ({tokens:,} tokens). {steps} AdamW steps of
{settings.batch_size} x {settings.seq_len} tokens, causal-LM loss plus the router
load-balancing loss, seed {seed}, {settings.num_threads} CPU threads. The same seed rebuilds
byte-identical weights and tokenizer on the same machine.
"""

"""The tiny model's README: what it is, how it was made, and what it measured at build time."""

from __future__ import annotations

from typing import Any

from transformers import Qwen3MoeConfig

from moe_build.train import TrainSettings
from moe_engine.vision import VisionConfig

DOC_CRITERION = (
    "the greedy answer's first 3 words (lower-cased letters and digits) equal the first 3 "
    "words of the docstring summary"
)


def _measured(report: dict[str, Any]) -> str:
    vqa, docs = report["vqa"], report["docstrings"]
    if vqa is None or docs is None:
        return "Not measured: this build ran with evaluation off.\n"
    return f"""- Held-out images ({vqa["held_out_images"]} drawn pictures no training step saw, seed
  {vqa["held_out_seed"]}), greedy answers: **{vqa["what"]:.1%}** of "What is in this image?"
  answers name both the right colour and the right shape (and no other); colour questions
  {vqa["colour"]:.1%} right, shape questions {vqa["shape"]:.1%} right.
- Docstring questions ("What does the json module do?", "What does json.dumps do?", on the
  {docs["questions"]} training pairs: a memorisation check): **{docs["rate"]:.1%}** of greedy
  answers start right (modules {docs["modules"]:.1%}, functions {docs["functions"]:.1%});
  criterion: {DOC_CRITERION}.
- The same numbers, examples and the settings are in `vision/eval.json`.
"""


def _tower_facts(tower: dict[str, Any]) -> str:
    if tower["model_type"] == "resnet":
        return f", stages {tower['hidden_sizes']}, depths {tower['depths']}"
    patch = tower["patch_size"]
    return f", {tower['num_hidden_layers']} layers, {patch}x{patch} patches"


def readme(
    config: Qwen3MoeConfig,
    vision: VisionConfig,
    report: dict[str, Any],
    *,
    settings: TrainSettings,
    params: int,
    tokens: int,
) -> str:
    """The model card, with the held-out accuracy and docstring-answer rate of this build."""
    run = report["settings"]
    seed, steps, vision_steps = run["seed"], run["steps"], run["vision_steps"]
    tower = vision.vision_config
    merge, tokens_per_image = vision.projector["merge"], vision.num_image_tokens
    return f"""# LocalMoE tiny vision-language MoE

The embedded default model of LocalMoE: a toy Qwen3-MoE language model with a small vision
tower, generated locally by `localmoe build tiny --seed {seed} --steps {steps}`
(vision warm-up: {vision_steps} steps). Nothing was downloaded. It exists so the whole serving
stack (Triton, the MoE engine, the vision encoder, the gateway, expert-load metrics) runs on a
laptop CPU. It names the colour and shape of a drawn picture; its text is word-like English
built from the Python standard library's docstrings, not sensible answers.

## Measured at build time

{_measured(report)}
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

## Vision

- `vision/config.json`: the tower's `transformers` config under `vision_config`
  (`model_type: {tower["model_type"]}`{_tower_facts(tower)}), the projector
  (`{vision.projector["type"]}`: each {merge}x{merge} block of output positions
  concatenated, then Linear-GELU-Linear to {vision.text_hidden_size}), image size
  {vision.image_size}, mean {list(vision.mean)}, std {list(vision.std)}
- `vision/model.safetensors`: tower (`tower.*`) and projector (`projector.*`) weights; load
  them with `moe_engine.vision.VisionEncoder.from_dir(model_dir)`
- Every image is resized to {vision.image_size}x{vision.image_size} (aspect not kept) and
  becomes **{tokens_per_image} tokens**: the prompt's `<|image|>` token is replaced by
  {tokens_per_image} placeholder ids `V + k*{tokens_per_image} …` (V the vocabulary size, k the
  image's index) embedded from the request's prompt table, TensorRT-LLM's way
- The tower is a small ResNet rather than a ViT: on two CPU cores a SigLIP ViT trained from
  scratch learnt the shapes several times slower (about 60% of shapes right after 300 warm-up
  steps, against 95% for the ResNet); `moe_engine.vision` loads either

## Tokenizer

Byte-level BPE trained with `tokenizers` on the corpus below (`tokenizer.json`); any UTF-8
text round-trips exactly. Special tokens `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`,
`<|image|>`; ChatML chat template in `tokenizer_config.json` (list content: text parts, and
`image` / `image_url` parts as `<|image|>`, joined by newlines); generation stops at
`<|im_end|>` or `<|endoftext|>`.

## Training

1. Vision warm-up (classification pre-training): the tower alone, {vision_steps} AdamW steps of
   64 drawn images, classifying colour and shape with two linear heads on its mean-pooled
   outputs; the heads are discarded afterwards. It only gets the tower started fast:
   everything after trains end to end.
2. Joint stage, {steps} AdamW steps, each of three parts:
   - {settings.batch_size} x {settings.seq_len} tokens of text: prose paragraphs from the
     docstrings of this machine's Python standard library, as plain documents and as ChatML
     question/answer pairs ({tokens:,} tokens); causal-LM loss plus the router
     load-balancing loss, as before there were images;
   - {run["vqa_batch"]} image questions ("What is in this image?" → "A red circle.", "What colour
     is the shape?" → "Red.", "What shape is this?" → "A circle.", a few phrasings each,
     sometimes two images) about pictures drawn with Pillow: one circle, square or triangle in
     red, green, blue, yellow, orange or purple, anywhere, a quarter to two thirds of the
     image, on plain or noisy grey backgrounds, images {40} to {320} pixels a side and of any
     aspect, some JPEG-compressed ({run["image_pool"]} pictures);
   - {run["doc_batch"]} docstring questions ({run["doc_answers"]} pairs: every top-level
     standard library module and the first few functions of fifteen everyday ones such as
     json, os.path, re and shutil, answered with the docstring's first sentence).
   The image and docstring questions have loss on the answer only (labels -100 elsewhere). The
   vision tower and projector learn with the language model (at {settings.peak_lr} x 0.3; the
   ResNet keeps its warm-up BatchNorm statistics; image answers weigh twice).

Seed {seed}, {settings.num_threads} CPU threads. The same seed rebuilds byte-identical weights
and tokenizer on the same machine.
"""

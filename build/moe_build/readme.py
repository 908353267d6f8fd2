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
    vqa, docs, tools = report["vqa"], report["docstrings"], report["tools"]
    if vqa is None or docs is None or tools is None:
        return "Not measured: this build ran with evaluation off.\n"
    return f"""- Held-out images ({vqa["held_out_images"]} drawn pictures no training step saw, seed
  {vqa["held_out_seed"]}), greedy answers: **{vqa["what"]:.1%}** of "What is in this image?"
  answers name both the right colour and the right shape (and no other); colour questions
  {vqa["colour"]:.1%} right, shape questions {vqa["shape"]:.1%} right.
- Docstring questions ("What does the json module do?", "What does json.dumps do?", on the
  {docs["questions"]} training pairs: a memorisation check): **{docs["rate"]:.1%}** of greedy
  answers start right (modules {docs["modules"]:.1%}, functions {docs["functions"]:.1%});
  criterion: {DOC_CRITERION}.
- Tool use ({_turns(tools)} unseen turns, half of them about cities no training turn names;
  greedy, no grammar helping): **{tools["call"]:.1%}** of single calls exactly right (the
  function's name and every argument), two calls at once {tools["calls"]:.1%}; a tool's result
  put into the expected sentence {tools["reply"]:.1%}; answered in text where no listed tool
  fits {tools["text"]:.1%}.
- The same numbers, examples and the settings are in `vision/eval.json`.
"""


def _turns(tools: dict[str, Any]) -> int:
    return sum(tools["turns"].values())


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
(vision warm-up: {vision_steps} steps, tool warm-up: {run["tool_steps"]}). Nothing was
downloaded. It exists so the whole serving stack (Triton, the MoE engine, the vision encoder,
tool calls, the gateway, expert-load metrics) runs on a laptop CPU. It names the colour and
shape of a drawn picture and calls a listed tool when asked (the weather, the time, a sum);
its text is word-like English built from the Python standard library's docstrings, not
sensible answers.

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
`<|im_end|>` or `<|endoftext|>`. With `tools` the template writes them as Qwen2.5, Qwen3 and
Hermes do: a system turn `# Tools` with each function's JSON inside `<tools>`…`</tools>`; an
assistant's calls as `<tool_call>\n{{"name": …, "arguments": …}}\n</tool_call>` blocks (the
two tags are added tokens, kept when decoding); results are `tool` turns. A space before a
capital is a token of its own and digits go one by one, so a city or a number is the same
tokens in a question and in the call that copies it.

## Training

1. Vision warm-up (classification pre-training): the tower alone, {vision_steps} AdamW steps of
   64 drawn images, classifying colour and shape with two linear heads on its mean-pooled
   outputs; the heads are discarded afterwards. It only gets the tower started fast:
   everything after trains end to end.
2. Tool warm-up: the attention layers alone (everything else stays at its initialisation),
   {run["tool_steps"]} AdamW steps of {run["copy_batch"]} short turns that copy from the
   conversation, rendered without their tool list: a question and the call that answers it
   ("What is the weather in Oslo?" → `get_weather` with `{{"city":"Oslo"}}`, "Add 12 and 30."
   → `add`), or a call, its result and the sentence it becomes ("It is sunny and 21 degrees in
   Oslo."). Copying arrives late and suddenly (an induction-style head); learnt here first, it
   is kept by the joint stage, which goes on training these short turns
   ({run["copy_batch"] // 2} a step) beside whole ones.
3. Joint stage, {steps} AdamW steps, each of four parts:
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
     json, os.path, re and shutil, answered with the docstring's first sentence);
   - {run["tool_batch"]} tool-use turns rendered by the chat template ({run["tool_turns"]}
     turns: weather, local time, adding, multiplying, searching the docs, each under a few
     function and parameter names; about half call one tool, one in ten of those two, a fifth
     put a tool's result into a sentence, the rest answer in text, among them questions no
     listed tool fits), weighing twice.
   The image, docstring and tool questions have loss on the answer only (labels -100 elsewhere). The
   vision tower and projector learn with the language model (at {settings.peak_lr} x 0.3; the
   ResNet keeps its warm-up BatchNorm statistics; image answers weigh twice).

Seed {seed}, {settings.num_threads} CPU threads. The same seed rebuilds byte-identical weights
and tokenizer on the same machine.
"""

"""`localmoe build tiny`: generate the embedded default model, a tiny vision-language MoE.

A Qwen3-MoE checkpoint at the top level plus `vision/` (a ResNet tower and projector, see
`moe_engine.vision`), trained here on docstring prose, docstring questions and drawn shapes.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from tqdm import tqdm
from transformers import Qwen3MoeForCausalLM

from moe_build.checkpoint import save_checkpoint, write_json
from moe_build.corpus import ENDOFTEXT, IM_END, build_corpus
from moe_build.docqa import DocAnswer, doc_answers, doc_samples
from moe_build.evaluate import HELD_OUT_IMAGES, doc_answer_rate, tool_use_rate, vqa_accuracy
from moe_build.readme import DOC_CRITERION, readme
from moe_build.shapes import random_images
from moe_build.tokenizer import save_tokenizer, train_tokenizer
from moe_build.tools import (
    HELD_OUT_CITIES,
    copying_samples,
    tool_samples,
    tool_turns,
    tool_vocabulary,
)
from moe_build.train import (
    MAX_POSITIONS,
    ChatData,
    TrainSettings,
    seeded,
    threads,
    tiny_config,
    token_stream,
    train,
)
from moe_build.vision_train import labels, pixel_tensor, pretrain_vision
from moe_build.vqa import vqa_samples, vqa_vocabulary
from moe_engine.vision import VisionConfig, VisionModel, save_vision, tiny_vision_config

DEFAULT_STEPS = 180
DEFAULT_VISION_STEPS = 400
DEFAULT_TOOL_STEPS = 400
VOCAB_SIZE = 4096
IMAGE_POOL = 3000  # drawn once; the warm-up and the joint stage both sample from it
VQA_SAMPLES = 8000
TOOL_TURNS = 4000
COPY_TURNS = 6000  # about 4500 of them copy (calls, results): the warm-up's short form
HELD_OUT_TOOL_TURNS = 160
HELD_OUT_SEED = 1_000_000  # plus the build's seed: images no training step has seen


def build_tiny_model(
    out_dir: Path,
    *,
    seed: int = 0,
    steps: int | None = None,
    vision_steps: int | None = None,
    tool_steps: int | None = None,
    evaluate: bool = True,
    progress: bool = True,
) -> Path:
    """Generate the tiny vision-language MoE in Hugging Face format into out_dir; returns it.

    Everything is made here from the local Python standard library and Pillow (corpus,
    tokenizer, drawn images, weights); nothing is downloaded. `steps` counts the joint
    training steps, `vision_steps` the vision tower's warm-up, `tool_steps` the attention
    layers' warm-up on short tool calls; `evaluate` runs the held-out checks the build prints
    and records (tests that rebuild often turn it off). The same seed gives byte-identical
    weights and tokenizer on the same machine. The model is built in a sibling
    `<name>.tmp` folder and renamed into place, so `out_dir` either holds a complete model or
    does not exist; an existing `out_dir` is replaced.
    """
    out_dir = Path(out_dir)
    steps = DEFAULT_STEPS if steps is None else steps
    vision_steps = DEFAULT_VISION_STEPS if vision_steps is None else vision_steps
    tool_steps = DEFAULT_TOOL_STEPS if tool_steps is None else tool_steps
    if min(steps, vision_steps, tool_steps) < 0:
        raise ValueError(f"steps must be >= 0, got {steps}, {vision_steps} and {tool_steps}")
    staging = out_dir.with_name(out_dir.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)  # left behind by a build that was killed outright
    staging.mkdir(parents=True)
    try:
        _build(
            staging,
            seed=seed,
            steps=steps,
            vision_steps=vision_steps,
            tool_steps=tool_steps,
            evaluate=evaluate,
            progress=progress,
        )
        _move_into_place(staging, out_dir)
    except BaseException:  # KeyboardInterrupt too: never leave a half-built model behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _build(
    out_dir: Path,
    *,
    seed: int,
    steps: int,
    vision_steps: int,
    tool_steps: int,
    evaluate: bool,
    progress: bool,
) -> None:
    started = time.monotonic()
    corpus = build_corpus(progress=progress)
    docs = doc_answers()
    with tqdm(total=3, desc="tokenizer", unit="step", disable=not progress) as bar:
        texts = corpus.tokenizer_texts + vqa_vocabulary() + tool_vocabulary()
        tokenizer = train_tokenizer(texts, VOCAB_SIZE)
        bar.update()
        save_tokenizer(tokenizer, out_dir, model_max_length=MAX_POSITIONS)
        bar.update()
        tokens = token_stream(corpus.training_texts, tokenizer, seed=seed)
        bar.update()

    eos_id, pad_id = tokenizer.token_to_id(IM_END), tokenizer.token_to_id(ENDOFTEXT)
    config = tiny_config(tokenizer.get_vocab_size(), eos_token_id=eos_id, pad_token_id=pad_id)
    vision_config = tiny_vision_config(config.hidden_size)
    settings = TrainSettings()
    images = random_images(IMAGE_POOL, seed, progress=progress)
    pixels = pixel_tensor(images, vision_config, progress=progress, desc="preprocessing")
    with seeded(seed), threads(settings.num_threads):
        vision = VisionModel(vision_config)
        generator = torch.Generator().manual_seed(seed)
        warmup_accuracy = pretrain_vision(
            vision,
            pixels,
            labels(images),
            steps=vision_steps,
            generator=generator,
            progress=progress,
        )
    chat = ChatData(
        vision=vision,
        pixels=pixels,
        vqa=vqa_samples(
            tokenizer,
            images,
            num_image_tokens=vision_config.num_image_tokens,
            count=VQA_SAMPLES,
            seed=seed,
        ),
        docs=doc_samples(tokenizer, docs, copies=4, seed=seed),
        tools=sorted(
            tool_samples(tokenizer, tool_turns(TOOL_TURNS, seed=seed, docs=docs)),
            key=lambda sample: len(sample.ids),
        ),
        copying=copying_samples(tokenizer, tool_turns(COPY_TURNS, seed=seed + 1)),
        copy_steps=tool_steps,
        pad_id=pad_id,
    )
    model = train(
        config, tokens, steps=steps, seed=seed, settings=settings, chat=chat, progress=progress
    )

    report: dict[str, Any] = {
        "settings": {
            "seed": seed,
            "steps": steps,
            "vision_steps": vision_steps,
            "tool_steps": tool_steps,
            "vision_warmup_batch_accuracy": warmup_accuracy,
            "image_pool": IMAGE_POOL,
            "vqa_samples": VQA_SAMPLES,
            "vqa_batch": chat.vqa_batch,
            "doc_batch": chat.doc_batch,
            "doc_answers": len(docs),
            "tool_batch": chat.tool_batch,
            "copy_batch": chat.copy_batch,
            "tool_turns": TOOL_TURNS,
            "threads": settings.num_threads,
        },
        "vqa": None,
        "docstrings": None,
        "tools": None,
    }
    if evaluate:
        with threads(settings.num_threads):
            report |= _evaluate(
                model, vision, vision_config, tokenizer, docs, seed=seed, progress=progress
            )

    with tqdm(total=3, desc="saving", unit="step", disable=not progress) as bar:
        save_checkpoint(model, out_dir, generation_config=_generation_config(eos_id, pad_id))
        bar.update()
        save_vision(out_dir, vision_config, vision)
        # Wall time of this build up to here: what docs cite (it depends on the machine's load).
        report["settings"]["build_wall_s"] = round(time.monotonic() - started, 1)
        write_json(out_dir / "vision" / "eval.json", report)
        bar.update()
        facts = {"params": model.num_parameters(), "tokens": tokens.numel()}
        text = readme(config, vision_config, report, settings=settings, **facts)
        (out_dir / "README.md").write_text(text, encoding="utf-8")
        bar.update()


def _evaluate(
    model: Qwen3MoeForCausalLM,
    vision: VisionModel,
    config: VisionConfig,
    tokenizer: Tokenizer,
    docs: list[DocAnswer],
    *,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    held_out = random_images(HELD_OUT_IMAGES, HELD_OUT_SEED + seed)
    pixels = pixel_tensor(held_out, config, progress=False)
    seen = vqa_accuracy(
        model,
        vision,
        tokenizer,
        held_out,
        pixels,
        num_image_tokens=config.num_image_tokens,
        progress=progress,
    )
    answered = doc_answer_rate(model, tokenizer, docs, progress=progress)
    # Unseen turns (another seed), half of them about cities no training turn names.
    turns = tool_turns(HELD_OUT_TOOL_TURNS // 2, seed=HELD_OUT_SEED + seed, docs=docs)
    turns += tool_turns(
        HELD_OUT_TOOL_TURNS // 2, seed=HELD_OUT_SEED + seed + 1, cities=HELD_OUT_CITIES
    )
    tools = tool_use_rate(model, tokenizer, turns, progress=progress)
    print(
        f"held-out accuracy: {seen['what']:.1%} of {HELD_OUT_IMAGES} unseen images named by "
        f"colour and shape (colour question {seen['colour']:.1%}, shape question "
        f"{seen['shape']:.1%}); docstring answers starting right: {answered['rate']:.1%}; "
        f"tool calls exactly right: {tools['call']:.1%} (two at once {tools['calls']:.1%}), "
        f"results put into words {tools['reply']:.1%}, text where no tool fits "
        f"{tools['text']:.1%}",
        flush=True,
    )
    return {
        "vqa": seen | {"held_out_images": HELD_OUT_IMAGES, "held_out_seed": HELD_OUT_SEED + seed},
        "docstrings": answered | {"criterion": DOC_CRITERION},
        "tools": tools | {"held_out_cities": list(HELD_OUT_CITIES)},
    }


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

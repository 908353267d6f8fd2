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
from moe_build.evaluate import HELD_OUT_IMAGES, doc_answer_rate, vqa_accuracy
from moe_build.readme import DOC_CRITERION, readme
from moe_build.shapes import random_images
from moe_build.tokenizer import save_tokenizer, train_tokenizer
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
VOCAB_SIZE = 4096
IMAGE_POOL = 3000  # drawn once; the warm-up and the joint stage both sample from it
VQA_SAMPLES = 8000
HELD_OUT_SEED = 1_000_000  # plus the build's seed: images no training step has seen


def build_tiny_model(
    out_dir: Path,
    *,
    seed: int = 0,
    steps: int | None = None,
    vision_steps: int | None = None,
    evaluate: bool = True,
    progress: bool = True,
) -> Path:
    """Generate the tiny vision-language MoE in Hugging Face format into out_dir; returns it.

    Everything is made here from the local Python standard library and Pillow (corpus,
    tokenizer, drawn images, weights); nothing is downloaded. `steps` counts the joint
    training steps, `vision_steps` the vision tower's warm-up; `evaluate` runs the held-out
    checks the build prints and records (tests that rebuild often turn it off). The same seed gives
    byte-identical weights and tokenizer on the same machine. The model is built in a sibling
    `<name>.tmp` folder and renamed into place, so `out_dir` either holds a complete model or
    does not exist; an existing `out_dir` is replaced.
    """
    out_dir = Path(out_dir)
    steps = DEFAULT_STEPS if steps is None else steps
    vision_steps = DEFAULT_VISION_STEPS if vision_steps is None else vision_steps
    if steps < 0 or vision_steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps} and {vision_steps}")
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
            evaluate=evaluate,
            progress=progress,
        )
        _move_into_place(staging, out_dir)
    except BaseException:  # KeyboardInterrupt too: never leave a half-built model behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _build(
    out_dir: Path, *, seed: int, steps: int, vision_steps: int, evaluate: bool, progress: bool
) -> None:
    started = time.monotonic()
    corpus = build_corpus(progress=progress)
    docs = doc_answers()
    with tqdm(total=3, desc="tokenizer", unit="step", disable=not progress) as bar:
        tokenizer = train_tokenizer(corpus.tokenizer_texts + vqa_vocabulary(), VOCAB_SIZE)
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
            "vision_warmup_batch_accuracy": warmup_accuracy,
            "image_pool": IMAGE_POOL,
            "vqa_samples": VQA_SAMPLES,
            "vqa_batch": chat.vqa_batch,
            "doc_batch": chat.doc_batch,
            "doc_answers": len(docs),
            "threads": settings.num_threads,
        },
        "vqa": None,
        "docstrings": None,
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
    print(
        f"held-out accuracy: {seen['what']:.1%} of {HELD_OUT_IMAGES} unseen images named by "
        f"colour and shape (colour question {seen['colour']:.1%}, shape question "
        f"{seen['shape']:.1%}); docstring answers starting right: {answered['rate']:.1%}",
        flush=True,
    )
    return {
        "vqa": seen | {"held_out_images": HELD_OUT_IMAGES, "held_out_seed": HELD_OUT_SEED + seed},
        "docstrings": answered | {"criterion": DOC_CRITERION},
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

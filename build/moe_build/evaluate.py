"""Held-out checks the build prints and records: does the model see, and does it answer the
question asked? Greedy generation with the trained Hugging Face model and vision tower."""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer
from tqdm import tqdm
from transformers import Qwen3MoeForCausalLM

from moe_build.chat import embed_with_images, encode_chat, render_prompt
from moe_build.corpus import ENDOFTEXT, IM_END
from moe_build.docqa import DocAnswer, first_words
from moe_build.shapes import COLOURS, SHAPES, DrawnImage
from moe_build.tools import ToolTurn, render
from moe_build.vqa import COLOUR, SHAPE, WHAT
from moe_engine.vision import VisionModel

HELD_OUT_IMAGES = 360  # 20 per colour-shape pair
_WORDS = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Prompt:
    ids: tuple[int, ...]  # chat.IMAGE_SLOT where features go
    images: tuple[int, ...] = ()


@torch.no_grad()
def greedy(
    model: Qwen3MoeForCausalLM,
    tokenizer: Tokenizer,
    prompts: Sequence[Prompt],
    *,
    features: torch.Tensor | None = None,
    max_new_tokens: int = 12,
    progress: bool = True,
    desc: str = "eval",
) -> list[str]:
    """The greedy continuation of each prompt, decoded, up to `<|im_end|>` or `<|endoftext|>`.

    Prompts of equal length run as one batch (no padding, so positions are what the engine
    uses); `features` is `[images, F, hidden]`, the rows `Prompt.images` index.
    """
    stops = {tokenizer.token_to_id(IM_END), tokenizer.token_to_id(ENDOFTEXT)}
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        by_length[len(prompt.ids)].append(i)
    answers: list[list[int]] = [[] for _ in prompts]
    for rows in tqdm(by_length.values(), desc=desc, unit="batch", disable=not progress):
        ids = torch.tensor([prompts[i].ids for i in rows])
        images = [image for i in rows for image in prompts[i].images]
        table = features[torch.tensor(images)] if images else None
        out = model(inputs_embeds=embed_with_images(model, ids, table), use_cache=True)
        done = torch.zeros(len(rows), dtype=torch.bool)
        for _ in range(max_new_tokens):
            next_ids = out.logits[:, -1].argmax(-1)
            for k, token in enumerate(next_ids.tolist()):
                done[k] |= token in stops
                if not done[k]:
                    answers[rows[k]].append(token)
            if done.all():
                break
            out = model(input_ids=next_ids[:, None], cache=out.cache, use_cache=True)
    return [tokenizer.decode(a) for a in answers]


def names(answer: str, colour: str | None, shape: str | None) -> bool:
    """Whether the answer says exactly the right colour and shape (and no other of either)."""
    words = set(_WORDS.findall(answer.lower()))
    said_colours = words & set(COLOURS) | ({"purple"} if "violet" in words else set())
    said_shapes = words & set(SHAPES)
    return (colour is None or said_colours == {colour}) and (
        shape is None or said_shapes == {shape}
    )


def vqa_accuracy(
    model: Qwen3MoeForCausalLM,
    vision: VisionModel,
    tokenizer: Tokenizer,
    images: Sequence[DrawnImage],
    pixels: torch.Tensor,
    *,
    num_image_tokens: int,
    progress: bool = True,
) -> dict[str, object]:
    """Accuracy on unseen images: 'What is in this image?' (colour and shape both right),
    and a colour and a shape question on every image (that one word right)."""
    with torch.no_grad():
        features = vision(pixels)
    rng = random.Random(0)
    kinds = {"what": WHAT, "colour": COLOUR, "shape": SHAPE}
    result: dict[str, object] = {}
    for kind, phrasings in kinds.items():
        prompts = []
        for i in range(len(images)):
            sample = encode_chat(
                tokenizer,
                render_prompt([None, rng.choice(phrasings)]),
                "",
                images=(i,),
                num_image_tokens=num_image_tokens,
            )
            prompts.append(Prompt(sample.ids[: sample.prompt_len], (i,)))
        answers = greedy(
            model, tokenizer, prompts, features=features, progress=progress, desc=f"eval {kind}"
        )
        right = [
            names(
                answer,
                image.colour if kind != "shape" else None,
                image.shape if kind != "colour" else None,
            )
            for answer, image in zip(answers, images, strict=True)
        ]
        result[kind] = sum(right) / len(right)
        if kind == "what":
            result["examples"] = [
                {"truth": f"{i.colour} {i.shape}", "answer": a}
                for i, a in list(zip(images, answers, strict=True))[:6]
            ]
    return result


def doc_answer_rate(
    model: Qwen3MoeForCausalLM,
    tokenizer: Tokenizer,
    answers: Sequence[DocAnswer],
    *,
    progress: bool = True,
) -> dict[str, object]:
    """How often the greedy answer to 'What does the X module do?' / 'What does X do?' starts
    with the first three words of X's docstring summary (words: lower-cased letters/digits)."""
    prompts = []
    for doc in answers:
        question = (
            f"What does the {doc.name} module do?" if doc.is_module else f"What does {doc.name} do?"
        )
        sample = encode_chat(tokenizer, render_prompt([question]), "")
        prompts.append(Prompt(sample.ids[: sample.prompt_len]))
    replies = greedy(model, tokenizer, prompts, progress=progress, desc="eval docstrings")
    right = [
        first_words(reply) == first_words(doc.summary)
        for reply, doc in zip(replies, answers, strict=True)
    ]
    examples = [
        {"question": doc.name, "expected": doc.summary, "answer": reply}
        for doc, reply in zip(answers, replies, strict=True)
        if doc.name in ("json", "json.dumps", "os.path.join", "re")
    ]
    return {
        "rate": sum(right) / len(right),
        "modules": _rate(right, answers, True),
        "functions": _rate(right, answers, False),
        "questions": len(right),
        "examples": examples,
    }


def _rate(right: list[bool], answers: Sequence[DocAnswer], modules: bool) -> float:
    picked = [r for r, doc in zip(right, answers, strict=True) if doc.is_module == modules]
    return sum(picked) / max(1, len(picked))


def tool_use_rate(
    model: Qwen3MoeForCausalLM,
    tokenizer: Tokenizer,
    turns: Sequence[ToolTurn],
    *,
    progress: bool = True,
) -> dict[str, object]:
    """Greedy answers to unseen tool turns, with no grammar helping: how often a call is the
    exact call expected (name and arguments), a tool result is put into the expected sentence,
    and a question no tool fits is answered in text (no `<tool_call>`)."""
    prompts = []
    for turn in turns:
        sample = encode_chat(tokenizer, render(turn), "")
        prompts.append(Prompt(sample.ids[: sample.prompt_len]))
    replies = greedy(
        model, tokenizer, prompts, max_new_tokens=56, progress=progress, desc="eval tools"
    )
    right: dict[str, list[bool]] = defaultdict(list)
    for turn, reply in zip(turns, replies, strict=True):
        if turn.kind in ("call", "calls"):
            right[turn.kind].append(parse_calls(reply) == list(turn.expected))
        elif turn.kind == "reply":
            right["reply"].append(reply.strip() == turn.answer)
        else:
            right["text"].append("<tool_call>" not in reply and bool(reply.strip()))
    examples = [
        {"kind": turn.kind, "question": turn.messages[-1]["content"], "answer": reply}
        for turn, reply in list(zip(turns, replies, strict=True))[:8]
    ]
    return {kind: sum(r) / len(r) for kind, r in sorted(right.items())} | {
        "turns": {kind: len(r) for kind, r in sorted(right.items())},
        "examples": examples,
    }


def parse_calls(text: str) -> list[tuple[str, dict]]:
    """The `<tool_call>` blocks of an answer as (name, arguments); [] when any is malformed."""
    calls = []
    for block in re.findall(r"<tool_call>\n(.*?)\n</tool_call>", text, flags=re.DOTALL):
        try:
            call = json.loads(block)
        except ValueError:
            return []
        if not isinstance(call, dict) or not isinstance(call.get("arguments"), dict):
            return []
        calls.append((call.get("name"), call["arguments"]))
    return calls

"""Questions and answers about the drawn images: what the tiny model learns to say it sees."""

from __future__ import annotations

import random
from collections.abc import Sequence

from tokenizers import Tokenizer

from moe_build.chat import ChatSample, encode_chat, render_prompt
from moe_build.shapes import COLOURS, SHAPES, DrawnImage

# (question phrasings, answer format) per kind; answers are short and closed-set so a short
# run learns them, and every one names what was asked.
WHAT = (
    "What is in this image?",
    "What do you see?",
    "Describe the image.",
    "What is shown in the picture?",
    "What is this?",
)
COLOUR = (
    "What colour is the shape?",
    "What color is the shape?",
    "Which colour is it?",
    "What colour is this?",
)
SHAPE = (
    "What shape is this?",
    "What shape is in the image?",
    "Which shape do you see?",
)
TWO = ("What is in these images?", "Describe the images.")
SYSTEM_PROMPTS = ("You are a helpful assistant.", "You look at images.")


def answer_for(kind: str, colour: str, shape: str) -> str:
    """The right answer to a question of `kind`: 'what' → 'A red circle.' ('An orange …'),
    'colour' → 'Red.', 'shape' → 'A circle.'."""
    if kind == "colour":
        return f"{colour.capitalize()}."
    if kind == "shape":
        return f"A {shape}."
    article = "An" if colour[0] in "aeiou" else "A"
    return f"{article} {colour} {shape}."


def _describe(image: DrawnImage) -> str:
    return answer_for("what", image.colour, image.shape)


def vqa_samples(
    tokenizer: Tokenizer,
    images: Sequence[DrawnImage],
    *,
    num_image_tokens: int,
    count: int,
    seed: int,
) -> list[ChatSample]:
    """`count` questions about random images of the pool (indices into `images`).

    Half ask what is in the image, a quarter the colour, a quarter the shape; one in ten
    shows two images. The image comes before or after the question, sometimes under a system
    prompt, as clients send them.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        if rng.random() < 0.1:
            first, second = rng.randrange(len(images)), rng.randrange(len(images))
            first_text, second_text = _describe(images[first]), _describe(images[second])
            answer = f"{first_text[:-1]} and {second_text[0].lower()}{second_text[1:]}"
            parts: list[str | None] = [None, None, rng.choice(TWO)]
            picked: tuple[int, ...] = (first, second)
        else:
            index = rng.randrange(len(images))
            kind = rng.choices(("what", "colour", "shape"), weights=(2, 1, 1))[0]
            question = rng.choice({"what": WHAT, "colour": COLOUR, "shape": SHAPE}[kind])
            parts = [None, question] if rng.random() < 0.75 else [question, None]
            image = images[index]
            answer, picked = answer_for(kind, image.colour, image.shape), (index,)
        system = rng.choice(SYSTEM_PROMPTS) if rng.random() < 0.2 else None
        prompt = render_prompt(parts, system)
        out.append(
            encode_chat(tokenizer, prompt, answer, images=picked, num_image_tokens=num_image_tokens)
        )
    return out


def vqa_vocabulary() -> list[str]:
    """Every question and answer wording, for the tokenizer: colour and shape names then get
    tokens of their own rather than being spelt from fragments of docstring words."""
    texts = [*WHAT, *COLOUR, *SHAPE, *TWO]
    for colour in COLOURS:
        for shape in SHAPES:
            texts += [answer_for(kind, colour, shape) for kind in ("what", "colour", "shape")]
    return texts * 20

"""Chat samples with answer-only loss, images embedded the way the engine embeds them.

A sample is the ChatML prompt exactly as the chat template renders it, tokenised on its own
(as the server tokenises a prompt), then the answer and `<|im_end|>`, tokenised on their own
(as the model generates them). Each `<|image|>` token is expanded into F image slots, the
positions the engine fills from the prompt table; in training the vision model's output for
that image goes there. Labels are -100 everywhere but the answer and its `<|im_end|>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer
from transformers import Qwen3MoeForCausalLM

from moe_build.corpus import IM_END, IM_START

IMAGE_SLOT = -1  # an input id that marks an image feature position
IGNORE = -100  # cross-entropy's ignore_index: no loss on prompt tokens


@dataclass(frozen=True)
class ChatSample:
    """One turn: input ids (IMAGE_SLOT where image features go), labels, and its images."""

    ids: tuple[int, ...]
    labels: tuple[int, ...]
    images: tuple[int, ...] = ()  # indices into the caller's pixel tensor, in prompt order
    answer: str = ""

    @property
    def prompt_len(self) -> int:
        """Tokens before the answer: what the server would prefill."""
        return self.labels.count(IGNORE)


def render_prompt(parts: Sequence[str | None], system: str | None = None) -> str:
    """The chat template's output for one user turn: text parts, None for an image part."""
    content = "\n".join("<|image|>" if part is None else part for part in parts)
    prefix = "" if system is None else f"{IM_START}system\n{system}{IM_END}\n"
    return f"{prefix}{IM_START}user\n{content}{IM_END}\n{IM_START}assistant\n"


def encode_chat(
    tokenizer: Tokenizer,
    prompt: str,
    answer: str,
    *,
    images: tuple[int, ...] = (),
    num_image_tokens: int = 0,
) -> ChatSample:
    """Tokenise one prompt and its answer; every `<|image|>` becomes `num_image_tokens` slots."""
    image_id = tokenizer.token_to_id("<|image|>")
    prompt_ids: list[int] = []
    for token in tokenizer.encode(prompt).ids:
        prompt_ids += [IMAGE_SLOT] * num_image_tokens if token == image_id else [token]
    if prompt_ids.count(IMAGE_SLOT) != len(images) * num_image_tokens:
        raise ValueError(f"prompt has a different number of images than {len(images)}")
    answer_ids = [*tokenizer.encode(answer).ids, tokenizer.token_to_id(IM_END)]
    return ChatSample(
        ids=tuple(prompt_ids + answer_ids),
        labels=(IGNORE,) * len(prompt_ids) + tuple(answer_ids),
        images=images,
        answer=answer,
    )


def chat_loss(
    model: Qwen3MoeForCausalLM,
    samples: Sequence[ChatSample],
    image_features: torch.Tensor | None,
    *,
    pad_id: int,
    groups: Sequence[int] | None = None,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Answer-token cross-entropy of a right-padded batch (causal: padding never leaks).

    `image_features` is `[images, F, hidden]`, the rows for every sample's images in order.
    With `groups` (one label per sample) each group's token mean is taken on its own and the
    means are added (times `weights[group]`), so a task with short answers is not drowned by
    one with long answers.
    """
    length = max(len(s.ids) for s in samples)
    ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE, dtype=torch.long)
    for row, sample in enumerate(samples):
        ids[row, : len(sample.ids)] = torch.tensor(sample.ids)
        labels[row, : len(sample.labels)] = torch.tensor(sample.labels)
    embeds = embed_with_images(model, ids, image_features)
    logits = model(inputs_embeds=embeds, use_cache=False).logits[:, :-1]
    targets = labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
    )
    counted = targets != IGNORE
    row_groups = torch.tensor(groups if groups is not None else [0] * len(samples))
    total = logits.new_zeros(())
    for group in row_groups.unique().tolist():
        rows = row_groups == group
        weight = 1.0 if weights is None else weights[group]
        total = total + weight * losses[rows].sum() / counted[rows].sum().clamp(min=1)
    return total


def embed_with_images(
    model: Qwen3MoeForCausalLM, ids: torch.Tensor, image_features: torch.Tensor | None
) -> torch.Tensor:
    """Token embeddings with IMAGE_SLOT positions filled, in order, from `image_features`."""
    slots = ids == IMAGE_SLOT
    embeds = model.get_input_embeddings()(ids.masked_fill(slots, 0))
    if image_features is None or not slots.any():
        return embeds
    rows = image_features.reshape(-1, image_features.shape[-1]).to(embeds.dtype)
    if rows.shape[0] != int(slots.sum()):
        raise ValueError(f"{int(slots.sum())} image slots but {rows.shape[0]} feature rows")
    return embeds.masked_scatter(slots[..., None], rows)

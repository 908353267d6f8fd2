"""Image placeholders in a prompt, the TensorRT-LLM way, and the per-token ids that tell images
apart.

The chat template renders each image as one image token. Preprocessing replaces the k-th (0-based,
in prompt order) by F ids `V + k*F … V + k*F + F - 1`, V the LLM's vocabulary size and F the
vision encoder's features per image: the rows of the request's prompt table, which holds the
images' features concatenated in order. No Triton or torch imports: unit-tested on its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from moe_engine.python_backend.serving import InputError

_MASK_63 = (1 << 63) - 1


def vision_image_token(model_dir: str | Path) -> str | None:
    """The image token of a vision checkpoint (`vision/config.json`), None for a text-only one."""
    path = Path(model_dir) / "vision" / "config.json"
    if not path.is_file():
        return None
    return str(json.loads(path.read_text())["image_token"])


def count_placeholders(ids: Sequence[int], image_token_id: int | None) -> int:
    """How many image tokens `ids` holds (0 for a model without one)."""
    return 0 if image_token_id is None else sum(1 for t in ids if t == image_token_id)


def check_placeholders(ids: Sequence[int], image_token_id: int | None, num_images: int) -> None:
    """InputError unless the prompt has exactly one image token per image sent."""
    found = count_placeholders(ids, image_token_id)
    if found != num_images:
        raise InputError(
            f"the prompt has {found} image placeholder{'' if found == 1 else 's'} but "
            f"{num_images} image{' was' if num_images == 1 else 's were'} sent"
        )


def expand_placeholders(
    ids: Sequence[int], image_token_id: int | None, *, num_images: int, features: int, vocab: int
) -> list[int]:
    """`ids` with the k-th image token replaced by the ids of image k's `features` table rows."""
    check_placeholders(ids, image_token_id, num_images)
    out: list[int] = []
    k = 0
    for t in ids:
        if t == image_token_id:
            out.extend(range(vocab + k * features, vocab + (k + 1) * features))
            k += 1
        else:
            out.append(int(t))
    return out


def image_key(data: bytes) -> int:
    """A 63-bit, never-zero key of an image's bytes (0 marks text tokens)."""
    return (int.from_bytes(hashlib.sha256(data).digest()[:8], "big") & _MASK_63) or 1


def table_extra_ids(
    ids: Sequence[int], keys: Sequence[int], *, features: int, vocab: int
) -> list[int]:
    """TensorRT-LLM's `prompt_table_extra_ids`: one per token, the image's key on its rows, 0 on
    text, so equal ids from different images never look alike to a KV-cache reuse."""
    return [0 if t < vocab else keys[(t - vocab) // features] for t in ids]

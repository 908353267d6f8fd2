"""A request's prompt checked against the model: text ids, and image ids backed by a prompt table.

TensorRT-LLM's prompt tuning semantics, which its multimodal models reuse: an id `V + i` (V the
vocabulary size) stands for row `i` of the request's `prompt_embedding_table`, whose rows are
fed to the model in place of token embeddings. The engine has no KV reuse, so the per-token
`prompt_table_extra_ids` (which tell TensorRT-LLM's cache two images apart) are only checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Prompt:
    """Prompt ids, every one below `vocab + rows`, and the rows for those at or above `vocab`."""

    ids: list[int]
    table: torch.Tensor | None  # [rows, hidden] in the model's dtype; None: text only


def checked_prompt(
    prompt_ids: Sequence[int],
    *,
    vocab_size: int,
    hidden_size: int,
    dtype: torch.dtype,
    prompt_table: torch.Tensor | None = None,
    extra_ids: Sequence[int] | None = None,
) -> Prompt:
    """The prompt the engine may run; ValueError naming the first thing that is wrong."""
    ids = [int(t) for t in prompt_ids]
    if not ids:
        raise ValueError("prompt must contain at least one token")
    rows = 0
    if prompt_table is not None:
        if prompt_table.dim() != 2 or prompt_table.shape[1] != hidden_size:
            raise ValueError(
                f"prompt_embedding_table must be [rows, {hidden_size}], "
                f"got {list(prompt_table.shape)}"
            )
        if not prompt_table.is_floating_point():
            raise ValueError(
                f"prompt_embedding_table must be floating point, not {prompt_table.dtype}"
            )
        rows = prompt_table.shape[0]
    bad = next((t for t in ids if not 0 <= t < vocab_size + rows), None)
    if bad is not None:
        if bad >= vocab_size and prompt_table is None:
            raise ValueError(
                f"prompt token id {bad} is outside the vocabulary [0, {vocab_size}) "
                "and the request has no prompt_embedding_table"
            )
        raise ValueError(
            f"prompt token id {bad} is outside the vocabulary [0, {vocab_size}) "
            f"and the prompt table's ids [{vocab_size}, {vocab_size + rows})"
        )
    if extra_ids is not None and len(extra_ids) != len(ids):
        raise ValueError(
            f"prompt_table_extra_ids has {len(extra_ids)} values for a prompt of {len(ids)} tokens"
        )
    if rows == 0 or all(t < vocab_size for t in ids):
        return Prompt(ids, None)  # a table no id uses changes nothing: don't carry it
    # A copy: the caller's tensor may be a view of a buffer it frees (Triton's input tensors).
    table = prompt_table.to(dtype=dtype, copy=True)
    if not torch.isfinite(table).all():
        raise ValueError("prompt_embedding_table holds a value that is not finite")
    return Prompt(ids, table)

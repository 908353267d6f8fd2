"""The preallocated per-slot key/value cache shared by all running requests."""

from __future__ import annotations

import torch

BLOCK_TOKENS = 64
"""Positions per block when the cache reports its occupancy in TensorRT-LLM's terms (blocks of a
paged pool). Accounting only: the memory is one preallocated tensor, not a pool of pages."""


class KVCache:
    """Keys and values as `[layers, slots, kv_heads, max_seq_len, head_dim]`, allocated once.

    A request owns one slot; its keys for position p live at `[:, slot, :, p]`. Decoding writes
    one position per step in place, so a step never copies a cache that grows with the sequence.
    The engine keeps running requests in slots `0..n-1` so a batch reads `[:, :n]` as a view.
    """

    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        num_kv_heads: int,
        max_seq_len: int,
        head_dim: int,
        dtype: torch.dtype,
    ) -> None:
        shape = (num_layers, num_slots, num_kv_heads, max_seq_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy slot `src`'s first `length` positions into slot `dst` (to keep slots compact)."""
        with torch.inference_mode():
            self.k[:, dst, :, :length] = self.k[:, src, :, :length]
            self.v[:, dst, :, :length] = self.v[:, src, :, :length]

    @property
    def tokens_per_block(self) -> int:
        return min(BLOCK_TOKENS, self.max_seq_len)

    @property
    def max_blocks(self) -> int:
        """Blocks in the whole cache: every slot's `max_seq_len` positions, in blocks."""
        return self.num_slots * self.blocks_for(self.max_seq_len)

    def blocks_for(self, length: int) -> int:
        """Blocks holding a sequence's first `length` positions (a partly filled one counts)."""
        return -(-length // self.tokens_per_block)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

"""Text embeddings from the MoE model: final-norm hidden states, mean-pooled, L2-normalised.

A plain forward pass, no KV cache: the sequences of a batch are packed into one `[tokens,
hidden]` run, so the expert matmuls (most of the work) see every token of every request at
once, while attention stays causal within each sequence (one SDPA call per sequence).

Mean pooling rather than the last token's state: the model was trained for next-token
prediction, not as an embedder, and a causal decoder's last state describes what comes next
more than what was said; the mean over every position's state is the robust choice for a
model not tuned for embeddings (Sentence-BERT's finding), and it does not hinge on one token.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import ModelConfig, resolve_max_seq_len
from .model import MoEModel
from .weights import load_weights


class Embedder:
    """Embeds token sequences with a `MoEModel` of its own (weights loaded once)."""

    def __init__(self, model: MoEModel) -> None:
        self.model = model

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, max_seq_len: int | None = None, dtype: str = "float32"
    ) -> Embedder:
        """Load a checkpoint folder; `max_seq_len` bounds the tokens per input."""
        config = ModelConfig.from_dir(path)
        weights = load_weights(path, config, getattr(torch, dtype))
        return cls(MoEModel(config, weights, resolve_max_seq_len(config, max_seq_len)))

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def max_tokens(self) -> int:
        """The most tokens one input may have (the model's context)."""
        return self.model.max_seq_len

    @torch.inference_mode()
    def hidden_states(self, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Each sequence's final-norm hidden states `[len, hidden]`, from one packed forward."""
        lengths = [len(s) for s in sequences]
        if not lengths or min(lengths) < 1 or max(lengths) > self.max_tokens:
            raise ValueError(f"every sequence needs 1..{self.max_tokens} tokens, got {lengths}")
        m = self.model
        tokens = torch.tensor([t for s in sequences for t in s], dtype=torch.long)
        positions = torch.cat([torch.arange(n) for n in lengths])
        cos, sin = m._cos[positions, None], m._sin[positions, None]

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            del layer  # nothing is cached
            outs = []
            for qs, ks, vs in zip(
                q.split(lengths), k.split(lengths), v.split(lengths), strict=True
            ):
                out = F.scaled_dot_product_attention(
                    qs.transpose(0, 1)[None],
                    ks.transpose(0, 1)[None],
                    vs.transpose(0, 1)[None],
                    is_causal=True,
                    scale=m.scale,
                    enable_gqa=True,
                )
                outs.append(out[0].transpose(0, 1))
            return torch.cat(outs)

        x = m._forward(m._embed(tokens, None), cos, sin, attend)
        return list(x.split(lengths))

    def embed(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """`[len(sequences), hidden]` float32 embeddings, each of unit L2 norm."""
        pooled = [h.float().mean(dim=0) for h in self.hidden_states(sequences)]
        return pool_normalise(torch.stack(pooled))


def pool_normalise(pooled: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    return F.normalize(pooled, p=2.0, dim=-1)

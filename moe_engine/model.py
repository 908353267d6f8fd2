"""The decoder-only MoE forward pass (Qwen3-MoE, Qwen2-MoE, Mixtral) over a slot KV cache."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .config import ModelConfig
from .kv_cache import KVCache
from .weights import DenseMLPWeights, LayerWeights, ModelWeights, MoEWeights

# (layer, q [tokens, heads, dim], k, v [tokens, kv_heads, dim]) -> [tokens, heads, dim]:
# stores k/v in the cache and attends; prefill and decode differ only here.
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class MoEModel:
    """Runs prefill for one sequence and batched single-token decode for many.

    Also counts, per layer and expert, how many tokens the router sent there.
    """

    def __init__(self, config: ModelConfig, weights: ModelWeights, max_seq_len: int) -> None:
        self.config = config
        self.w = weights
        self.dtype = weights.embed.dtype
        self.max_seq_len = max_seq_len
        self.scale = config.head_dim**-0.5
        self.expert_counts = torch.zeros(config.num_layers, config.num_experts, dtype=torch.int64)
        self._cos, self._sin = _rope_tables(config, max_seq_len, self.dtype)
        self._positions = torch.arange(max_seq_len)

    def new_cache(self, num_slots: int) -> KVCache:
        """A KV cache sized for this model with `num_slots` sequences of `max_seq_len`."""
        c = self.config
        return KVCache(
            c.num_layers, num_slots, c.num_kv_heads, self.max_seq_len, c.head_dim, self.dtype
        )

    @torch.inference_mode()
    def prefill(
        self,
        tokens: torch.Tensor,
        cache: KVCache,
        slot: int,
        all_logits: bool = False,
        prompt_table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Process a whole prompt into `slot` (positions 0..len-1) and return float32 logits.

        Returns `[1, vocab]` for the last position, or `[len, vocab]` with `all_logits`. Ids
        `vocab + i` take row `i` of `prompt_table` (`[rows, hidden]`, the model's dtype) as
        their embedding: image features, TensorRT-LLM's way; the caller checked the ids.
        """
        n = tokens.shape[0]
        cos, sin = self._cos[:n, None], self._sin[:n, None]

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            cache.k[layer, slot, :, :n] = k.transpose(0, 1)
            cache.v[layer, slot, :, :n] = v.transpose(0, 1)
            out = F.scaled_dot_product_attention(
                q.transpose(0, 1)[None],
                k.transpose(0, 1)[None],
                v.transpose(0, 1)[None],
                is_causal=True,
                scale=self.scale,
                enable_gqa=True,
            )
            return out[0].transpose(0, 1)

        x = self._forward(self._embed(tokens, prompt_table), cos, sin, attend)
        return self._logits(x if all_logits else x[-1:])

    @torch.inference_mode()
    def decode(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, max_len: int
    ) -> torch.Tensor:
        """One decode step for the sequences in slots `0..n-1`; returns float32 logits `[n, vocab]`.

        `tokens[i]` goes to slot i at `positions[i]` (that slot's current length); `max_len` is
        `max(positions) + 1`, the span attention reads.
        """
        c = self.config
        n, kv_heads, dim = tokens.shape[0], c.num_kv_heads, c.head_dim
        group = c.num_heads // kv_heads
        cos, sin = self._cos[positions, None], self._sin[positions, None]
        # Where each (slot, kv head)'s new key goes in a layer's cache seen as rows of head_dim;
        # the same rows serve every layer, keys and values.
        slot_heads = self._positions[: n * kv_heads].view(n, kv_heads)
        cache_rows = (slot_heads * self.max_seq_len + positions[:, None]).view(-1)
        # Each slot attends to its own filled positions only: 0 there, -inf beyond.
        bias = torch.zeros(n, 1, max_len, dtype=self.dtype)
        bias.masked_fill_(self._positions[:max_len] > positions[:, None, None], -torch.inf)
        bias = bias.repeat_interleave(kv_heads, dim=0)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            k_cache, v_cache = cache.k[layer], cache.v[layer]
            k_cache.view(-1, dim).index_copy_(0, cache_rows, k.reshape(-1, dim))
            v_cache.view(-1, dim).index_copy_(0, cache_rows, v.reshape(-1, dim))
            # Batched matmuls over (slot, kv head) with the query heads of a group as rows:
            # GQA without repeating keys, and cheaper than SDPA for one query per sequence.
            keys = k_cache[:n, :, :max_len].flatten(0, 1)
            values = v_cache[:n, :, :max_len].flatten(0, 1)
            queries = q.reshape(n * kv_heads, group, dim)
            scores = torch.baddbmm(bias, queries, keys.transpose(1, 2), alpha=self.scale)
            probs = scores.softmax(dim=-1, dtype=torch.float32).to(self.dtype)
            return torch.bmm(probs, values).view(n, -1, dim)

        return self._logits(self._forward(self._embed(tokens, None), cos, sin, attend))

    def _embed(self, tokens: torch.Tensor, table: torch.Tensor | None) -> torch.Tensor:
        if table is None:
            return F.embedding(tokens, self.w.embed)
        vocab = self.config.vocab_size
        from_table = tokens >= vocab
        x = F.embedding(tokens.masked_fill(from_table, 0), self.w.embed)
        x[from_table] = table[tokens[from_table] - vocab].to(self.dtype)
        return x

    def _forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend
    ) -> torch.Tensor:
        for i, layer in enumerate(self.w.layers):
            h = self._rms_norm(x, layer.input_norm)
            x = x + self._attention(i, layer, h, cos, sin, attend)
            h = self._rms_norm(x, layer.post_attention_norm)
            x = x + (self._moe(i, layer.moe, h) if layer.moe is not None else _mlp(layer.mlp, h))
        return self._rms_norm(x, self.w.final_norm)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.w.lm_head).float()

    def _attention(
        self,
        i: int,
        layer: LayerWeights,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attend: Attend,
    ) -> torch.Tensor:
        c = self.config
        qk_heads = c.num_heads + c.num_kv_heads
        qkv = h @ layer.qkv if layer.qkv_bias is None else torch.addmm(layer.qkv_bias, h, layer.qkv)
        qkv = qkv.view(h.shape[0], -1, c.head_dim)
        qk, v = qkv[:, :qk_heads], qkv[:, qk_heads:]
        if layer.qk_norm is not None:
            qk = self._rms_norm(qk, layer.qk_norm)
        # rotate_half(x) == roll(x, half) * [-1.., +1..]; the sign lives in the sin table.
        qk = torch.addcmul(qk * cos, torch.roll(qk, c.head_dim // 2, -1), sin)
        out = attend(i, qk[:, : c.num_heads], qk[:, c.num_heads :], v)
        return out.reshape(h.shape[0], -1) @ layer.o_proj

    def _moe(self, i: int, moe: MoEWeights, h: torch.Tensor) -> torch.Tensor:
        top_k = self.config.num_experts_per_tok
        probs = F.softmax(h @ moe.router, dim=-1, dtype=torch.float32)
        weights, experts = probs.topk(top_k, dim=-1)
        if self.config.norm_topk_prob:
            weights /= weights.sum(dim=-1, keepdim=True)
        flat = experts.view(-1)
        counts = torch.bincount(flat, minlength=self.config.num_experts)
        self.expert_counts[i] += counts
        # Sort (token, choice) pairs by expert so each expert's inputs are one contiguous slice.
        order = flat.argsort(stable=True)
        token_of = order // top_k
        xs = h.index_select(0, token_of)
        outs = []
        start = 0
        for e, count in enumerate(counts.tolist()):
            if count:
                gate, up = (xs[start : start + count] @ moe.gate_up[e]).chunk(2, dim=-1)
                outs.append((F.silu(gate) * up) @ moe.down[e])
                start += count
        ys = torch.cat(outs) * weights.view(-1)[order, None].to(self.dtype)
        out = torch.zeros_like(h).index_add_(0, token_of, ys)
        if moe.shared is not None:
            out = out + torch.sigmoid(h @ moe.shared_gate) * _mlp(moe.shared, h)
        return out

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        eps = self.config.rms_norm_eps
        if self.dtype == torch.float32 and weight.dim() == 1:
            return F.rms_norm(x, weight.shape, weight, eps)
        # Reduced precision normalises in float32 and rounds before the weight, as HF does;
        # the 2D q/k-norm weight (one row per head) broadcasts over the last two dims.
        return weight * F.rms_norm(x.float(), x.shape[-1:], eps=eps).to(self.dtype)


def _mlp(w: DenseMLPWeights, h: torch.Tensor) -> torch.Tensor:
    gate, up = (h @ w.gate_up).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ w.down


def _rope_tables(
    config: ModelConfig, max_seq_len: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    dim = config.head_dim
    # Same expression as transformers' default RoPE, so the tables match bit for bit.
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    freqs = torch.arange(max_seq_len).float()[:, None] * inv_freq[None, :]
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat([cos, cos], -1).to(dtype), torch.cat([-sin, sin], -1).to(dtype)

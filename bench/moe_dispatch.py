"""Expert-dispatch variants for `bench/gpu_check.py`: drop-in replacements of
`MoEModel._moe` that never read tensors on the host, so that CUDA graphs can capture a decode step
(the engine's own loop sizes its per-expert slices from counts it reads back, once per layer).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from moe_engine.model import MoEModel
from moe_engine.weights import MoEWeights


def _route(self: MoEModel, moe: MoEWeights, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = F.softmax(h @ moe.router, dim=-1, dtype=torch.float32)
    weights, experts = probs.topk(self.config.num_experts_per_tok, dim=-1)
    if self.config.norm_topk_prob:
        weights /= weights.sum(dim=-1, keepdim=True)
    return weights, experts


def moe_dense(self: MoEModel, i: int, moe: MoEWeights, h: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, weighted by the router (0 for the unchosen)."""
    weights, experts = _route(self, moe, h)
    dense = (
        torch.zeros(h.shape[0], self.config.num_experts, device=h.device)
        .scatter_(1, experts, weights)
        .to(h.dtype)
    )  # [n, E]
    gate, up = torch.matmul(h[None], moe.gate_up).chunk(2, dim=-1)  # [E, n, I]
    out = torch.matmul(F.silu(gate) * up, moe.down)  # [E, n, H]
    return (out * dense.t()[:, :, None]).sum(0)


def moe_gather(self: MoEModel, i: int, moe: MoEWeights, h: torch.Tensor) -> torch.Tensor:
    """Each token's top-k experts' weights gathered (reads only active experts; small batches)."""
    weights, experts = _route(self, moe, h)
    gate_up, down = moe.gate_up[experts], moe.down[experts]  # [n, k, H, 2I], [n, k, I, H]
    gate, up = torch.matmul(h[:, None, None], gate_up).chunk(2, dim=-1)
    out = torch.matmul(F.silu(gate) * up, down)[:, :, 0]  # [n, k, H]
    return (out * weights.to(h.dtype)[:, :, None]).sum(1)


def moe_grouped(self: MoEModel, i: int, moe: MoEWeights, h: torch.Tensor) -> torch.Tensor:
    """Tokens sorted by expert, one grouped GEMM per projection (`torch._grouped_mm`)."""
    k = self.config.num_experts_per_tok
    weights, experts = _route(self, moe, h)
    flat = experts.view(-1)
    order = flat.argsort(stable=True)
    token_of = order // k
    # Not torch.bincount: on CUDA it reads the input's maximum on the host (a sync).
    counts = torch.zeros(self.config.num_experts, dtype=torch.int64, device=h.device)
    ends = counts.scatter_add_(0, flat, torch.ones_like(flat)).cumsum(0).to(torch.int32)
    xs = h.index_select(0, token_of)
    gate, up = torch._grouped_mm(xs, moe.gate_up, offs=ends).chunk(2, dim=-1)
    ys = torch._grouped_mm(F.silu(gate) * up, moe.down, offs=ends)
    ys = ys * weights.view(-1)[order, None].to(h.dtype)
    return torch.zeros_like(h).index_add_(0, token_of, ys)


VARIANTS: dict[str, Callable | None] = {
    "engine": None,  # moe_engine's own: sort, then a loop over the experts that got tokens
    "gather": moe_gather,
    "dense": moe_dense,
    "grouped": moe_grouped,
}

"""Tensor and expert parallelism: the sizes TensorRT-LLM takes, completed and checked up front.

TensorRT-LLM's rule (convert_checkpoint.py and the LLM API alike): the MoE layers split the
`tp` ranks into `moe_tp` × `moe_ep` (tensor-parallel experts × expert-parallel groups), so
`moe_tp * moe_ep == tp`; given one of them the other follows, given neither the experts are
tensor-parallel. A wrong split fails there minutes into loading; here it fails at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.local.trtllm.families import Checkpoint, Family


class ParallelError(ValueError):
    """The requested split cannot work for this checkpoint or these GPUs."""


@dataclass(frozen=True)
class Parallelism:
    """Sizes as TensorRT-LLM names them."""

    tp: int = 1
    pp: int = 1
    moe_tp: int = 1
    moe_ep: int = 1
    attention_dp: bool = False

    @property
    def world_size(self) -> int:
        """GPUs (MPI ranks) one model instance needs."""
        return self.tp * self.pp

    @property
    def tag(self) -> str:
        """A short name for folders: `tp4-ep2`, `tp2-pp2`."""
        parts = [f"tp{self.tp}"]
        if self.moe_ep > 1:
            parts.append(f"ep{self.moe_ep}")
        if self.pp > 1:
            parts.append(f"pp{self.pp}")
        return "-".join(parts)


def resolve(
    checkpoint: Checkpoint,
    family: Family,
    *,
    tp: int = 1,
    pp: int = 1,
    ep: int | None = None,
    moe_tp: int | None = None,
    attention_dp: bool = False,
    gpus: int | None = None,
) -> Parallelism:
    """Complete `ep`/`moe_tp` as TensorRT-LLM does and check every size against the model.

    `gpus` (when given) is how many GPUs the deployment has: the split must fit in them.
    """
    for name, value in (("tp", tp), ("pp", pp), ("ep", ep), ("moe-tp", moe_tp), ("gpus", gpus)):
        if value is not None and value < 1:
            raise ParallelError(f"--{name} must be at least 1, got {value}")
    if ep is None and moe_tp is None:
        moe_tp, ep = tp, 1
    elif moe_tp is None:
        assert ep is not None
        if tp % ep:
            raise ParallelError(f"--ep {ep} does not divide --tp {tp} (moe_tp = tp / ep)")
        moe_tp = tp // ep
    elif ep is None:
        if tp % moe_tp:
            raise ParallelError(f"--moe-tp {moe_tp} does not divide --tp {tp} (ep = tp / moe_tp)")
        ep = tp // moe_tp
    if moe_tp * ep != tp:
        raise ParallelError(
            f"moe_tp × ep must equal tp: {moe_tp} × {ep} = {moe_tp * ep}, not {tp} "
            f"(the MoE layers split the same {tp} tensor-parallel ranks)"
        )
    if pp > 1 and not family.pipeline_parallel:
        raise ParallelError(f"{family.name} has no pipeline parallelism in TensorRT-LLM (--pp 1)")
    _check_model(checkpoint, tp=tp, pp=pp, ep=ep, moe_tp=moe_tp)
    split = Parallelism(tp=tp, pp=pp, moe_tp=moe_tp, moe_ep=ep, attention_dp=attention_dp)
    if gpus is not None and split.world_size > gpus:
        raise ParallelError(
            f"tp × pp = {split.world_size} GPUs per model instance, but --gpus is {gpus}"
        )
    if gpus is not None and gpus % split.world_size:
        raise ParallelError(
            f"--gpus {gpus} is not a multiple of tp × pp = {split.world_size}: GPUs would idle"
        )
    return split


def _check_model(checkpoint: Checkpoint, *, tp: int, pp: int, ep: int, moe_tp: int) -> None:
    heads, kv_heads = checkpoint.num_heads, checkpoint.num_kv_heads
    if heads and heads % tp:
        raise ParallelError(f"--tp {tp} does not divide the {heads} attention heads")
    if kv_heads and kv_heads % tp and tp % kv_heads:
        # TensorRT-LLM splits key/value heads across ranks, or replicates them when fewer.
        raise ParallelError(
            f"--tp {tp} and the {kv_heads} key/value heads: one must divide the other"
        )
    experts = checkpoint.num_experts
    if experts and experts % ep:
        raise ParallelError(f"--ep {ep} does not divide the {experts} experts")
    inter = int(
        checkpoint.config.get("moe_intermediate_size")
        or checkpoint.config.get("intermediate_size")
        or 0
    )
    if inter and inter % moe_tp:
        raise ParallelError(
            f"moe_tp {moe_tp} does not divide the experts' intermediate size {inter}"
        )
    layers = checkpoint.num_layers
    if layers and pp > layers:
        raise ParallelError(f"--pp {pp} is more than the {layers} layers")

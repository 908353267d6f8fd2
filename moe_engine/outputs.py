"""What the engine reports: each request's step outputs, and its load and work counters."""

from __future__ import annotations

from dataclasses import dataclass

TopLogprobs = tuple[list[int], list[float]]  # a token's best ids and their logprobs, descending


@dataclass
class StepOutput:
    """What one request produced in one engine step."""

    request_id: str
    token_ids: list[int]  # new tokens since the previous output; empty on some final outputs
    logprobs: list[float] | None  # one per token in token_ids, when asked for
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "cancelled" | "error" | None
    top_logprobs: list[TopLogprobs] | None = None  # one per token, when num_logprobs > 0


@dataclass(frozen=True)
class IterationStats:
    """What one engine iteration ran; all zero while the engine is idle."""

    scheduled: int = 0  # requests the iteration prefilled or decoded (or both)
    context_requests: int = 0  # requests prefilled
    context_tokens: int = 0  # prompt tokens prefilled
    generation_requests: int = 0  # requests in the decode step


@dataclass
class EngineStats:
    """A snapshot of the engine's load and cumulative work."""

    active: int  # requests holding a slot
    waiting: int  # requests queued for a slot
    max_batch_size: int
    peak_active: int
    decode_steps_total: int
    decode_tokens_total: int
    prefill_tokens_total: int
    finished_total: int
    iterations_total: int = 0  # iterations that ran at least one request
    last_iteration: IterationStats = IterationStats()  # the latest, or zeros when idle
    last_iteration_time: float = 0.0  # time.time() at the end of the latest iteration
    kv_used_blocks: int = 0  # KV-cache blocks holding positions of active requests
    kv_max_blocks: int = 0
    kv_tokens_per_block: int = 0

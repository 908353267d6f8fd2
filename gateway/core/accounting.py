"""What a job's generations produced, choice by choice, and what it costs: usage and the
charge against the caller's token budget (also when the client left half way)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.core import protocol
from gateway.core.backend import Delta
from gateway.core.context import TokenMeter
from gateway.core.jobs import Job
from gateway.errors import UpstreamError

# Tasks nobody awaits (charging a client that went away) must be referenced until they finish.
_background: set[asyncio.Task[None]] = set()


@dataclass(slots=True)
class Choice:
    """One generation's output, accumulated from its deltas."""

    seen: bool = False
    chars: int = 0
    text: list[str] = dataclasses.field(default_factory=list)
    logprobs: list[TokenEntry] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int = 0
    last_at: float | None = None
    """When its latest delta arrived (`time.perf_counter`), for the inter-token latency."""

    def add(self, delta: Delta) -> None:
        """Take in the next delta; a cancelled generation is the upstream's failure (502)."""
        self.seen = True
        if delta.text:
            self.text.append(delta.text)
            self.chars += len(delta.text)
        if delta.logprobs:
            self.logprobs.extend(token_logprobs(delta))
        if delta.num_input_tokens is not None:
            self.input_tokens = delta.num_input_tokens
        if delta.num_output_tokens is not None:
            self.output_tokens = delta.num_output_tokens
        if delta.finish_reason is not None:
            self.finish_reason = _finish_reason(delta.finish_reason)


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One generated token's logprob, and its alternatives when asked for."""

    text: str
    """Its text where the route does not say which token it was (`token_id` None)."""
    logprob: float
    token_id: int | None = None
    top: tuple[tuple[int, float], ...] = ()
    """(token id, logprob) of the most likely tokens at this step, best first."""


def token_logprobs(delta: Delta) -> list[TokenEntry]:
    """The delta's tokens. Without token ids Triton gives the logprobs of a delta's tokens but
    not their strings: the first carries the delta's text, so the tokens concatenate to it."""
    lps = delta.logprobs or ()
    ids, top_ids, top_lps = delta.token_ids, delta.top_ids, delta.top_logprobs
    entries = []
    for i, lp in enumerate(lps):
        token_id = ids[i] if ids is not None and i < len(ids) else None
        top: tuple[tuple[int, float], ...] = ()
        if top_ids is not None and top_lps is not None and i < len(top_ids):
            top = tuple(sorted(zip(top_ids[i], top_lps[i], strict=False), key=lambda t: -t[1]))
        entries.append(TokenEntry(delta.text if i == 0 else "", lp, token_id, top))
    return entries


def usage(job: Job, choices: Sequence[Choice]) -> protocol.Usage:
    """Prompt tokens once per prompt (not per sample), Triton's own count over ours (which
    counts each image as its features, not its one placeholder)."""
    prompt_tokens = 0
    for i, counted in enumerate(job.prompt_tokens):
        reported = choices[i * job.n].input_tokens
        if reported is None:
            reported = counted
        if reported is None:  # a route that does not report it, and a prompt we did not count
            reported = job.image_tokens + job.model.tokenizer.count(
                job.prompts[i], add_special_tokens=job.special_tokens
            )
            # Kept: usage is asked for several times per request (charge, response, metrics).
            job.prompt_tokens[i] = reported
        prompt_tokens += reported
    completion_tokens = sum(c.output_tokens for c in choices)
    return protocol.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


async def charge(meter: TokenMeter | None, job: Job, choices: Sequence[Choice]) -> None:
    """Charge the tokens of the generations that started."""
    used = _used(job, choices)
    if meter is not None and used:
        await meter.charge(used)


def charge_later(meter: TokenMeter | None, job: Job, choices: Sequence[Choice]) -> None:
    """`charge` from a request being cancelled, where an await would be cancelled too."""
    used = _used(job, choices)
    if meter is None or not used:
        return
    try:
        task = asyncio.get_running_loop().create_task(meter.charge(used))
    except RuntimeError:  # finalised after its event loop stopped: nothing left to charge with
        return
    _background.add(task)
    task.add_done_callback(_background.discard)


def _used(job: Job, choices: Sequence[Choice]) -> int:
    return usage(job, choices).total_tokens if any(c.seen for c in choices) else 0


def _finish_reason(reason: str) -> str:
    if reason in ("stop", "length"):
        return reason
    if reason == "cancelled":
        raise UpstreamError("The generation was cancelled by the server.")
    return "stop"

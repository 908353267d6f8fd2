"""The response cache seen from a job: look an answer up, store a finished one, and replay a
cached answer as deltas, so it takes the same path to the client as a fresh one."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Sequence

from gateway.core import protocol
from gateway.core.accounting import Choice, usage
from gateway.core.backend import Delta
from gateway.core.context import CallContext
from gateway.core.jobs import Job
from gateway.policy.cache import CachedChoice, CachedCompletion, ResponseCache

# Spaces and the word after them, as byte-level BPE tokens are: pieces about a token long.
_PIECE = re.compile(r"\s*\S+|\s+")


async def lookup(
    cache: ResponseCache | None, job: Job, ctx: CallContext
) -> CachedCompletion | None:
    """The cached answer of `job`, if there is one of the right shape (`x-cache: hit`)."""
    if job.cache_key is None or cache is None:
        return None
    cached = await cache.get(job.cache_key)
    if cached is None or cached.object != job.kind or len(cached.choices) != job.choices:
        return None
    ctx.headers["x-cache"] = "hit"
    return cached


async def fill(cache: ResponseCache | None, job: Job, choices: Sequence[Choice]) -> None:
    """Cache an answer whose every choice finished normally."""
    if job.cache_key is None or cache is None:
        return
    if any(c.finish_reason is None for c in choices):
        return
    spent = usage(job, choices)
    entry = CachedCompletion(
        object=job.kind,
        model=job.model.id,
        created=int(time.time()),
        choices=tuple(
            CachedChoice(i, "".join(c.text), c.finish_reason) for i, c in enumerate(choices)
        ),
        prompt_tokens=spent.prompt_tokens,
        completion_tokens=spent.completion_tokens,
    )
    await cache.put(job.cache_key, entry)


async def replay(cached: CachedCompletion) -> AsyncIterator[tuple[int, Delta]]:
    """The cached answer as (choice index, delta) pieces, each choice ending with its reason."""
    for choice in cached.choices:
        for piece in _PIECE.findall(choice.text):
            yield choice.index, Delta(piece)
        yield choice.index, Delta("", finish_reason=choice.finish_reason)


def cached_usage(cached: CachedCompletion) -> protocol.Usage:
    """The usage the cached answer had when it was generated."""
    return protocol.Usage(
        prompt_tokens=cached.prompt_tokens,
        completion_tokens=cached.completion_tokens,
        total_tokens=cached.total_tokens,
    )

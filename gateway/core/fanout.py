"""One backend generation per prompt and per sample, interleaved as their deltas arrive."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing

from gateway.core.backend import Backend, Delta, GenerationRequest
from gateway.core.jobs import Job


def generate(backend: Backend, job: Job, request_id: str) -> AsyncIterator[tuple[int, Delta]]:
    """The deltas of all the job's generations, tagged with their choice index."""
    streams: list[AsyncGenerator[Delta, None]] = []
    several = job.choices > 1
    for prompt in job.prompts:
        for k in range(job.n):
            options = job.options
            if k and options.seed is not None:  # n samples with one seed must still differ
                options = dataclasses.replace(options, seed=options.seed + k)
            sub_id = f"{request_id}-{len(streams)}" if several else request_id
            request = GenerationRequest(
                prompt, options, sub_id, job.stream, job.affinity, images=job.images
            )
            streams.append(backend.generate(job.model.route, request))
    return merge(streams)


async def merge(
    streams: Sequence[AsyncGenerator[Delta, None]],
) -> AsyncGenerator[tuple[int, Delta], None]:
    """Interleave delta streams as their deltas arrive, tagged with the stream's index; the
    first failure ends them all."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for delta in only:
                yield 0, delta
        return
    queue: asyncio.Queue[tuple[int, Delta | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncGenerator[Delta, None]) -> None:
        try:
            async with aclosing(stream):
                async for delta in stream:
                    queue.put_nowait((index, delta))
        except Exception as exc:
            queue.put_nowait((index, exc))
        else:
            queue.put_nowait((index, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

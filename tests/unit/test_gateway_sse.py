"""Server-sent events framing of OpenAI streams."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

from gateway.api import sse
from gateway.core.protocol import HealthStatus
from gateway.errors import UpstreamUnavailable


async def _collect(rest: AsyncGenerator[HealthStatus, None]) -> list[bytes]:
    return [event async for event in sse.events(HealthStatus(status="live"), rest)]


async def test_events_are_data_lines_ending_with_done() -> None:
    async def rest() -> AsyncGenerator[HealthStatus, None]:
        yield HealthStatus(status="ready")

    events = await _collect(rest())
    assert events == [b'data: {"status":"live"}\n\n', b'data: {"status":"ready"}\n\n', sse.DONE]


async def test_failure_mid_stream_becomes_an_openai_error_event() -> None:
    async def rest() -> AsyncGenerator[HealthStatus, None]:
        raise UpstreamUnavailable("gone")
        yield  # pragma: no cover

    events = await _collect(rest())
    error = json.loads(events[1].removeprefix(b"data: "))["error"]
    assert error["code"] == "upstream_unavailable" and events[-1] == sse.DONE


async def test_closing_the_stream_closes_the_source() -> None:
    closed = []

    async def rest() -> AsyncGenerator[HealthStatus, None]:
        try:
            while True:
                yield HealthStatus(status="ready")
        finally:
            closed.append(True)

    stream = sse.events(HealthStatus(status="live"), rest())
    await anext(stream)
    await anext(stream)
    await stream.aclose()
    assert closed == [True]

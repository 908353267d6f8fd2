"""Server-sent events framing of OpenAI streams: `data: <json>\n\n` per chunk, `data: [DONE]`.

A failure after the first chunk cannot change the status code any more (200 is on the wire), so it
is sent as an OpenAI error event, which the OpenAI SDK raises as an `APIError`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

from pydantic import BaseModel

from gateway.api.error_responses import error_body
from gateway.errors import GatewayError

log = logging.getLogger("localmoe.gateway")

DONE = b"data: [DONE]\n\n"
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
MEDIA_TYPE = "text/event-stream"


def frame(chunk: BaseModel | bytes) -> bytes:
    """One event carrying `chunk` (a model, or its JSON already)."""
    if isinstance(chunk, bytes):
        return b"data: " + chunk + b"\n\n"
    return b"data: " + chunk.__pydantic_serializer__.to_json(chunk) + b"\n\n"


async def events(
    first: BaseModel | bytes, rest: AsyncGenerator[BaseModel | bytes, None]
) -> AsyncIterator[bytes]:
    """The whole event stream: `first` (already produced), the `rest`, then `[DONE]`.

    Closing this stream closes `rest`, which cancels its upstream request."""
    yield frame(first)
    try:
        async with aclosing(rest):
            async for chunk in rest:
                yield frame(chunk)
    except GatewayError as exc:
        log.warning("stream failed: %s", exc.message)
        yield b"data: " + error_body(exc) + b"\n\n"
    except Exception:
        log.exception("stream failed")
        error = GatewayError("The server had an error while processing your request.")
        yield b"data: " + error_body(error) + b"\n\n"
    yield DONE

"""Pure ASGI middleware: request ids, access logs and request metrics, and the body size limit.

Pure ASGI rather than `BaseHTTPMiddleware`, so streamed responses pass through untouched and a
client disconnect still reaches the route (which cancels the Triton request).
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api import metrics
from gateway.api.error_responses import error_body
from gateway.errors import GatewayError, RequestTooLarge

access_log = logging.getLogger("localmoe.access")
log = logging.getLogger("localmoe.gateway")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestContext:
    """Gives every request an id (the client's `x-request-id` if sane), echoes it, adds the
    headers the request's handlers left in `state["response_headers"]` (rate limits, cache),
    logs the exchange as one structured line, counts it in the metrics, and turns any unhandled
    exception into an OpenAI 500."""

    def __init__(self, app: ASGIApp, *, access_log_enabled: bool = True):
        self.app = app
        self.access_log_enabled = access_log_enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = 0
        sent = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
                extra = scope["state"].get("response_headers")
                if extra:
                    headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
                message["headers"] = headers
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        metrics.IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error", extra={"fields": {"request_id": request_id}})
            if status == 0:
                error = GatewayError("The server had an error while processing your request.")
                await _send_error(send_with_id, error)
        finally:
            metrics.IN_FLIGHT.dec()
            elapsed = time.perf_counter() - start
            metrics.observe(scope, status, elapsed)
            if self.access_log_enabled:
                state = scope["state"]
                access_log.info(
                    "%s %s %s",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "fields": {
                            "request_id": request_id,
                            "method": scope["method"],
                            "path": scope["path"],
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 2),
                            "bytes": sent,
                            "client": (scope.get("client") or ("", 0))[0],
                            "model": state.get("model"),
                            "stream": state.get("stream"),
                            "sub": getattr(state.get("principal"), "sub", None),
                            "cache": (state.get("response_headers") or {}).get("x-cache"),
                        }
                    },
                )


class BodySizeLimit:
    """413 for bodies over `max_bytes` (or the path's own limit in `per_path`, for the route
    that takes images): from `Content-Length` before reading anything, else while the chunks
    arrive. The route then receives the already-read body as usual."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, per_path: dict[str, int] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.max_bytes)
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    await _send_error(send, _too_large(int(value), limit))
                    return
                break

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_error(send, _too_large(size, limit))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        pending: Message | None = {"type": "http.request", "body": b"".join(chunks)}

        async def replay() -> Message:
            nonlocal pending
            if pending is not None:
                message, pending = pending, None
                return message
            # Later calls wait for the real `http.disconnect`: routes use it to cancel work.
            return await receive()

        await self.app(scope, replay, send)


def _too_large(size: int, limit: int) -> RequestTooLarge:
    return RequestTooLarge(
        f"The request body is {size} bytes, over this server's limit of {limit} bytes."
    )


async def _send_error(send: Send, error: GatewayError) -> None:
    body = error_body(error)
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _REQUEST_ID.match(candidate):
                return candidate
            break
    return secrets.token_hex(16)

"""The body size limit: 413 over `requests.max_body_bytes`, with room for images on the chat
route only."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.api.middleware import BodySizeLimit


async def _echo(scope: Any, receive: Any, send: Any) -> None:
    body = (await receive())["body"]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def _status(path: str, size: int) -> int:
    limit = BodySizeLimit(_echo, max_bytes=100, per_path={"/v1/chat/completions": 1000})
    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"x" * size, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(limit(scope, receive, send))
    return sent[0]["status"]


def test_the_chat_route_admits_bodies_up_to_its_own_limit() -> None:
    assert _status("/v1/chat/completions", 900) == 200
    assert _status("/v1/chat/completions", 1001) == 413


def test_other_routes_keep_the_text_limit() -> None:
    assert _status("/v1/completions", 100) == 200
    assert _status("/v1/completions", 101) == 413

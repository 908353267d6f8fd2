"""The HTTP routes: parse the body, hand it to the service, return JSON or an event stream.

Every `/v1` route needs a bearer token (`access.authenticate`); the generation routes also count
against the caller's request limit (`access.admit`) before their body is even parsed. Both are
plain calls at the top of the routes rather than FastAPI dependencies: resolving dependencies
cost more per request than authenticating and rate limiting together. A model the
token does not allow is hidden from `/v1/models` and answers 404 like an unknown one.

Bodies are parsed here (pydantic's JSON parser, straight from bytes) rather than by FastAPI, so a
malformed body is one of our 400s naming the parameter. Every route notices a client that hangs
up: the service's work is cancelled, and with it the Triton request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable
from typing import TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive

from gateway.api import sse
from gateway.api.access import admit, authenticate, call_context
from gateway.api.error_responses import error_response, invalid_body
from gateway.core.protocol import ChatCompletionRequest, CompletionRequest, HealthStatus, ModelList
from gateway.core.service import Service
from gateway.errors import ModelNotFound, UpstreamError, UpstreamUnavailable

T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)

# nginx's "client closed request": only ever seen in our access log.
CLIENT_CLOSED = 499

v1 = APIRouter(prefix="/v1")
health = APIRouter(prefix="/health")


@v1.get("/models")
async def list_models(request: Request) -> Response:
    """The served models this caller may use."""
    principal = authenticate(request)
    models = _service(request).models()
    if principal.models is not None:
        models = [m for m in models if principal.allows_model(m.id)]
    return _json(ModelList(data=models))


@v1.get("/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> Response:
    """One model, or 404 `model_not_found`."""
    if not authenticate(request).allows_model(model_id):
        raise ModelNotFound(model_id)
    return _json(_service(request).model(model_id))


async def create_chat_completion(request: Request) -> Response:
    """OpenAI chat completions, streamed or not."""
    await admit(request, authenticate(request))
    body = await _parse(request, ChatCompletionRequest)
    service, ctx = _service(request), call_context(request)
    if body.stream:
        return await _stream(request, service.chat_stream(body, ctx))
    return await _respond(request, service.chat(body, ctx))


async def create_completion(request: Request) -> Response:
    """OpenAI (legacy) text completions, streamed or not."""
    await admit(request, authenticate(request))
    body = await _parse(request, CompletionRequest)
    service, ctx = _service(request), call_context(request)
    if body.stream:
        return await _stream(request, service.completion_stream(body, ctx))
    return await _respond(request, service.completion(body, ctx))


# Plain Starlette routes, in the same router and behind the same middleware and exception
# handlers as every route: FastAPI's per-route request handling (dependency solving, its exit
# stack) is work these two do not use, and they are the hot path (docs/performance.md).
generation = [
    Route("/v1/chat/completions", create_chat_completion, methods=["POST"]),
    Route("/v1/completions", create_completion, methods=["POST"]),
]


@health.get("/live")
async def live() -> Response:
    """The process is up."""
    return _json(HealthStatus(status="live"))


@health.get("/ready")
async def ready(request: Request) -> Response:
    """A model is known and a Triton upstream is ready; 503 otherwise."""
    if not _service(request).ready():
        return error_response(UpstreamUnavailable("No Triton upstream is ready."))
    return _json(HealthStatus(status="ready"))


def _service(request: Request) -> Service:
    return request.app.state.service


async def _parse(request: Request, model: type[R]) -> R:
    body = await request.body()
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_body(exc, body) from None
    request.state.model = getattr(parsed, "model", None)
    request.state.stream = bool(getattr(parsed, "stream", False))
    return parsed


async def _respond(request: Request, work: Awaitable[BaseModel]) -> Response:
    done, result = await _unless_disconnected(request.receive, work)
    return _json(result) if done else Response(status_code=CLIENT_CLOSED)


async def _stream(request: Request, chunks: AsyncGenerator[BaseModel | bytes, None]) -> Response:
    # Wait for the first chunk before answering, so that anything failing before the first token
    # (validation, context length, no upstream) still gets its proper status code.
    try:
        done, first = await _unless_disconnected(request.receive, anext(chunks))
    except StopAsyncIteration:
        raise UpstreamError("The upstream stream ended without output.") from None
    if not done:
        return Response(status_code=CLIENT_CLOSED)
    return StreamingResponse(
        sse.events(first, chunks), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS
    )


async def _unless_disconnected(receive: Receive, work: Awaitable[T]) -> tuple[bool, T]:
    """Await `work` unless the client disconnects first, in which case it is cancelled.

    `work` runs in this task; one watcher task cancels it on a disconnect (cheaper than running
    `work` in a task of its own and waiting for either)."""
    task = asyncio.current_task()
    assert task is not None
    watching = True

    def on_disconnect(watcher: asyncio.Future[None]) -> None:
        if watching and not watcher.cancelled():
            task.cancel()

    watcher = asyncio.ensure_future(_disconnect(receive))
    watcher.add_done_callback(on_disconnect)
    try:
        return True, await work
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():  # cancelled by the watcher, not from above
            task.uncancel()
            return False, None  # type: ignore[return-value]
        raise
    finally:
        watching = False
        watcher.cancel()


async def _disconnect(receive: Receive) -> None:
    # The body has been read, so the next message can only be the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


def _json(model: BaseModel) -> Response:
    return Response(model.__pydantic_serializer__.to_json(model), media_type="application/json")

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
from contextlib import aclosing
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response, StreamingResponse
from starlette.routing import Match, Route
from starlette.types import Receive, Scope

from gateway.api import sse
from gateway.api.access import admit, authenticate, call_context
from gateway.api.admission import Admission
from gateway.api.error_responses import error_response, invalid_body
from gateway.core.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    HealthStatus,
    ModelList,
    ReadyStatus,
)
from gateway.core.service import Service
from gateway.errors import (
    GatewayError,
    ModelNotFound,
    ServerOverloaded,
    ShuttingDown,
    UpstreamError,
    UpstreamUnavailable,
)
from gateway.policy.auth import Principal

T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)
C = TypeVar("C")

# nginx's "client closed request": only ever seen in our access log.
CLIENT_CLOSED = 499

v1 = APIRouter(prefix="/v1")
health = APIRouter(prefix="/health")


@v1.get("/models")
async def list_models(request: Request) -> Response:
    """The served models this caller may use."""
    principal = authenticate(request)
    service = _service(request)
    await service.learn_capabilities()
    models = service.models()
    if principal.models is not None:
        models = [m for m in models if principal.allows_model(m.id)]
    return _json(ModelList(data=models))


@v1.get("/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> Response:
    """One model, or 404 `model_not_found`."""
    if not authenticate(request).allows_model(model_id):
        raise ModelNotFound(model_id)
    service = _service(request)
    await service.learn_capabilities()
    return _json(service.model(model_id))


async def create_chat_completion(request: Request) -> Response:
    """OpenAI chat completions, streamed or not."""
    return await _generate(request, ChatCompletionRequest, chat=True)


async def create_completion(request: Request) -> Response:
    """OpenAI (legacy) text completions, streamed or not."""
    return await _generate(request, CompletionRequest, chat=False)


async def _generate(
    request: Request, shape: type[ChatCompletionRequest | CompletionRequest], *, chat: bool
) -> Response:
    principal = authenticate(request)
    await admit(request, principal)
    request.app.state.drain.refuse()
    body: Any = await _parse(request, shape)
    service, ctx = _service(request), call_context(request)
    streamed, whole = (
        (service.chat_stream, service.chat)
        if chat
        else (service.completion_stream, service.completion)
    )
    try:
        await _take_place(request, principal)
        if body.stream:
            return await _stream(request, _held(request, streamed(body, ctx)))
        return await _held_while(request, _respond(request, whole(body, ctx)))
    except (UpstreamUnavailable, ServerOverloaded) as exc:
        return await _fall_back(request, exc, body.model, chat=chat, stream=bool(body.stream))


class _Route(Route):
    """A Starlette route that names itself in the scope, as FastAPI's do (`scope["route"]`):
    the metrics and the access log label requests by it."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.FULL:
            child["route"] = self
        return match, child


generation = [
    _Route("/v1/chat/completions", create_chat_completion, methods=["POST"]),
    _Route("/v1/completions", create_completion, methods=["POST"]),
]


@health.get("/live")
async def live() -> Response:
    """The process is up."""
    return _json(HealthStatus(status="live"))


@health.get("/ready")
async def ready(request: Request) -> Response:
    """A model is known and a Triton upstream is ready, and the gateway is not draining; 503
    otherwise. The body lists each upstream's readiness and circuit state."""
    upstreams = request.app.state.pool.health()
    if request.app.state.drain.draining:
        return _not_ready(ShuttingDown("The gateway is shutting down."), upstreams)
    if not _service(request).ready():
        return _not_ready(UpstreamUnavailable("No Triton upstream is ready."), upstreams)
    return _json(ReadyStatus(status="ready", upstreams=upstreams))


def _not_ready(error: GatewayError, upstreams: list[dict[str, object]]) -> Response:
    response = error_response(error)
    body = orjson.loads(response.body)
    body["upstreams"] = upstreams
    return Response(
        orjson.dumps(body), status_code=error.status, headers=dict(error.headers or {}),
        media_type="application/json",
    )  # fmt: skip


async def _take_place(request: Request, principal: Principal) -> None:
    admission: Admission = request.app.state.admission
    priority = 0
    if admission.bounded:
        claim = principal.claims.get(admission.settings.priority_claim)
        priority = claim if isinstance(claim, int) and not isinstance(claim, bool) else 0
    await admission.acquire(priority)


async def _held_while(request: Request, work: Awaitable[T]) -> T:
    try:
        return await work
    finally:
        request.app.state.admission.release()


async def _held(request: Request, chunks: AsyncGenerator[C, None]) -> AsyncGenerator[C, None]:
    # The place goes back when the stream ends, fails, or its client leaves: this generator is
    # started before the response is (the first chunk), so its `finally` always runs.
    try:
        async with aclosing(chunks):
            async for chunk in chunks:
                yield chunk
    finally:
        request.app.state.admission.release()


async def _fall_back(
    request: Request, error: GatewayError, model: str, *, chat: bool, stream: bool
) -> Response:
    """The configured fallback provider's answer, when Triton cannot take the request."""
    fallback = request.app.state.fallback
    if fallback is None or not fallback.covers(model):
        raise error
    answer = fallback.respond(request, await request.body(), chat=chat, stream=stream)
    done, response = await _unless_disconnected(request.receive, answer)
    return response if done else Response(status_code=CLIENT_CLOSED)


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

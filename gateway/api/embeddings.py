"""`POST /v1/embeddings`: authenticate, count the request, parse, hand to the embeddings service.

The same gate as the generation routes (bearer token, requests per minute, drain, admission);
the service is built on first use over the generation service's catalogue, so a reload that
replaces the catalogue reaches it too.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.access import admit, authenticate, call_context
from gateway.api.routes import _held_while, _parse, _respond, _take_place
from gateway.core.embeddings import EmbeddingService
from gateway.core.protocol import EmbeddingRequest, EmbeddingResponse, ErrorResponse
from gateway.triton.embeddings import TritonEmbeddings

router = APIRouter(prefix="/v1")


@router.post(
    "/embeddings",
    summary="Create embeddings",
    operation_id="createEmbedding",
    tags=["embeddings"],
    # The body is parsed by the route (our 400s), so FastAPI is told its schema here.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EmbeddingRequest.model_json_schema()}},
        }
    },
    responses={200: {"model": EmbeddingResponse}, 400: {"model": ErrorResponse}},
)
async def create_embedding(request: Request) -> Response:
    """OpenAI embeddings: one vector per input, floats or base64."""
    principal = authenticate(request)
    await admit(request, principal)
    request.app.state.drain.refuse()
    body = await _parse(request, EmbeddingRequest)
    service, ctx = _service(request), call_context(request)
    await _take_place(request, principal)
    return await _held_while(request, _respond(request, service.embed(body, ctx)))


def _service(request: Request) -> EmbeddingService:
    state = request.app.state
    catalogue = state.service.catalogue
    service: EmbeddingService | None = getattr(state, "embeddings", None)
    if service is None:
        service = state.embeddings = EmbeddingService(catalogue, TritonEmbeddings(state.pool))
    service.catalogue = catalogue  # replaced by a reload
    return service

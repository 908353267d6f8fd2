"""The OpenAPI document served at `/openapi.json` (and shown by `/docs`): FastAPI's, plus the two
generation routes it cannot see.

The generation routes are plain Starlette routes (`gateway.api.routes.generation`), so FastAPI
leaves them out of its schema; their paths are written here from the same pydantic models the
routes parse and answer with, so the document cannot drift from what is served. On top of the
models' types, the request schemas carry the values this server accepts (ranges, this server's
`requests` limits, the one value an unsupported feature allows), as `gateway.core.validation`
checks them: what the document allows passes validation, up to rules across fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.core.catalogue import MAX_TOP_LOGPROBS
from gateway.core.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
)
from gateway.settings import RequestSettings

BEARER = "bearer"
"""The security scheme every `/v1` route requires."""

_REF = "#/components/schemas/{model}"
_Mode = Literal["validation", "serialization"]
_MODELS: list[tuple[type[BaseModel], _Mode]] = [
    (ChatCompletionRequest, "validation"),
    (CompletionRequest, "validation"),
    (ChatCompletionResponse, "serialization"),
    (ChatCompletionChunk, "serialization"),
    (CompletionResponse, "serialization"),
    (ErrorResponse, "serialization"),
]
_ERRORS = {
    "400": "Invalid request: the error's `param` names the parameter.",
    "401": "No valid bearer token.",
    "404": "Unknown model, or one the token does not allow (`model_not_found`).",
    "413": "The body is over `requests.max_body_bytes` (unset: 4 MiB, chat more for images).",
    "429": "A requests- or tokens-per-minute limit (`Retry-After`).",
    "502": "Triton answered the request with an error.",
    "503": "No Triton upstream is ready, the gateway is overloaded or draining (`Retry-After`).",
    "504": "Triton did not finish within `triton.timeout_s`.",
}


def generator(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """What to install as `app.openapi`: builds the document once, on first use."""
    document: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not document:
            document.update(build(app))
        return document

    return openapi


def build(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document for `app` with the generation routes in it and `/v1` behind bearer."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    refs, definitions = models_json_schema(_MODELS, ref_template=_REF)
    schemas = definitions["$defs"]
    for name, properties in _accepted_values(app.state.settings.requests).items():
        for field, keywords in properties.items():
            schemas[name]["properties"][field].update(keywords)
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(schemas)
    components.setdefault("securitySchemes", {})[BEARER] = {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }

    def ref(model: type[BaseModel], mode: _Mode) -> dict[str, Any]:
        return refs[(model, mode)]

    generation = {
        "/v1/chat/completions": _generation_path(
            operation_id="createChatCompletion",
            summary="Create a chat completion",
            request=ref(ChatCompletionRequest, "validation"),
            response=ref(ChatCompletionResponse, "serialization"),
            chunk="ChatCompletionChunk",
            error=ref(ErrorResponse, "serialization"),
        ),
        "/v1/completions": _generation_path(
            operation_id="createCompletion",
            summary="Create a (legacy) text completion",
            request=ref(CompletionRequest, "validation"),
            response=ref(CompletionResponse, "serialization"),
            chunk="CompletionResponse",
            error=ref(ErrorResponse, "serialization"),
        ),
    }
    # The generation routes come first, as they do in the router.
    document["paths"] = {**generation, **document.get("paths", {})}
    for path, operations in document["paths"].items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                operation.setdefault("security", [{BEARER: []}])
    return document


def _accepted_values(limits: RequestSettings) -> dict[str, dict[str, dict[str, Any]]]:
    """JSON Schema keywords per request schema and field, beside the type's `anyOf`: each
    keyword constrains only the JSON type it is about (`minimum` numbers, `maxItems` arrays), and
    `null` still means the default."""
    max_tokens: dict[str, Any] = {"minimum": 1}
    if limits.max_tokens is not None:
        max_tokens["maximum"] = limits.max_tokens
    common = {
        "model": {"minLength": 1},
        "temperature": {"minimum": 0, "maximum": 2},
        "top_p": {"exclusiveMinimum": 0, "maximum": 1},
        "n": {"minimum": 1, "maximum": limits.max_n},
        "stop": {"minLength": 1, "maxItems": limits.max_stop, "items": {"minLength": 1}},
        "seed": {"minimum": -(2**63), "maximum": 2**64 - 1},
        "presence_penalty": {"minimum": -2, "maximum": 2},
        "frequency_penalty": {"minimum": -2, "maximum": 2},
        "logit_bias": {"maxProperties": 0, "description": "Not supported: empty or null."},
        "top_k": {"minimum": -1, "maximum": _INT32_MAX},
        "min_tokens": {"minimum": 0, "maximum": _INT32_MAX},
        "repetition_penalty": {"exclusiveMinimum": 0, "maximum": _FP32_MAX},
        "max_tokens": max_tokens,
    }
    messages: dict[str, Any] = {"minItems": 1}
    if limits.max_messages is not None:
        messages["maxItems"] = limits.max_messages
    chat = {
        **common,
        "messages": messages,
        "max_completion_tokens": max_tokens,
        "top_logprobs": {"minimum": 0, "maximum": MAX_TOP_LOGPROBS},
        "response_format": {
            "properties": {"type": {"enum": ["text", "json_object", "json_schema"]}}
        },
        # `pattern` constrains only strings: a named function (an object) passes it.
        "tool_choice": {"pattern": "^(none|auto|required)$"},
        "tools": {"maxItems": limits.max_tools},
    }
    completion = {
        **common,
        # Text prompts only: token-id prompts are refused.
        "prompt": {
            "minLength": 1,
            "minItems": 1,
            "maxItems": limits.max_prompts,
            "items": {"type": "string", "minLength": 1},
        },
        "logprobs": {"minimum": 0, "maximum": 5},
        "suffix": {"type": "null", "description": "Not supported: null."},
    }
    return {"ChatCompletionRequest": chat, "CompletionRequest": completion}


# Values travel to Triton as INT32 / FP32 tensors.
_INT32_MAX = 2**31 - 1
_FP32_MAX = 3.4e38


def _generation_path(
    *,
    operation_id: str,
    summary: str,
    request: dict[str, Any],
    response: dict[str, Any],
    chunk: str,
    error: dict[str, Any],
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {
            "description": (
                "The whole answer as JSON; with `stream: true`, server-sent events: one "
                f"`data: <{chunk}>` event per chunk, then `data: [DONE]`."
            ),
            "content": {
                "application/json": {"schema": response},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        }
    }
    for status, description in _ERRORS.items():
        responses[status] = {
            "description": description,
            "content": {"application/json": {"schema": error}},
        }
    return {
        "post": {
            "tags": ["generation"],
            "summary": summary,
            "operationId": operation_id,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request}},
            },
            "responses": responses,
        }
    }

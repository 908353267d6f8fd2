"""Every failure leaves as OpenAI's `{"error": {"message", "type", "param", "code"}}` body.

`gateway.errors` says which status and code each failure has; this module renders them, and maps
what the frameworks raise on their own (unknown routes, wrong methods, body parse errors) onto
the same shapes. Nothing here returns FastAPI's default error body.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.api import metrics
from gateway.core.protocol import ErrorInfo, ErrorResponse
from gateway.errors import GatewayError, InvalidRequest, MethodNotAllowed, NotFound


def error_body(exc: GatewayError) -> bytes:
    """The JSON body for `exc` (every error answered passes here, and is counted)."""
    metrics.count_error(exc.status, exc.type, exc.code)
    body = ErrorResponse(
        error=ErrorInfo(message=exc.message, type=exc.type, param=exc.param, code=exc.code)
    )
    return body.model_dump_json().encode()


def error_response(exc: GatewayError) -> Response:
    """A complete HTTP response for `exc`, with its headers."""
    return Response(
        error_body(exc), status_code=exc.status, media_type="application/json", headers=exc.headers
    )


def invalid_body(exc: ValidationError, body: bytes) -> InvalidRequest:
    """The 400 for a body that does not parse into its request model, naming the parameter.

    Of a union's errors (`content`: a string, or a list of parts) the one reaching deepest into
    the submitted JSON names it best: `messages[0].content[1].image_url.url`, not the content."""
    errors = exc.errors(include_url=False)
    error = errors[0]
    kind = error["type"]
    if kind == "json_invalid":
        return InvalidRequest(
            f"We could not parse the JSON body of your request: {error['msg']}.",
            code="invalid_json",
        )
    if kind == "model_type" and not error["loc"]:
        return InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    named = [(_param(e["loc"], body, include_last=e["type"] == "missing"), e) for e in errors]
    param, error = max(named, key=lambda item: _depth(item[0]))
    kind = error["type"]
    if kind == "missing":
        return InvalidRequest(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    if kind.endswith("_type") or kind in ("model_attributes_type", "union_tag_invalid"):
        return InvalidRequest(
            f"Invalid type for '{param}': {error['msg'].lower()}.", param=param, code="invalid_type"
        )
    return InvalidRequest(f"Invalid value for '{param}': {error['msg']}.", param=param)


def handlers() -> dict[type[Exception], Any]:
    """Exception handlers that route framework-raised errors through the OpenAI error shape."""

    async def on_gateway_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return error_response(NotFound(f"Unknown route: {request.method} {request.url.path}"))
        if exc.status_code == 405:
            response = error_response(
                MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}")
            )
            response.headers.update(exc.headers or {})
            return response
        error = GatewayError(HTTPStatus(exc.status_code).phrase)
        error.status = exc.status_code
        return error_response(error)

    async def on_request_validation(_: Request, exc: Exception) -> Response:
        # Only path and query parameters get here: bodies are parsed by the routes themselves.
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return error_response(InvalidRequest(str(first.get("msg", "invalid request")), param=param))

    return {
        GatewayError: on_gateway_error,
        StarletteHTTPException: on_http_error,
        RequestValidationError: on_request_validation,
    }


def _param(loc: tuple[Any, ...], body: bytes, *, include_last: bool) -> str:
    """`("messages", 0, "content", "str")` → `messages[0].content`.

    Pydantic puts union member names into error locations; keeping only the steps that exist in
    the submitted JSON drops them without a list of type names. Only runs for rejected bodies.
    """
    try:
        node: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        node = None
    steps: list[Any] = []
    for i, step in enumerate(loc):
        if _has(node, step):
            node = node[step]
        elif not (include_last and i == len(loc) - 1):
            continue  # a union member's name (`str`, `list[ContentPart]`), not a JSON step
        steps.append(step)
    param = ""
    for step in steps:
        param += f"[{step}]" if isinstance(step, int) else (f".{step}" if param else step)
    return param or "body"


def _depth(param: str) -> int:
    # The first error wins ties (`max` keeps the first of equals).
    return param.count(".") + param.count("[")


def _has(node: Any, step: Any) -> bool:
    if isinstance(node, dict):
        return isinstance(step, str) and step in node
    return isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)

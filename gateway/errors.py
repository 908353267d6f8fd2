"""Every failure the gateway reports, with its OpenAI status, type and code.

Lower layers raise these; `gateway.api.error_responses` turns them (and anything else) into OpenAI's
`{"error": {"message", "type", "param", "code"}}` body. Nothing else decides a status code.
"""

from __future__ import annotations


class GatewayError(Exception):
    """A failure with an OpenAI error shape. Subclasses fix status, type and code."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"
    headers: dict[str, str] | None = None
    """Extra response headers (`WWW-Authenticate`, `Retry-After`)."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if headers is not None:
            self.headers = headers


class InvalidRequest(GatewayError):
    """The request is malformed or a parameter is out of range (400)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_value"


class ContextLengthExceeded(InvalidRequest):
    """The prompt (plus the requested completion) does not fit the model's context (400)."""

    code = "context_length_exceeded"


class Unauthorized(GatewayError):
    """No acceptable bearer token (401); `headers` carry `WWW-Authenticate`."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class RateLimited(GatewayError):
    """A requests- or tokens-per-minute limit refuses the request (429).

    `type` is `requests` or `tokens`, as OpenAI reports it; `Retry-After` and the
    `x-ratelimit-*` headers travel with the response (see `gateway.api.access`)."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str, headers: dict[str, str] | None = None):
        super().__init__(message, headers=headers)
        self.type = kind


class ModelNotFound(GatewayError):
    """The model does not exist, or the caller may not see it (404)."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str):
        super().__init__(f"The model '{model}' does not exist.", param="model")


class NotFound(GatewayError):
    """No such route (404)."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    """The route exists but not for this HTTP method (405)."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTooLarge(GatewayError):
    """The request body is over the configured limit (413)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UpstreamError(GatewayError):
    """Triton answered with an error for this request (502)."""

    status = 502
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    """Triton did not finish the request within `upstream_timeout_s` (504)."""

    status = 504
    code = "upstream_timeout"


class LimitsUnavailable(GatewayError):
    """Rate limits fail closed and their storage (Redis) is unreachable (503)."""

    status = 503
    code = "rate_limits_unavailable"


class UpstreamUnavailable(GatewayError):
    """No Triton upstream is ready, or the model is not loaded there (503); clients retry after
    `Retry-After` seconds (the health checks' pace)."""

    status = 503
    code = "upstream_unavailable"
    headers = {"Retry-After": "1"}  # noqa: RUF012  # read-only: instances replace it, never mutate


class ServerOverloaded(GatewayError):
    """Every place is taken and the wait queue is full, or a request waited its whole queue
    timeout (503, `Retry-After`): the gateway sheds load instead of piling it up."""

    status = 503
    code = "server_overloaded"
    headers = {"Retry-After": "1"}  # noqa: RUF012  # read-only, as above


class ShuttingDown(GatewayError):
    """The gateway is draining for a shutdown: new requests go elsewhere, open streams that
    outlive the drain end with this (503)."""

    status = 503
    code = "server_shutting_down"
    headers = {"Retry-After": "1", "Connection": "close"}  # noqa: RUF012  # read-only, as above

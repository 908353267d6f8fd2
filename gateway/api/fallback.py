"""The fallback provider: when no Triton upstream can take a request, any OpenAI-compatible
provider answers it through LiteLLM, and the response says so (`x-localmoe-upstream: fallback`).

The routes call `Fallback.respond` only for failures raised before anything was sent (no ready
upstream, every circuit open, the admission queue full). The body that goes out is the one the
gateway validated, as the client sent it, less what only LocalMoE understands (see
`provider_arguments`). LiteLLM is imported only when a fallback is configured: it costs seconds
and some 200 MB at import, which a gateway without one never pays.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.api import sse
from gateway.api.access import call_context
from gateway.core.protocol import ChatCompletionRequest, CompletionRequest
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.settings import FallbackSettings

log = logging.getLogger("localmoe.fallback")

REQUESTS = Counter(
    "localmoe_fallback_requests_total",
    "Requests answered by the fallback provider, by local model id and outcome (ok, error)",
    ["model", "outcome"],
)

HEADER = "x-localmoe-upstream"
INSTALL_HINT = "pip install 'localmoe[fallback]'"

# Our response cache's opt-out; LiteLLM's own `cache` argument means something else entirely.
LOCAL_ONLY = frozenset({"cache"})
# vLLM / TensorRT-LLM sampling extras: self-hosted OpenAI-compatible servers (vLLM, TGI, another
# LocalMoE) take them under the same names, hosted APIs reject unknown parameters with a 400.
ENGINE_EXTRAS = frozenset({"top_k", "min_tokens", "ignore_eos", "repetition_penalty"})
_SELF_HOSTED_PREFIXES = ("openai/", "hosted_vllm/")
_FIELDS = {
    True: frozenset(ChatCompletionRequest.model_fields) - LOCAL_ONLY - ENGINE_EXTRAS - {"model"},
    False: frozenset(CompletionRequest.model_fields) - LOCAL_ONLY - ENGINE_EXTRAS - {"model"},
}


def build(settings: FallbackSettings) -> Fallback | None:
    """The configured fallback, or None when `fallback.model` is unset.

    Imports LiteLLM now, so the first request that falls back is not the one that waits for it;
    raises `RuntimeError` naming the extra to install when it is missing."""
    if settings.model is None:
        return None
    log.info("fallback: loading LiteLLM for %s", settings.model)
    # LiteLLM fetches a price list from GitHub at import unless told not to: a gateway's start
    # must not depend on the internet (an explicit setting of the variable still wins).
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError as exc:
        raise RuntimeError(
            f"fallback.model is set ({settings.model}) but LiteLLM is not installed: {INSTALL_HINT}"
        ) from exc
    litellm.suppress_debug_info = True  # else it prints help banners to stdout on every error
    # Its aiohttp transport leaves sessions unclosed (asyncio logs them as errors) when a text
    # completion asks for several choices; httpx's is the one the rest of the gateway uses.
    litellm.disable_aiohttp_transport = True
    # Its own stderr handler logs a line per call at INFO: ours format what it warns about.
    litellm_log = logging.getLogger("LiteLLM")
    litellm_log.handlers.clear()
    litellm_log.propagate = True
    litellm_log.setLevel(logging.WARNING)
    return Fallback(settings, litellm)


def provider_arguments(
    body: dict[str, Any], *, chat: bool, settings: FallbackSettings
) -> dict[str, Any]:
    """LiteLLM's keyword arguments for a client's validated request `body`.

    OpenAI's parameters go as the client sent them (a default it left out stays out), except
    that a stream always asks for its usage. Fields the gateway ignores (unknown ones) and
    `cache` are dropped; the engine extras go in `extra_body` to a self-hosted OpenAI-compatible
    server (`openai/` or `hosted_vllm/` with `api_base`) and are dropped for any other
    provider."""
    fields = _FIELDS[chat]
    arguments = {k: v for k, v in body.items() if k in fields}
    extras = {k: v for k, v in body.items() if k in ENGINE_EXTRAS and v is not None}
    if extras and _self_hosted(settings):
        arguments["extra_body"] = extras
    if body.get("stream"):
        # The usage is charged to the caller's budget whether or not the client asked for it.
        arguments["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    arguments["model"] = settings.model
    if settings.api_base:
        arguments["api_base"] = settings.api_base
    if settings.api_key is not None:
        arguments["api_key"] = settings.api_key.get_secret_value()
    arguments["timeout"] = settings.timeout_s
    # The fallback is the retry already; what a provider cannot take is dropped, not a 400.
    arguments["num_retries"] = 0
    arguments["max_retries"] = 0
    arguments["drop_params"] = True
    return arguments


class Fallback:
    """One gateway process's fallback provider."""

    def __init__(self, settings: FallbackSettings, litellm: Any):
        self.settings = settings
        self._litellm = litellm
        self._models = frozenset(settings.models)

    def covers(self, model: str) -> bool:
        """Whether requests for the local `model` may fall back (`fallback.models`, empty: all)."""
        return not self._models or model in self._models

    async def respond(self, request: Request, body: bytes, *, chat: bool, stream: bool) -> Response:
        """The provider's answer to the request whose validated `body` Triton could not take:
        JSON, or an event stream that starts once the provider's first chunk is in."""
        parsed = orjson.loads(body)
        model = parsed["model"]
        headers = getattr(request.state, "response_headers", None)
        if headers is None:
            headers = request.state.response_headers = {}
        headers[HEADER] = "fallback"  # also on the fallback's own errors
        arguments = provider_arguments(parsed, chat=chat, settings=self.settings)
        if stream:
            wants_usage = bool((parsed.get("stream_options") or {}).get("include_usage"))
            return await self._stream(request, model, arguments, chat=chat, usage=wants_usage)
        try:
            if chat:
                reply = await self._litellm.acompletion(**arguments)
            else:
                reply = await self._litellm.atext_completion(**arguments)
        except Exception as exc:
            REQUESTS.labels(model, "error").inc()
            raise self._error(exc) from None
        answer = _openai_shape(reply)
        REQUESTS.labels(model, "ok").inc()
        await _charge(request, answer.get("usage"))
        return Response(orjson.dumps(answer), media_type="application/json")

    async def aclose(self) -> None:
        """Close LiteLLM's pooled HTTP clients (where this LiteLLM version can)."""
        close = getattr(self._litellm, "close_litellm_async_clients", None)
        if close is not None:
            await close()

    async def _stream(
        self, request: Request, model: str, arguments: dict[str, Any], *, chat: bool, usage: bool
    ) -> Response:
        try:
            if chat:
                chunks = await self._litellm.acompletion(**arguments)
            else:
                chunks = await self._litellm.atext_completion(**arguments)
            iterator = aiter(chunks)
            first = _openai_shape(await anext(iterator))
        except StopAsyncIteration:
            REQUESTS.labels(model, "error").inc()
            raise UpstreamError("The fallback provider's stream ended without output.") from None
        except Exception as exc:
            REQUESTS.labels(model, "error").inc()
            raise self._error(exc) from None
        rest = self._relay(request, model, chunks, iterator, first.get("usage"), show_usage=usage)
        if not usage:
            first.pop("usage", None)
        return StreamingResponse(
            sse.events(orjson.dumps(first), rest), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS
        )

    async def _relay(
        self,
        request: Request,
        model: str,
        chunks: Any,
        iterator: AsyncIterator[Any],
        usage: dict[str, Any] | None,
        *,
        show_usage: bool,
    ) -> AsyncGenerator[bytes, None]:
        outcome = "error"
        try:
            async for chunk in iterator:
                data = _openai_shape(chunk)
                usage = data.get("usage") or usage
                if not show_usage:
                    data.pop("usage", None)
                    if not data.get("choices"):
                        continue  # the usage chunk the client did not ask for
                yield orjson.dumps(data)
            outcome = "ok"
        except (GeneratorExit, asyncio.CancelledError):
            outcome = "ok"  # the client left: nothing failed
            raise
        except Exception as exc:
            raise self._error(exc) from None
        finally:
            REQUESTS.labels(model, outcome).inc()
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
            if usage is not None:
                await _charge(request, usage)

    def _error(self, exc: Exception) -> GatewayError:
        """A provider failure as the gateway's error: the provider's refusal of the request
        passes through with its status and message, anything else is a 502 or a 504."""
        status = getattr(exc, "status_code", None)
        message, code = _provider_message(exc)
        log.warning("fallback provider failed: %s: %s", type(exc).__name__, message)
        if isinstance(exc, self._litellm.Timeout):
            return UpstreamTimeout(
                f"The fallback provider did not answer within {self.settings.timeout_s:g}s."
            )
        if status in (400, 413, 422):
            error = InvalidRequest(
                f"The fallback provider refused the request: {message}", code=code
            )
            error.status = status
            return error
        if status == 429:
            return RateLimited(
                f"The fallback provider is rate limiting: {message}",
                kind="requests",
                headers={"Retry-After": "1"},
            )
        if status in (401, 403, 404):
            # The gateway's key or model setting, not the client's request, is wrong.
            return UpstreamError(
                f"The fallback provider refused the gateway's configuration ({status}): {message}"
            )
        return UpstreamError(f"The fallback provider failed: {message}")


def _self_hosted(settings: FallbackSettings) -> bool:
    return bool(settings.api_base) and (settings.model or "").startswith(_SELF_HOSTED_PREFIXES)


def _provider_message(exc: Exception) -> tuple[str, str | None]:
    """The provider's error message and code."""
    # LiteLLM prefixes its class and the provider (`litellm.BadRequestError: OpenAIException -`);
    # an OpenAI-shaped body's own message is what the client needs.
    body = getattr(exc, "body", None)
    if not isinstance(body, dict):
        body = _json_body(getattr(exc, "response", None))
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            code = inner.get("code")
            return inner["message"], code if isinstance(code, str) else None
    text = str(getattr(exc, "message", None) or exc)
    return (text.rsplit(" - ", 1)[-1].strip() if text.startswith("litellm.") else text), None


def _json_body(response: Any) -> Any:
    # The provider's HTTP response, which LiteLLM keeps on the exceptions it maps.
    try:
        return orjson.loads(response.content)
    except Exception:  # none, not JSON, or a stream whose body was never read (httpx raises)
        return None


def _openai_shape(reply: Any) -> dict[str, Any]:
    """LiteLLM's response object as OpenAI's JSON, less the field LiteLLM adds of its own."""
    answer = reply.model_dump(exclude_none=True)
    for choice in answer.get("choices", ()):
        choice.pop("provider_specific_fields", None)
        for part in ("message", "delta"):
            if isinstance(choice.get(part), dict):
                choice[part].pop("provider_specific_fields", None)
    return answer


async def _charge(request: Request, usage: Any) -> None:
    """Charge the provider's reported tokens to the caller's budget, as a local answer is."""
    if not isinstance(usage, dict):
        return
    used = usage.get("total_tokens")
    if not isinstance(used, int) or used <= 0:
        return
    meter = call_context(request).meter
    if meter is not None:
        await meter.charge(used)

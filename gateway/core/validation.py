"""Validation: one stage, before any template or Triton work, that rejects a request with a 400
naming the parameter and the reason; then the mapping of what passed to `SamplingOptions`.

Types were already enforced when the body was parsed (`gateway.core.protocol`); this checks values,
combinations, and what this engine cannot do (rather than silently ignoring it).
"""

from __future__ import annotations

import math
import struct
from typing import Any, NoReturn

from gateway.core import structured
from gateway.core.backend import SamplingOptions
from gateway.core.catalogue import MAX_TOP_LOGPROBS
from gateway.core.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ContentPart,
    Prompt,
)
from gateway.errors import ContextLengthExceeded, InvalidRequest
from gateway.settings import RequestSettings

_MAX_TOP_LOGPROBS = MAX_TOP_LOGPROBS
_MAX_COMPLETION_LOGPROBS = 5

OpenAIRequest = ChatCompletionRequest | CompletionRequest


def check_chat(request: ChatCompletionRequest, limits: RequestSettings) -> None:
    """Reject a chat request whose values this gateway cannot honour."""
    _check_messages(request.messages, limits)
    if request.tools is not None and len(request.tools) > limits.max_tools:
        raise InvalidRequest(
            f"'tools' may hold at most {limits.max_tools} entries, got {len(request.tools)}.",
            param="tools",
        )
    if request.max_completion_tokens is not None:
        _at_least("max_completion_tokens", request.max_completion_tokens, 1)
    if request.max_tokens is not None:
        _at_least("max_tokens", request.max_tokens, 1)
    if request.top_logprobs is not None:
        _between("top_logprobs", request.top_logprobs, 0, _MAX_TOP_LOGPROBS)
        if not request.logprobs:
            raise InvalidRequest(
                "'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs"
            )
    structured.check_response_format(request)
    structured.check_tools(request)
    _check_common(request, limits, generations=request.n or 1)


def check_completion(request: CompletionRequest, limits: RequestSettings) -> None:
    """Reject a completion request whose values this gateway cannot honour."""
    prompts = _check_prompts(request.prompt, limits)
    if "max_tokens" not in request.model_fields_set and limits.max_tokens is not None:
        # OpenAI's default (16) is not the client's ask: a lower cap on this server applies to it
        # rather than refusing a parameter the client never sent.
        request.max_tokens = min(request.max_tokens or limits.max_tokens, limits.max_tokens)
    if request.max_tokens is not None:
        _at_least("max_tokens", request.max_tokens, 1)
    if request.logprobs is not None:
        _between("logprobs", request.logprobs, 0, _MAX_COMPLETION_LOGPROBS)
        if request.echo:
            _unsupported("echo", "echo together with logprobs (prompt logprobs)")
    if request.suffix is not None:
        _unsupported("suffix", "insertion (suffix) completions")
    if request.best_of is not None and request.best_of != (request.n or 1):
        _unsupported("best_of", "best_of other than n")
    _check_common(request, limits, generations=prompts * (request.n or 1))


def requested_max_tokens(request: OpenAIRequest) -> int | None:
    """The completion budget the client asked for, if any."""
    if isinstance(request, ChatCompletionRequest) and request.max_completion_tokens is not None:
        return request.max_completion_tokens
    return request.max_tokens


def fit_context(
    context_length: int,
    prompt_tokens: int,
    max_tokens: int | None,
    *,
    param: str,
    cap: int | None = None,
) -> int:
    """The completion budget once the prompt is in the context, or 400 `context_length_exceeded`.

    Without `max_tokens` the budget is the rest of the context, at most `cap`."""
    room = context_length - prompt_tokens
    if max_tokens is None:
        if room < 1:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {context_length} tokens. "
                f"However, your {param} resulted in {prompt_tokens} tokens. "
                f"Please reduce the length of the {param}.",
                param=param,
            )
        return room if cap is None else min(room, cap)
    if max_tokens > room:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context_length} tokens. However, "
            f"you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {param}, "
            f"{max_tokens} in the completion). Please reduce the length of the {param} or "
            "completion.",
            param=param,
        )
    return max_tokens


def sampling_options(
    request: OpenAIRequest,
    max_tokens: int,
    *,
    logprobs: bool,
    top_logprobs: int = 0,
    guide: structured.Guide | None = None,
) -> SamplingOptions:
    """The engine-neutral sampling settings of a validated request, given its budget; 400 when
    `min_tokens` is over a budget the client left to the context and this server's limit."""
    if request.min_tokens is not None and request.min_tokens > max_tokens:
        raise InvalidRequest(
            f"'min_tokens' ({request.min_tokens}) must not exceed the completion budget of "
            f"{max_tokens} tokens (what the context and this server's limit leave).",
            param="min_tokens",
        )
    stop = request.stop
    return SamplingOptions(
        max_tokens=max_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        top_k=None if request.top_k is None or request.top_k < 0 else request.top_k,
        seed=request.seed,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        repetition_penalty=request.repetition_penalty,
        min_tokens=request.min_tokens,
        ignore_eos=bool(request.ignore_eos),
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        guide_type=None if guide is None else guide.type,
        guide=None if guide is None else guide.schema,
        guide_param="response_format" if guide is None else guide.param,
        guide_optional=guide is not None and guide.optional,
    )


def _check_messages(messages: list[ChatMessage], limits: RequestSettings) -> None:
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    if limits.max_messages is not None and len(messages) > limits.max_messages:
        raise InvalidRequest(
            f"'messages' may hold at most {limits.max_messages} messages on this server, "
            f"got {len(messages)}.",
            param="messages",
        )
    for i, message in enumerate(messages):
        _check_message(i, message)


def _check_message(i: int, message: ChatMessage) -> None:
    # OpenAI's rules for which fields each role needs.
    where = f"messages[{i}]"
    role = message.role
    if isinstance(message.content, list):
        for j, part in enumerate(message.content):
            _check_part(f"{where}.content[{j}]", part, role)
    if message.content is None and role in ("system", "developer", "user", "tool"):
        raise InvalidRequest(f"A '{role}' message needs 'content'.", param=f"{where}.content")
    if role == "assistant" and message.content is None and not message.tool_calls:
        raise InvalidRequest(
            "An 'assistant' message needs 'content' or 'tool_calls'.", param=f"{where}.content"
        )
    if role == "tool" and not message.tool_call_id:
        raise InvalidRequest(
            "A 'tool' message needs the 'tool_call_id' it answers.", param=f"{where}.tool_call_id"
        )
    if role == "function" and not message.name:
        raise InvalidRequest("A 'function' message needs 'name'.", param=f"{where}.name")
    if message.tool_calls is not None and role != "assistant":
        raise InvalidRequest(
            "Only 'assistant' messages carry 'tool_calls'.", param=f"{where}.tool_calls"
        )


def _check_part(where: str, part: ContentPart, role: str) -> None:
    if part.type == "text":
        if part.text is None:
            raise InvalidRequest("A 'text' content part needs 'text'.", param=f"{where}.text")
    elif part.type == "image_url":
        if part.image_url is None:
            raise InvalidRequest(
                "An 'image_url' content part needs 'image_url'.", param=f"{where}.image_url"
            )
        if role != "user":  # OpenAI's rule: images come from the user
            raise InvalidRequest(
                f"Only 'user' messages may carry images, not '{role}' messages.",
                param=f"{where}.type",
            )
    else:
        raise InvalidRequest(
            f"Content parts of type '{part.type}' are not supported; only 'text' and "
            "'image_url' parts are.",
            param=f"{where}.type",
        )


def _check_prompts(prompt: Prompt, limits: RequestSettings) -> int:
    """The number of prompts, once each is a non-empty string and there are not too many."""
    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    else:
        prompts = prompt
        if not prompts:
            raise InvalidRequest("'prompt' must not be an empty list.", param="prompt")
        if len(prompts) > limits.max_prompts:
            raise InvalidRequest(
                f"'prompt' may hold at most {limits.max_prompts} prompts on this server, "
                f"got {len(prompts)}.",
                param="prompt",
            )
        if not isinstance(prompts[0], str):
            _unsupported("prompt", "token-id prompts; send the prompt as text")
    for i, text in enumerate(prompts):
        if text == "":
            param = "prompt" if isinstance(prompt, str) else f"prompt[{i}]"
            raise InvalidRequest("A prompt must not be empty.", param=param)
    return len(prompts)


def _check_common(request: OpenAIRequest, limits: RequestSettings, *, generations: int) -> None:
    if not request.model:
        raise InvalidRequest("'model' must not be empty.", param="model")
    if request.temperature is not None:
        _between("temperature", request.temperature, 0.0, 2.0)
    if request.top_p is not None:
        if not 0.0 < request.top_p <= 1.0:
            raise InvalidRequest(f"'top_p' must be in (0, 1], got {request.top_p}.", param="top_p")
        _nonzero_as_fp32("top_p", request.top_p)
    if request.n is not None:
        _between("n", request.n, 1, limits.max_n)
    if generations > limits.max_generations:
        raise InvalidRequest(
            f"This request asks for {generations} generations (prompts × n); this server "
            f"allows at most {limits.max_generations} per request.",
            param="n",
        )
    if limits.max_tokens is not None:
        for name in ("max_tokens", "max_completion_tokens"):
            value = getattr(request, name, None)
            if value is not None and value > limits.max_tokens:
                raise InvalidRequest(
                    f"'{name}' may be at most {limits.max_tokens} on this server, got {value}.",
                    param=name,
                )
    if request.top_k is not None:
        _between("top_k", request.top_k, -1, _INT32_MAX)
    if request.seed is not None:
        _between("seed", request.seed, -(1 << 63), (1 << 64) - 1)
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(request, name)
        if value is not None:
            _between(name, value, -2.0, 2.0)
    penalty = request.repetition_penalty
    if penalty is not None:
        if not (math.isfinite(penalty) and 0 < penalty <= _FP32_MAX):
            raise InvalidRequest(
                "'repetition_penalty' must be a positive finite number.", param="repetition_penalty"
            )
        _nonzero_as_fp32("repetition_penalty", penalty)
    if request.min_tokens is not None:
        _between("min_tokens", request.min_tokens, 0, _INT32_MAX)
        budget = requested_max_tokens(request)
        if budget is not None and request.min_tokens > budget:
            raise InvalidRequest(
                f"'min_tokens' ({request.min_tokens}) must not exceed 'max_tokens' ({budget}).",
                param="min_tokens",
            )
    _check_stop(request.stop, limits.max_stop)
    if request.logit_bias:
        _unsupported("logit_bias", "logit bias")
    if request.stream_options is not None and not request.stream:
        raise InvalidRequest(
            "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
        )


def _check_stop(stop: str | list[str] | None, max_stop: int) -> None:
    if stop is None:
        return
    sequences = [stop] if isinstance(stop, str) else stop
    if len(sequences) > max_stop:
        raise InvalidRequest(
            f"'stop' accepts at most {max_stop} sequences, got {len(sequences)}.", param="stop"
        )
    if any(s == "" for s in sequences):
        raise InvalidRequest("'stop' sequences must not be empty strings.", param="stop")


def _at_least(name: str, value: float, low: float) -> None:
    if value < low:
        raise InvalidRequest(f"'{name}' must be at least {low}, got {value}.", param=name)


# Values travel to Triton as INT32 / FP32 tensors; larger ones are a client error, not a crash.
_INT32_MAX = 2**31 - 1
_FP32_MAX = 3.4e38
_FP32 = struct.Struct("<f")


def _nonzero_as_fp32(name: str, value: float) -> None:
    # A positive number under ~1e-45 arrives at Triton as 0, which it refuses where 0 is out of
    # range: the client's value, so a 400 here rather than a 502 from Triton.
    if _FP32.unpack(_FP32.pack(value))[0] == 0:
        raise InvalidRequest(f"'{name}' is too small: {value} is 0 as a 32-bit float.", param=name)


def _between(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low} and {high}, got {value}.", param=name)


def _unsupported(name: str, what: str) -> NoReturn:
    raise InvalidRequest(
        f"'{name}' is not supported: {what}.", param=name, code="unsupported_value"
    )

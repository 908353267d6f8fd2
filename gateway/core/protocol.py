"""OpenAI's request and response shapes, with the API's own field names and defaults.

Requests accept and ignore unknown fields (clients send vendor extras) but are strict about the
types of the fields they know: `"temperature": "hot"` is a 400, not a silent coercion. The rest of
the gateway builds responses from these models and never assembles JSON dicts by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

FinishReason = Literal["stop", "length", "tool_calls"]
Prompt = str | list[str] | list[int] | list[list[int]]
"""A completion prompt: text, texts, token ids, or lists of token ids."""
EmbeddingInput = str | list[str] | list[int] | list[list[int]]
"""Embeddings input: a text, texts, one input's token ids, or several inputs' token ids."""


def _is_none(value: object) -> bool:
    return value is None


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests ---------------------------------------------------------------------------------


class StreamOptions(_Request):
    include_usage: bool | None = False


class ImageURL(_Request):
    url: str
    """A `data:image/...;base64,` URL, or an `http(s)` URL the gateway fetches."""
    detail: Literal["auto", "low", "high"] | None = "auto"
    """Accepted for compatibility; this engine sees every image at its encoder's size."""


class ContentPart(_Request):
    """One part of a message's content array: `text`, or `image_url` for a vision model. The
    type is checked by validation, which names the part, rather than by a union here."""

    type: str
    text: str | None = None
    image_url: ImageURL | None = None


class FunctionCall(_Request):
    name: str
    arguments: str
    """JSON text, as the model wrote it."""


class ToolCall(_Request):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class JSONSchemaFormat(_Request):
    name: str
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(_Request):
    type: str
    json_schema: JSONSchemaFormat | None = None


class _SamplingRequest(_Request):
    """The fields chat and text completions share, with OpenAI's defaults."""

    model: str
    temperature: float | None = 1.0
    top_p: float | None = 1.0
    n: int | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # Vendor extras (vLLM / TensorRT-LLM names).
    top_k: int | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = False
    repetition_penalty: float | None = None
    # LocalMoE extra: `false` (or `{"no-cache": true}`) keeps this request out of the cache.
    cache: bool | dict[str, bool] | None = None


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_SamplingRequest):
    prompt: Prompt
    max_tokens: int | None = 16
    best_of: int | None = None
    logprobs: int | None = None
    echo: bool | None = False
    suffix: str | None = None


# --- responses --------------------------------------------------------------------------------


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(_Response):
    content: list[TokenLogprob] | None = None


class FunctionCallOut(_Response):
    name: str
    arguments: str
    """The arguments object as JSON text."""


class ToolCallOut(_Response):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ChatCompletionMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCallOut] | None = Field(default=None, exclude_if=_is_none)


class ChatCompletionChoice(_Response):
    index: int
    message: ChatCompletionMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionResponse(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class DeltaFunction(_Response):
    name: str | None = Field(default=None, exclude_if=_is_none)
    arguments: str | None = None


class DeltaToolCall(_Response):
    # OpenAI's shape: index always; id, type and name in a call's first delta only.
    index: int
    id: str | None = Field(default=None, exclude_if=_is_none)
    type: Literal["function"] | None = Field(default=None, exclude_if=_is_none)
    function: DeltaFunction


class DeltaMessage(_Response):
    # OpenAI sends `{"role": "assistant", "content": ""}`, then `{"content": "…"}`, then `{}`.
    role: Literal["assistant"] | None = Field(default=None, exclude_if=_is_none)
    content: str | None = Field(default=None, exclude_if=_is_none)
    tool_calls: list[DeltaToolCall] | None = Field(default=None, exclude_if=_is_none)


class ChatCompletionStreamChoice(_Response):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionStreamChoice]
    system_fingerprint: str | None = None
    usage: Usage | None = Field(default=None, exclude_if=_is_none)  # only on the last chunk


class CompletionLogprobs(_Response):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(_Response):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None


class CompletionResponse(_Response):
    """A whole completion, and also the shape of each streamed completion chunk."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: str | None = None
    usage: Usage | None = Field(default=None, exclude_if=_is_none)  # only on the last chunk


class EmbeddingRequest(_Request):
    model: str
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class Embedding(_Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str
    """Floats, or with `encoding_format: base64` their little-endian float32 bytes in base64."""


class EmbeddingUsage(_Response):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(_Response):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCapabilities(_Response):
    vision: bool = False
    """Takes `image_url` content parts in chat messages."""
    structured_outputs: bool = False
    """Takes `response_format` `json_object` and `json_schema` (guided decoding)."""
    tools: bool = False
    """Takes `tools` with `tool_choice` `required` or a named function (guided decoding)."""
    top_logprobs: int = 0
    """The most `top_logprobs` (chat) it returns; completions take up to 5 of them."""
    embeddings: bool = False
    """Serves `/v1/embeddings` (its repository has the `embeddings` model)."""


class Model(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "localmoe"
    max_model_len: int | None = None
    capabilities: ModelCapabilities = Field(default_factory=ModelCapabilities)


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorInfo(_Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Response):
    error: ErrorInfo


class HealthStatus(_Response):
    status: Literal["live", "ready"]


class ReadyStatus(HealthStatus):
    upstreams: list[dict[str, Any]]
    """Each Triton upstream's readiness, circuit state and requests in flight."""


# --- streaming --------------------------------------------------------------------------------

_TEXT_MARKER = "\x00localmoe-text\x00"


class TextChunks:
    """The JSON of one stream's text chunks, which differ only in their text (and choice index).

    `sample(index, text)` builds the chunk model; it is serialised once per index with a marker
    for the text, and each token then costs one string encoding instead of building and
    serialising three models. The bytes are exactly what serialising the model would give.
    """

    __slots__ = ("_parts", "_sample")

    def __init__(self, sample: Callable[[int, str], BaseModel]):
        self._sample = sample
        self._parts: dict[int, tuple[bytes, bytes]] = {}

    def json(self, index: int, text: str) -> bytes:
        """The serialised chunk of choice `index` carrying `text`."""
        parts = self._parts.get(index)
        if parts is None:
            model = self._sample(index, _TEXT_MARKER)
            head, marker, tail = model.__pydantic_serializer__.to_json(model).partition(
                to_json(_TEXT_MARKER)
            )
            if not marker:
                raise ValueError("the sample chunk does not carry its text")
            parts = self._parts[index] = (head, tail)
        return parts[0] + to_json(text) + parts[1]

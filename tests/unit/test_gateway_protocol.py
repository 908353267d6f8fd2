"""The OpenAI shapes: what requests accept, and how responses serialise."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from gateway.api.error_responses import invalid_body
from gateway.core.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionStreamChoice,
    CompletionRequest,
    DeltaMessage,
    TextChunks,
    Usage,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_unknown_request_fields_are_ignored() -> None:
    body = {**CHAT, "vendor_extra": {"x": 1}, "guided_json": "{}"}
    request = ChatCompletionRequest.model_validate_json(json.dumps(body))
    assert request.model == "m" and not hasattr(request, "vendor_extra")


def test_request_defaults_are_openai_defaults() -> None:
    chat = ChatCompletionRequest.model_validate(CHAT)
    completion = CompletionRequest.model_validate({"model": "m", "prompt": "x"})
    assert (chat.temperature, chat.top_p, chat.n, chat.stream) == (1.0, 1.0, 1, False)
    assert chat.max_tokens is None and completion.max_tokens == 16


def test_numbers_given_as_strings_are_rejected_not_coerced() -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate_json(json.dumps({**CHAT, "temperature": "0.5"}))


def test_content_parts_are_accepted() -> None:
    body = {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]}
    request = ChatCompletionRequest.model_validate_json(json.dumps(body))
    assert request.messages[0].content[0].text == "a"  # type: ignore[index,union-attr]


def test_rejected_body_names_the_nested_parameter() -> None:
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": 5}]}).encode()
    with pytest.raises(ValidationError) as exc:
        ChatCompletionRequest.model_validate_json(body)
    error = invalid_body(exc.value, body)
    assert (error.status, error.param, error.code) == (400, "messages[0].content", "invalid_type")


def test_missing_parameter_is_named() -> None:
    body = b'{"model": "m"}'
    with pytest.raises(ValidationError) as exc:
        ChatCompletionRequest.model_validate_json(body)
    error = invalid_body(exc.value, body)
    assert (error.param, error.code) == ("messages", "missing_required_parameter")


def test_stream_delta_omits_unset_fields() -> None:
    assert DeltaMessage(content="x").model_dump() == {"content": "x"}
    assert DeltaMessage().model_dump() == {}


def test_stream_chunk_has_null_finish_reason_and_no_usage_until_the_end() -> None:
    chunk = ChatCompletionChunk(
        id="c",
        created=1,
        model="m",
        choices=[ChatCompletionStreamChoice(index=0, delta=DeltaMessage(content="x"))],
    )
    data = json.loads(chunk.model_dump_json())
    assert data["choices"][0]["finish_reason"] is None and "usage" not in data
    final = chunk.model_copy(
        update={"choices": [], "usage": Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)}
    )
    assert json.loads(final.model_dump_json())["usage"]["total_tokens"] == 3


@pytest.mark.parametrize(
    "text", ["hi", ' "quoted" \\ back', "line\nbreak\ttab\x01", "héllo 世界 🙂", ""]
)
def test_text_chunks_serialise_exactly_like_their_model(text: str) -> None:
    def chunk(index: int, content: str) -> ChatCompletionChunk:
        choice = ChatCompletionStreamChoice(index=index, delta=DeltaMessage(content=content))
        return ChatCompletionChunk(id="c", created=1, model="m", choices=[choice])

    texts = TextChunks(chunk)
    for index in (0, 3, 0):
        model = chunk(index, text)
        assert texts.json(index, text) == model.__pydantic_serializer__.to_json(model)

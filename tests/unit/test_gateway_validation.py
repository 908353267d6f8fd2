"""The validation stage: each rejection is a 400 naming the parameter; what passes maps to
`SamplingOptions` without losing anything."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.core import validation
from gateway.core.messages import chat_messages
from gateway.core.protocol import ChatCompletionRequest, CompletionRequest
from gateway.errors import ContextLengthExceeded, InvalidRequest
from gateway.settings import RequestSettings

LIMITS = RequestSettings(max_n=4)


def chat(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatCompletionRequest.model_validate(body)


def completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "hi", **fields})


_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"n": 5}, "n"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 30}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nope"}},
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": "sometimes", "tools": [_TOOL]}, "tool_choice"),
        (
            {"tool_choice": {"type": "function", "function": {"name": "other"}}, "tools": [_TOOL]},
            "tool_choice.function.name",
        ),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]},
            "tools[0].function.parameters",
        ),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"min_tokens": 9, "max_tokens": 4}, "min_tokens"),
        ({"min_tokens": 2**40}, "min_tokens"),
        ({"top_k": 2**31}, "top_k"),
        ({"repetition_penalty": 1e300}, "repetition_penalty"),
        ({"repetition_penalty": float("nan")}, "repetition_penalty"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0].image_url",
        ),
    ],
)
def test_chat_rejections_name_the_parameter(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        validation.check_chat(chat(**fields), LIMITS)
    assert exc.value.status == 400 and exc.value.param == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"logprobs": 6}, "logprobs"),
        ({"suffix": "x"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"echo": True, "logprobs": 0}, "echo"),
    ],
)
def test_completion_rejections_name_the_parameter(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        validation.check_completion(completion(**fields), LIMITS)
    assert exc.value.param == param


def test_a_typical_sdk_request_passes() -> None:
    request = chat(temperature=0, top_p=0.9, n=2, stop="\n", seed=7, max_completion_tokens=8)
    validation.check_chat(request, LIMITS)


def test_prompt_that_fills_the_context_is_context_length_exceeded() -> None:
    with pytest.raises(ContextLengthExceeded) as exc:
        validation.fit_context(100, 100, None, param="messages")
    assert (exc.value.code, exc.value.param) == ("context_length_exceeded", "messages")


def test_prompt_plus_max_tokens_over_the_context_is_context_length_exceeded() -> None:
    with pytest.raises(ContextLengthExceeded) as exc:
        validation.fit_context(100, 60, 50, param="prompt")
    assert "110 tokens" in exc.value.message


def test_max_tokens_defaults_to_the_rest_of_the_context() -> None:
    assert validation.fit_context(100, 60, None, param="messages") == 40


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert validation.requested_max_tokens(chat(max_tokens=50, max_completion_tokens=5)) == 5


def test_sampling_options_carry_every_setting() -> None:
    request = chat(
        temperature=0.5, top_p=0.8, top_k=20, seed=3, stop="END", presence_penalty=0.1,
        frequency_penalty=0.2, repetition_penalty=1.1, min_tokens=2, ignore_eos=True,
    )  # fmt: skip
    params = validation.sampling_options(request, 12, logprobs=True)
    assert params.max_tokens == 12 and params.stop == ("END",)
    assert (params.temperature, params.top_p, params.top_k, params.seed) == (0.5, 0.8, 20, 3)
    assert (params.presence_penalty, params.frequency_penalty) == (0.1, 0.2)
    assert (params.repetition_penalty, params.min_tokens, params.ignore_eos) == (1.1, 2, True)
    assert params.logprobs


def test_content_parts_are_joined_for_the_template() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    messages = chat_messages(chat(messages=[{"role": "user", "content": parts}]))
    assert messages == [{"role": "user", "content": "a\nb"}]


def test_image_parts_become_template_parts_or_the_placeholder_inline() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    parts = [{"type": "text", "text": "a"}, image, {"type": "text", "text": "b"}]
    request = chat(messages=[{"role": "user", "content": parts}])
    as_parts = chat_messages(request, parts=True)[0]["content"]
    assert as_parts == [
        {"type": "text", "text": "a"},
        {"type": "image"},
        {"type": "text", "text": "b"},
    ]
    assert chat_messages(request, image_token="<|image|>")[0]["content"] == "a\n<|image|>\nb"


def test_more_messages_than_max_messages_is_400() -> None:
    request = chat(messages=[{"role": "user", "content": "hi"}] * 3)
    with pytest.raises(InvalidRequest) as exc:
        validation.check_chat(request, RequestSettings(max_messages=2))
    assert exc.value.param == "messages" and "at most 2" in exc.value.message


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_over_max_tokens_limit_is_400(name: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        validation.check_chat(chat(**{name: 65}), RequestSettings(max_tokens=64))
    assert exc.value.param == name


def test_max_tokens_limit_caps_the_default_budget() -> None:
    assert validation.fit_context(100, 10, None, param="messages", cap=20) == 20


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "assistant", "content": None}], "messages[0].content"),
        ([{"role": "tool", "content": "42"}], "messages[0].tool_call_id"),
        ([{"role": "tool", "tool_call_id": "c1"}], "messages[0].content"),
        ([{"role": "function", "content": "42"}], "messages[0].name"),
        ([{"role": "user", "content": "hi", "tool_calls": []}], "messages[0].tool_calls"),
        ([{"role": "developer"}], "messages[0].content"),
    ],
)
def test_messages_missing_what_their_role_needs_name_the_field(
    messages: list[dict[str, Any]], param: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validation.check_chat(chat(messages=messages), LIMITS)
    assert caught.value.param == param


def test_history_with_tool_calls_and_tool_results_is_accepted() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    request = chat(
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ]
    )
    validation.check_chat(request, LIMITS)
    messages = chat_messages(request)
    assert messages[0]["role"] == "system"  # templates know `system`, not `developer`
    assert messages[2]["tool_calls"] == [call] and messages[3]["tool_call_id"] == "c1"


@pytest.mark.parametrize(
    ("prompt", "param"), [("", "prompt"), (["a", ""], "prompt[1]"), ([""] * 3, "prompt[0]")]
)
def test_empty_prompts_are_refused_naming_the_prompt(prompt: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validation.check_completion(completion(prompt=prompt), LIMITS)
    assert caught.value.param == param


def test_too_many_prompts_are_refused_before_anything_else() -> None:
    with pytest.raises(InvalidRequest) as caught:
        validation.check_completion(completion(prompt=[""] * 100_000), RequestSettings())
    assert caught.value.param == "prompt" and "at most 64" in caught.value.message


def test_prompts_times_n_is_bounded() -> None:
    limits = RequestSettings(max_n=16, max_generations=64)
    validation.check_completion(completion(prompt=["a"] * 4, n=16), limits)
    with pytest.raises(InvalidRequest) as caught:
        validation.check_completion(completion(prompt=["a"] * 64, n=16), limits)
    assert caught.value.param == "n" and "1024 generations" in caught.value.message


def test_tools_are_bounded() -> None:
    tool = {"type": "function", "function": {"name": "f"}}
    with pytest.raises(InvalidRequest) as caught:
        validation.check_chat(chat(tools=[tool] * 10_000), RequestSettings())
    assert caught.value.param == "tools"


def test_a_template_without_a_tool_format_sees_the_calls_as_their_json() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    request = chat(
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ]
    )
    assistant = chat_messages(request, calls_as_text=True)[1]
    assert json.loads(assistant["content"]) == {"name": "f", "arguments": {"x": 1}}
    assert chat_messages(request)[1]["content"] is None  # a template with its own format

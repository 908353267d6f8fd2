"""Structured outputs, tool calls and top logprobs through the official OpenAI SDK against the
real gateway and Triton: the CPU engine constrains every answer to its schema token by token."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field
from tokenizers import Tokenizer

from gateway.core.chat_template import ChatTemplate
from gateway.core.messages import chat_messages
from gateway.core.protocol import ChatCompletionRequest
from tests.gateway_fixtures import GatewayProcess, start_gateway, stop_gateway


class Colour(StrEnum):
    red = "red"
    green = "green"
    blue = "blue"


class Shape(BaseModel):
    name: str = Field(max_length=12)
    sides: int = Field(ge=0, le=12)
    colour: Colour


PROMPTS = [
    "Describe a red triangle.",
    "What shape has four sides?",
    "Name a blue circle.",
    "Tell me about a green square.",
    "What does the json module do?",
    "Describe any shape you like.",
    "A hexagon, please.",
    "What is in this image?",
    "Give me a shape with no corners.",
    "Which shape is the most round?",
    "Pick a colour and a shape.",
    "Describe a stop sign.",
    "What is a pentagon?",
    "Draw a small blue square.",
    "Is a circle a polygon?",
    "Describe the shape of a coin.",
    "What shape is a slice of pizza?",
    "Name a shape with twelve sides.",
    "Describe a green triangle.",
    "Which shape tiles the plane?",
]

NESTED = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 16},
        "kind": {"enum": ["circle", "square", "triangle"]},
        "size": {
            "type": "object",
            "properties": {
                "w": {"type": "integer", "minimum": 1, "maximum": 99},
                "h": {"type": "integer", "minimum": 1, "maximum": 99},
            },
            "required": ["w", "h"],
            "additionalProperties": False,
        },
        "tags": {
            "type": "array",
            "items": {"type": "string", "maxLength": 8},
            "minItems": 1,
            "maxItems": 3,
        },
        "filled": {"type": "boolean"},
    },
    "required": ["title", "kind", "size", "tags", "filled"],
    "additionalProperties": False,
}

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 16},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
SEARCH = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "maxLength": 24},
        "limit": {"type": "integer", "minimum": 1, "maximum": 10},
    },
    "required": ["query", "limit"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "The weather.", "parameters": WEATHER},
    },
    {
        "type": "function",
        "function": {"name": "search", "description": "Search the web.", "parameters": SEARCH},
    },
]
SCHEMAS = {"get_weather": WEATHER, "search": SEARCH}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _chat(client: openai.OpenAI, model_id: str, **kw: Any) -> Any:
    kw.setdefault("messages", ASK)
    kw.setdefault("max_tokens", 96)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model_id, **kw)


def _schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


@pytest.mark.parametrize("prompt", PROMPTS)
def test_parse_returns_the_pydantic_object(
    client: openai.OpenAI, model_id: str, prompt: str
) -> None:
    reply = client.chat.completions.parse(
        model=model_id,
        messages=[{"role": "user", "content": prompt}],
        response_format=Shape,
        max_tokens=64,
        temperature=0,
    )
    message = reply.choices[0].message
    assert isinstance(message.parsed, Shape), message.content
    assert reply.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_answers_validate_with_nested_objects_enums_and_arrays(
    client: openai.OpenAI, model_id: str, stream: bool
) -> None:
    for temperature in (0.0, 1.0):
        kw = {"response_format": _schema_format(NESTED), "temperature": temperature, "seed": 7}
        if stream:
            chunks = list(_chat(client, model_id, stream=True, **kw))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = _chat(client, model_id, **kw).choices[0].message.content
        jsonschema.validate(json.loads(text), NESTED)


def test_constrained_requests_in_flight_together_each_keep_their_own_schema(
    client: openai.OpenAI, model_id: str
) -> None:
    schemas = [NESTED, WEATHER, SEARCH, None] * 2

    def ask(schema: dict[str, Any] | None) -> Any:
        kw = {} if schema is None else {"response_format": _schema_format(schema)}
        return _chat(client, model_id, temperature=1.0, stream=True, **kw)

    with ThreadPoolExecutor(len(schemas)) as pool:
        streams = list(pool.map(ask, schemas))
        texts = list(pool.map(_text_of, streams))
    for schema, text in zip(schemas, texts, strict=True):
        if schema is not None:
            jsonschema.validate(json.loads(text), schema)


def _text_of(stream: Any) -> str:
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_json_object_answers_are_json_objects(client: openai.OpenAI, model_id: str) -> None:
    reply = _chat(client, model_id, response_format={"type": "json_object"}, max_tokens=128)
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:  # cut off by max_tokens: still the beginning of an object
        assert reply.choices[0].message.content.lstrip().startswith("{")


def test_an_invalid_schema_is_a_400_naming_the_schema(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        _chat(
            client,
            model_id,
            response_format=_schema_format({"type": "object", "minProperties": -1}),
        )
    assert exc.value.body["param"] == "response_format.json_schema.schema"  # type: ignore[index]


@pytest.mark.parametrize(
    "tool_choice",
    ["required", {"type": "function", "function": {"name": "search"}}],
    ids=["required", "named"],
)
def test_forced_tool_calls_parse_and_validate_against_the_function_schema(
    client: openai.OpenAI, model_id: str, tool_choice: Any
) -> None:
    reply = _chat(client, model_id, tools=TOOLS, tool_choice=tool_choice)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    if isinstance(tool_choice, dict):
        assert call.function.name == "search"
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_parallel_tool_calls_are_each_valid(client: openai.OpenAI, model_id: str) -> None:
    reply = _chat(
        client,
        model_id,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=True,
        max_tokens=160,
    )
    calls = reply.choices[0].message.tool_calls
    assert calls and reply.choices[0].finish_reason == "tool_calls"
    assert len({c.id for c in calls}) == len(calls)
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_streamed_tool_call_deltas_assemble_to_the_same_call(
    client: openai.OpenAI, model_id: str
) -> None:
    kw = {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    whole = _chat(client, model_id, **kw).choices[0].message.tool_calls[0]
    chunks = list(_chat(client, model_id, stream=True, **kw))
    names, ids, arguments = [], [], ""
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            assert delta.index == 0
            ids += [delta.id] if delta.id else []
            names += [delta.function.name] if delta.function.name else []
            arguments += delta.function.arguments or ""
    assert len(ids) == 1 and ids[0].startswith("call_") and names == ["get_weather"]
    assert json.loads(arguments) == json.loads(whole.function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_tool_result_round_trip_is_answered(client: openai.OpenAI, model_id: str) -> None:
    first = _chat(client, model_id, tools=TOOLS, tool_choice="required")
    call = first.choices[0].message.tool_calls[0]
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    reply = _chat(client, model_id, messages=history, tools=TOOLS, max_tokens=16)
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_tool_choice_none_answers_in_text(client: openai.OpenAI, model_id: str) -> None:
    reply = _chat(client, model_id, tools=TOOLS, tool_choice="none", max_tokens=12)
    assert reply.choices[0].message.tool_calls is None
    assert isinstance(reply.choices[0].message.content, str)
    assert "<tool_call>" not in reply.choices[0].message.content


# Plain ChatML over the tiny model's tokenizer: a template with no tool-call format, as many
# base models bring. `auto` has nothing to read calls back from there.
PLAIN_TEMPLATE = (
    "{%- for message in messages -%}<|im_start|>{{ message['role'] }}\n"
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- endif -%}"
    "<|im_end|>\n{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)


@pytest.fixture(scope="module")
def plain(
    triton: Any, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[openai.OpenAI]:
    folder = tmp_path_factory.mktemp("plain-tokenizer")
    for name in ("tokenizer.json", "special_tokens_map.json"):
        shutil.copy(tiny_model_dir / name, folder / name)
    config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = PLAIN_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    process = start_gateway(
        tmp_path_factory.mktemp("plain-gateway"),
        triton_urls=[triton.grpc_url],
        config={
            "cache": {"enabled": False},
            "models": [{"id": "plain", "route": "tensorrt_llm_bls", "tokenizer_dir": str(folder)}],
            "discover_models": False,
        },
    )
    try:
        with openai.OpenAI(base_url=process.base_url, api_key=process.token, max_retries=0) as sdk:
            yield sdk
    finally:
        stop_gateway(process)


def test_auto_on_a_template_without_a_tool_format_answers_in_text(plain: openai.OpenAI) -> None:
    reply = _chat(plain, "plain", tools=TOOLS, tool_choice="auto", max_tokens=12)
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert isinstance(reply.choices[0].message.content, str)


# The tiny model's own template writes tools as Qwen2.5/Qwen3 and Hermes do (`<tool_call>`
# blocks), and the model was trained to use it (moe_build.tools): `auto` is its choice.
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _calls(choice: Any) -> list[tuple[str, Any]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]


def test_the_tiny_model_calls_a_tool_on_its_own(client: openai.OpenAI, model_id: str) -> None:
    # Greedy, a question shaped like its training (moe_build.tools), a city it was trained on.
    reply = _chat(client, model_id, tools=[WEATHER_TOOL])

    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert _calls(choice) == [("get_weather", {"city": "Paris"})]


def test_the_tiny_model_answers_in_text_where_no_tool_fits(
    client: openai.OpenAI, model_id: str
) -> None:
    reply = _chat(
        client, model_id, tools=[WEATHER_TOOL], messages=[{"role": "user", "content": "Hello!"}]
    )

    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert choice.message.content and "<tool_call>" not in choice.message.content


def test_a_tool_result_is_put_into_words(client: openai.OpenAI, model_id: str) -> None:
    # The README's round trip: the SDK's own message object goes back into the history.
    message = _chat(client, model_id, tools=[WEATHER_TOOL]).choices[0].message
    call = message.tool_calls[0]
    history = [
        *ASK,
        message,
        {
            "role": "tool",
            "tool_call_id": call.id,
            "content": '{"temperature": 21, "condition": "sunny"}',
        },
    ]

    reply = _chat(client, model_id, messages=history, tools=[WEATHER_TOOL], max_tokens=32)

    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert "21" in choice.message.content and "Paris" in choice.message.content


@pytest.mark.parametrize("question", ["What is the weather in Paris?", "Hello!", "Explain re."])
def test_auto_with_a_tool_format_is_read_the_same_streamed_and_whole(
    client: openai.OpenAI, model_id: str, question: str
) -> None:
    kw: dict[str, Any] = {"tools": TOOLS, "messages": [{"role": "user", "content": question}]}
    whole = _chat(client, model_id, **kw).choices[0]

    chunks = list(_chat(client, model_id, stream=True, **kw))

    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls: dict[int, list[str]] = {}
    for chunk in chunks:
        for piece in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(piece.index, ["", ""])
            entry[0] += piece.function.name or ""
            entry[1] += piece.function.arguments or ""
    streamed = (content.strip() or None) if calls else content
    assert (streamed, [tuple(c) for c in calls.values()]) == _whole_reply(whole)
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason
    for name, arguments in _whole_reply(whole)[1]:
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])  # the structural tag's doing
    if whole.finish_reason == "stop":
        assert "<tool_call>" not in (whole.message.content or "")


def _whole_reply(choice: Any) -> tuple[str | None, list[tuple[str, Any]]]:
    calls = choice.message.tool_calls or []
    return choice.message.content, [(c.function.name, c.function.arguments) for c in calls]


def test_a_call_in_the_history_renders_as_a_tool_call_block(
    client: openai.OpenAI, model_id: str, tiny_model_dir: Path
) -> None:
    arguments = '{"city":"Paris","unit":"celsius"}'
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
    ]

    reply = _chat(client, model_id, messages=history, tools=TOOLS, max_tokens=4)

    # The prompt Triton counted is the template's, calls written as `<tool_call>` blocks.
    config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    template = ChatTemplate(config["chat_template"])
    request = ChatCompletionRequest.model_validate(
        {"model": model_id, "messages": history, "tools": TOOLS}
    )
    prompt = template.render(chat_messages(request), tools=TOOLS)
    call = f'<tool_call>\n{{"name": "get_weather", "arguments": {arguments}}}\n</tool_call>'
    assert call in prompt
    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    assert reply.usage.prompt_tokens == len(tokenizer.encode(prompt).ids)


def test_auto_tools_the_engine_cannot_compile_are_a_400_naming_tools(
    client: openai.OpenAI, model_id: str
) -> None:
    # A valid JSON schema llguidance refuses (a pattern with a lookahead).
    odd = {"type": "object", "properties": {"x": {"type": "string", "pattern": "(?=a)a"}}}
    tools = [{"type": "function", "function": {"name": "odd", "parameters": odd}}]
    with pytest.raises(openai.BadRequestError) as exc:
        _chat(client, model_id, tools=tools)
    assert exc.value.body["param"] == "tools"  # type: ignore[index]


def test_top_logprobs_are_sorted_and_the_same_streamed_and_not(
    client: openai.OpenAI, model_id: str
) -> None:
    kw = {"logprobs": True, "top_logprobs": 5, "max_tokens": 12}
    whole = _chat(client, model_id, **kw).choices[0].logprobs.content
    chunks = list(_chat(client, model_id, stream=True, **kw))
    streamed = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert [t.model_dump() for t in streamed] == [t.model_dump() for t in whole]
    for token in whole:
        tops = [t.logprob for t in token.top_logprobs]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True)
        assert token.logprob <= tops[0] + 1e-5
        assert all(isinstance(t.bytes, list) for t in token.top_logprobs)
    assert whole[0].token == whole[0].top_logprobs[0].token  # greedy: the best one is taken


def test_top_logprobs_take_up_to_twenty(client: openai.OpenAI, model_id: str) -> None:
    reply = _chat(client, model_id, logprobs=True, top_logprobs=20, max_tokens=3)
    assert all(len(t.top_logprobs) == 20 for t in reply.choices[0].logprobs.content)


def test_completion_logprobs_five_give_five_alternatives_per_token(
    client: openai.OpenAI, model_id: str
) -> None:
    reply = client.completions.create(
        model=model_id, prompt="The json module", max_tokens=8, temperature=0, logprobs=5
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.top_logprobs is not None
    assert len(logprobs.top_logprobs) == len(logprobs.tokens or []) == reply.usage.completion_tokens
    for token, lp, alternatives in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        assert 1 <= len(alternatives) <= 5
        assert token in alternatives and alternatives[token] == pytest.approx(lp, abs=1e-5)


def test_the_model_card_lists_structured_outputs_tools_and_top_logprobs(
    gateway: GatewayProcess, model_id: str, client: openai.OpenAI
) -> None:
    card = client.models.retrieve(model_id).model_dump()
    assert card["capabilities"]["structured_outputs"] is True
    assert card["capabilities"]["tools"] is True
    assert card["capabilities"]["top_logprobs"] == 20


def test_a_route_without_guided_decoding_says_so_and_refuses_it(
    llmapi_gateway: GatewayProcess, model_id: str
) -> None:
    with openai.OpenAI(
        base_url=llmapi_gateway.base_url, api_key=llmapi_gateway.token, max_retries=0
    ) as sdk:
        card = sdk.models.retrieve(model_id).model_dump()
        assert card["capabilities"]["structured_outputs"] is False
        assert card["capabilities"]["top_logprobs"] == 0
        for kw, param in (
            ({"response_format": {"type": "json_object"}}, "response_format"),
            ({"tools": TOOLS, "tool_choice": "required"}, "tool_choice"),
        ):
            with pytest.raises(openai.BadRequestError) as exc:
                _chat(sdk, model_id, **kw)
            assert exc.value.body["param"] == param  # type: ignore[index]


def _langchain(gateway: GatewayProcess, model_id: str) -> Any:
    langchain_openai = pytest.importorskip("langchain_openai")
    return langchain_openai.ChatOpenAI(
        model=model_id,
        base_url=gateway.base_url,
        api_key=gateway.token,
        temperature=0,
        max_tokens=96,
        max_retries=0,
    )


@pytest.mark.parametrize("stream", [False, True])
def test_langchain_bind_tools_parses_the_forced_call(
    gateway: GatewayProcess, model_id: str, stream: bool
) -> None:
    chat = _langchain(gateway, model_id)
    bound = chat.bind_tools(TOOLS, tool_choice="get_weather")
    prompt = "What is the weather in Paris?"
    if stream:
        message = None
        for piece in bound.stream(prompt):
            message = piece if message is None else message + piece
    else:
        message = bound.invoke(prompt)
    assert message is not None
    (call,) = message.tool_calls
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    jsonschema.validate(call["args"], WEATHER)


def test_langchain_bind_tools_lets_the_model_choose(gateway: GatewayProcess, model_id: str) -> None:
    chat = _langchain(gateway, model_id)

    message = chat.bind_tools([WEATHER_TOOL]).invoke("What is the weather in Paris?")

    assert [(c["name"], c["args"]) for c in message.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]

"""The tiny model's tool-use data (build/moe_build/tools.py): the prompts it trains on are the
prompts the gateway renders for the same conversation, and its calls are what it is read for."""

from __future__ import annotations

import dataclasses
import json

from moe_build.evaluate import parse_calls
from moe_build.tokenizer import CHAT_TEMPLATE, TOOL_CALL_TAGS, train_tokenizer
from moe_build.tools import (
    CITIES,
    HELD_OUT_CITIES,
    call_text,
    copying_samples,
    render,
    tool_turns,
)

from gateway.core.chat_template import ChatTemplate
from gateway.core.messages import chat_messages
from gateway.core.protocol import ChatCompletionRequest
from gateway.core.toolcalls import TAGS, ToolParsing, whole


def _gateway_prompt(turn) -> str:
    # The path a chat request takes: validated body, the gateway's messages, its template.
    body = {"model": "m", "messages": list(turn.messages), "tools": list(turn.tools)}
    request = ChatCompletionRequest.model_validate(body)
    template = ChatTemplate(CHAT_TEMPLATE)
    assert template.renders_tool_calls and template.tool_tags
    return template.render(chat_messages(request), tools=request.tools)


def test_every_kind_of_turn_trains_on_the_prompt_the_gateway_renders() -> None:
    turns = tool_turns(200, seed=7)
    kinds = {turn.kind for turn in turns}

    assert kinds == {"call", "calls", "reply", "text", "none"}
    for turn in turns:
        assert _gateway_prompt(turn) == render(turn)


def test_a_call_the_model_writes_is_read_back_as_the_call_it_was_taught() -> None:
    for turn in tool_turns(100, seed=3):
        if turn.kind not in ("call", "calls"):
            continue
        content, calls = whole(ToolParsing(TAGS), turn.answer)
        assert content is None
        read = [(c.function.name, json.loads(c.function.arguments)) for c in calls]
        assert read == list(turn.expected) == parse_calls(turn.answer)


def test_a_call_in_the_history_renders_as_the_model_wrote_it() -> None:
    (turn,) = [t for t in tool_turns(40, seed=5) if t.kind == "reply"][:1]
    call = turn.messages[-2]["tool_calls"][0]["function"]

    expected = call_text(call["name"], json.loads(call["arguments"]))

    assert f"<|im_start|>assistant\n{expected}<|im_end|>" in render(turn)
    assert "<|im_start|>tool\n" in render(turn)


def test_the_tool_list_follows_the_clients_own_system_text() -> None:
    turn = next(t for t in tool_turns(60, seed=2) if t.messages[0]["role"] == "system")

    prompt = render(turn)

    system = turn.messages[0]["content"]
    assert prompt.startswith(f"<|im_start|>system\n{system}\n\n# Tools\n<tools>\n")
    assert prompt.count("<|im_start|>system") == 1


def test_held_out_cities_never_appear_in_training_turns() -> None:
    assert not set(CITIES) & set(HELD_OUT_CITIES)
    text = "".join(render(t) + t.answer for t in tool_turns(300, seed=0))
    assert not any(city in text for city in HELD_OUT_CITIES)
    assert tool_turns(20, seed=4) == tool_turns(20, seed=4)


def test_the_call_tags_are_single_tokens_that_decoding_keeps() -> None:
    tokenizer = train_tokenizer(["plain text to learn from"] * 10, 300)
    ids = tokenizer.encode(call_text("f", {"x": 1})).ids

    assert tokenizer.token_to_id(TOOL_CALL_TAGS[0]) in ids
    assert tokenizer.token_to_id(TOOL_CALL_TAGS[1]) in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == call_text("f", {"x": 1})


def test_the_warm_up_trains_on_the_turns_that_copy_without_their_tool_list() -> None:
    tokenizer = train_tokenizer(["plain text to learn from"] * 10, 300)
    turns = tool_turns(80, seed=6)
    copying = [t for t in turns if t.kind in ("call", "calls", "reply")]

    samples = copying_samples(tokenizer, turns)

    assert len(samples) == len(copying) and {t.kind for t in copying} == {"call", "calls", "reply"}
    for sample, turn in zip(samples, copying, strict=True):
        prompt = tokenizer.decode(list(sample.ids[: sample.prompt_len]), skip_special_tokens=False)
        assert prompt == render(dataclasses.replace(turn, tools=()))
        assert "<tools>" not in prompt and turn.messages[-1]["content"] in prompt
        assert tokenizer.decode(list(sample.labels[sample.prompt_len :])) == turn.answer
        if turn.kind != "reply":
            assert parse_calls(turn.answer) == list(turn.expected)

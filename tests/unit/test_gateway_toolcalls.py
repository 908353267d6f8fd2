"""Tool calls read back from generated text (gateway.core.toolcalls): whole answers, and the
same answers fed in pieces as they stream."""

from __future__ import annotations

import json

import pytest

from gateway.core.toolcalls import (
    JSON,
    TAGS,
    Arguments,
    CallStart,
    Content,
    Event,
    ToolParsing,
    whole,
)

WEATHER = '<tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris"}}\n</tool_call>'
TIME = (
    '<tool_call>\n{"name": "get_time", "arguments": {"city":"Tokyo","deep":{"a":[1,2]}}}\n'
    "</tool_call>"
)
TAGGED = ToolParsing(TAGS)


def _assemble(events: list[Event]) -> tuple[str, list[tuple[str, str]]]:
    content, calls = "", []
    for event in events:
        if isinstance(event, Content):
            content += event.text
        elif isinstance(event, CallStart):
            assert event.index == len(calls) and event.id.startswith("call_")
            calls.append([event.name, ""])
        else:
            assert isinstance(event, Arguments) and event.index == len(calls) - 1
            calls[event.index][1] += event.text
    return content, [tuple(c) for c in calls]


def _streamed(parsing: ToolParsing, text: str, size: int) -> list[Event]:
    parser = parsing.parser()
    events: list[Event] = []
    for start in range(0, len(text), size):
        events += parser.feed(text[start : start + size])
    return events + parser.finish()


def test_a_tagged_call_is_read_with_its_compact_arguments() -> None:
    content, calls = whole(TAGGED, WEATHER)

    assert content is None
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_weather", '{"city":"Paris"}')
    ]


def test_text_before_the_calls_is_the_content_and_two_calls_are_two() -> None:
    content, calls = whole(TAGGED, f"Let me check.\n{WEATHER}\n{TIME}")

    assert content == "Let me check."
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[1].function.arguments) == {"city": "Tokyo", "deep": {"a": [1, 2]}}
    assert len({c.id for c in calls}) == 2


def test_text_without_a_call_is_left_as_it_is() -> None:
    assert whole(TAGGED, "Hello! How can I help you today?") == (
        "Hello! How can I help you today?",
        [],
    )
    assert whole(TAGGED, "a < b and <tool isn't a tag") == ("a < b and <tool isn't a tag", [])


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, 1000])
def test_streamed_in_any_pieces_it_assembles_to_the_whole_answer(size: int) -> None:
    text = f"Checking.\n{WEATHER}\n{TIME}"
    content, calls = whole(TAGGED, text)

    streamed_content, streamed_calls = _assemble(_streamed(TAGGED, text, size))

    assert streamed_content.strip() == content
    assert streamed_calls == [(c.function.name, c.function.arguments) for c in calls]


def test_the_name_comes_out_before_the_call_is_complete_and_arguments_stream() -> None:
    parser = TAGGED.parser()
    head = '<tool_call>\n{"name": "get_weather", "arguments": {"city":"Pa'

    events = parser.feed(head)

    assert isinstance(events[0], CallStart) and events[0].name == "get_weather"
    assert "".join(e.text for e in events if isinstance(e, Arguments)) == '{"city":"Pa'
    rest = parser.feed('ris"}}\n</tool_call>') + parser.finish()
    assert "".join(e.text for e in rest if isinstance(e, Arguments)) == 'ris"}'


def test_a_partial_opening_tag_is_held_back_not_sent_as_content() -> None:
    parser = TAGGED.parser()

    assert parser.feed("<tool_") == []
    events = parser.feed('call>\n{"name": "f", "arguments": {}}\n</tool_call>') + parser.finish()

    assert not any(isinstance(e, Content) for e in events)
    assert _assemble(events)[1] == [("f", "{}")]


def test_a_call_cut_short_before_its_name_is_text() -> None:
    content, calls = whole(TAGGED, '<tool_call>\n{"na')

    assert calls == [] and content == '<tool_call>\n{"na'


def test_a_block_that_is_not_a_call_stays_text() -> None:
    text = "<tool_call>\nnot json\n</tool_call>"

    assert whole(TAGGED, text) == (text, [])


def test_a_call_written_arguments_first_is_still_read() -> None:
    text = '<tool_call>\n{"arguments": {"x": 1}, "name": "f"}\n</tool_call>'

    _, calls = whole(TAGGED, text)

    assert [(c.function.name, c.function.arguments) for c in calls] == [("f", '{"x":1}')]


def test_parallel_off_returns_the_first_call_only() -> None:
    content, calls = whole(ToolParsing(TAGS, parallel=False), f"{WEATHER}\n{TIME}")

    assert content is None and [c.function.name for c in calls] == ["get_weather"]
    streamed = _assemble(_streamed(ToolParsing(TAGS, parallel=False), f"{WEATHER}\n{TIME}", 4))
    assert [name for name, _ in streamed[1]] == ["get_weather"]


def test_a_constrained_json_call_and_an_array_of_them() -> None:
    one = '{"name": "get_weather", "arguments": {"city": "Paris"}}'

    assert whole(ToolParsing(JSON), one)[1][0].function.arguments == '{"city":"Paris"}'
    _, calls = whole(ToolParsing(JSON, parallel=True), f"[{one}, {one}]")
    assert len(calls) == 2
    _, calls = whole(ToolParsing(JSON, parallel=False), f"[{one}, {one}]")
    assert len(calls) == 1


def test_a_truncated_json_call_is_its_text() -> None:
    assert whole(ToolParsing(JSON), '{"name": "get_wea') == ('{"name": "get_wea', [])

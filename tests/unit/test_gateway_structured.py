"""Structured outputs, tool calls and top logprobs in the gateway, without Triton: the guide a
request becomes, its tensors, the tool calls parsed from a constrained answer, and top logprobs
read from the BLS's tensors and rendered in OpenAI's shapes."""

from __future__ import annotations

import dataclasses
import json
import struct
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tritonclient.grpc import service_pb2
from tritonclient.utils import deserialize_bytes_tensor

from gateway.core import structured
from gateway.core.accounting import Choice, token_logprobs
from gateway.core.backend import Delta, GenerationRequest, SamplingOptions
from gateway.core.jobs import CHAT, Job
from gateway.core.protocol import ChatCompletionRequest, Usage
from gateway.core.shapes import ChatShape, CompletionShape
from gateway.core.tokenizer import PromptTokenizer
from gateway.core.toolcalls import JSON, TAGS, ToolParsing
from gateway.errors import InvalidRequest
from gateway.triton.adapter import build_request, parse

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "noop"}},
]
_USAGE = Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
GUIDED = frozenset(
    {"text_input", "max_tokens", "guided_decoding_guide_type", "guided_decoding_guide"}
)


def _chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def _output(tool_tags: bool = False, **fields: Any) -> structured.Output:
    request = _chat(**fields)
    structured.check_tools(request)
    structured.check_response_format(request)
    return structured.output_of(request, tool_tags=tool_tags)


def _guide(**fields: Any) -> structured.Guide | None:
    return _output(**fields).guide


def test_text_and_no_format_are_unguided() -> None:
    assert _output() == structured.Output()
    assert _output(response_format={"type": "text"}) == structured.Output()
    # A template without a tool format: `auto` is text, as the model was never taught calls.
    assert _output(tools=TOOLS, tool_choice="auto") == structured.Output()
    assert _output(tools=TOOLS, tool_choice="none") == structured.Output()


def test_none_on_a_tagged_template_is_free_text_that_cannot_start_a_call() -> None:
    none = _output(True, tools=TOOLS, tool_choice="none", response_format={"type": "text"})

    assert none.guide == structured.Guide("regex", r"[\s\S]*", "tool_choice", optional=True)
    assert none.tools is None


@pytest.mark.parametrize("choice", [None, "auto"])
def test_auto_on_a_tagged_template_is_an_optional_structural_tag_read_as_tags(
    choice: str | None,
) -> None:
    output = _output(True, tools=TOOLS, tool_choice=choice)

    guide = output.guide
    assert guide is not None and guide.type == "structural_tag" and guide.optional
    assert guide.param == "tools"
    tag = json.loads(guide.schema or "")
    assert tag["triggers"] == ["<tool_call>"]
    begins = [s["begin"] for s in tag["structures"]]
    assert begins == [
        '<tool_call>\n{"name": "get_weather", "arguments": ',
        '<tool_call>\n{"name": "noop", "arguments": ',
    ]
    assert tag["structures"][0]["schema"] == WEATHER
    assert {s["end"] for s in tag["structures"]} == {"}\n</tool_call>"}
    assert output.tools == ToolParsing(TAGS, parallel=True)
    off = _output(True, tools=TOOLS, tool_choice=choice, parallel_tool_calls=False)
    assert off.tools == ToolParsing(TAGS, parallel=False)


def test_a_response_format_wins_over_auto_tools() -> None:
    output = _output(True, tools=TOOLS, response_format={"type": "json_object"})
    assert output.guide == structured.Guide("json", None, "response_format")
    assert output.tools is None


def test_forced_calls_are_json_even_on_a_tagged_template() -> None:
    output = _output(True, tools=TOOLS, tool_choice="required")
    assert output.guide is not None and output.guide.type == "json_schema"
    assert not output.guide.optional and output.tools == ToolParsing(JSON, parallel=False)


def test_json_object_is_the_json_guide_without_a_schema() -> None:
    assert _guide(response_format={"type": "json_object"}) == structured.Guide(
        "json", None, "response_format"
    )


def test_json_schema_travels_as_its_schema_text() -> None:
    guide = _guide(
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}
    )
    assert guide is not None and guide.type == "json_schema" and not guide.optional
    assert json.loads(guide.schema or "") == WEATHER
    assert (
        _output(response_format={"type": "json_schema", "json_schema": {"name": "w"}}).tools is None
    )


def test_a_named_function_is_one_call_of_that_name_with_its_parameters() -> None:
    output = _output(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "noop"}})
    guide = output.guide
    assert guide is not None and output.tools is not None and guide.param == "tool_choice"
    schema = json.loads(guide.schema or "")
    jsonschema.validate({"name": "noop", "arguments": {}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "get_weather", "arguments": {}}, schema)


def test_required_is_any_of_the_tools_and_parallel_an_array_of_them() -> None:
    single = json.loads(_guide(tools=TOOLS, tool_choice="required").schema)  # type: ignore[union-attr]
    jsonschema.validate({"name": "get_weather", "arguments": {"city": "Oslo"}}, single)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "get_weather", "arguments": {"town": "Oslo"}}, single)
    many = _guide(tools=TOOLS, tool_choice="required", parallel_tool_calls=True)
    schema = json.loads(many.schema)  # type: ignore[union-attr]
    calls = [{"name": "noop", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "x"}}]
    jsonschema.validate(calls, schema)
    assert schema["maxItems"] == len(TOOLS)


def test_an_invalid_schema_names_the_schema_parameter() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "nope"}}}
    with pytest.raises(InvalidRequest) as exc:
        structured.check_response_format(_chat(response_format=fmt))
    assert exc.value.param == "response_format.json_schema.schema"


def _inputs(infer: service_pb2.ModelInferRequest) -> dict[str, Any]:
    found = {}
    for tensor, raw in zip(infer.inputs, infer.raw_input_contents, strict=True):
        if tensor.datatype == "BYTES":
            found[tensor.name] = [v.decode() for v in deserialize_bytes_tensor(raw)]
        elif tensor.datatype == "INT32":
            found[tensor.name] = struct.unpack("<i", raw)[0]
    return found


def test_the_guide_and_num_logprobs_travel_as_tensorrt_llm_inputs() -> None:
    options = SamplingOptions(
        8, logprobs=True, top_logprobs=3, guide_type="json_schema", guide='{"type":"object"}'
    )
    accepts = GUIDED | {"num_logprobs", "return_log_probs"}
    sent = _inputs(build_request("tensorrt_llm_bls", GenerationRequest("p", options), accepts))
    assert sent["guided_decoding_guide_type"] == ["json_schema"]
    assert sent["guided_decoding_guide"] == ['{"type":"object"}']
    assert sent["num_logprobs"] == 3


def test_a_route_without_guided_decoding_refuses_the_guide_naming_its_parameter() -> None:
    options = SamplingOptions(8, guide_type="json", guide_param="tool_choice")
    with pytest.raises(InvalidRequest) as exc:
        build_request("r", GenerationRequest("p", options), frozenset({"text_input", "max_tokens"}))
    assert exc.value.param == "tool_choice"


def test_an_optional_guide_is_left_out_where_the_route_cannot_take_it() -> None:
    options = SamplingOptions(
        8, guide_type="structural_tag", guide="{}", guide_param="tools", guide_optional=True
    )
    plain = frozenset({"text_input", "max_tokens"})

    sent = _inputs(build_request("r", GenerationRequest("p", options), plain))

    assert "guided_decoding_guide" not in sent and "guided_decoding_guide_type" not in sent
    guided = _inputs(build_request("r", GenerationRequest("p", options), GUIDED))
    assert guided["guided_decoding_guide_type"] == ["structural_tag"]


def _response(**tensors: tuple[str, list[int], bytes]) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse()
    for name, (dtype, shape, raw) in tensors.items():
        response.outputs.add(name=name, datatype=dtype, shape=shape)
        response.raw_output_contents.append(raw)
    return response


def test_top_logprobs_are_read_per_token_from_the_bls_tensors() -> None:
    text = b"ab"
    response = _response(
        text_output=("BYTES", [1, 1], struct.pack("<I", len(text)) + text),
        output_log_probs=("FP32", [1, 2], struct.pack("<2f", -0.1, -0.7)),
        output_token_ids=("INT32", [1, 2], struct.pack("<2i", 5, 9)),
        top_token_ids=("INT32", [1, 2, 2], struct.pack("<4i", 5, 6, 7, 9)),
        top_log_probs=("FP32", [1, 2, 2], struct.pack("<4f", -0.1, -2.5, -0.5, -0.7)),
    )
    delta, final = parse(response)
    assert not final and delta.text == "ab"
    assert delta.token_ids == (5, 9) and delta.top_ids == ((5, 6), (7, 9))
    assert delta.top_logprobs is not None
    assert [pytest.approx(row) for row in delta.top_logprobs] == [[-0.1, -2.5], [-0.5, -0.7]]


def test_token_entries_keep_the_token_ids_and_sort_the_alternatives() -> None:
    delta = Delta(
        "ab",
        logprobs=(-0.1, -0.7),
        token_ids=(5, 9),
        top_ids=((6, 5), (7, 9)),
        top_logprobs=((-2.5, -0.1), (-0.5, -0.7)),
    )
    first, second = token_logprobs(delta)
    assert first.token_id == 5 and [i for i, _ in first.top] == [5, 6]
    assert second.token_id == 9 and [lp for _, lp in second.top] == [-0.5, -0.7]


def _job(*, tools: ToolParsing | None = None, top_logprobs: int = 0) -> Job:
    vocab = {"[UNK]": 0, "a": 1, "b": 2, "c": 3}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    model = SimpleNamespace(id="m", tokenizer=PromptTokenizer(tokenizer))
    options = SamplingOptions(16, logprobs=bool(top_logprobs), top_logprobs=top_logprobs)
    return Job(
        kind=CHAT,
        model=model,  # type: ignore[arg-type]
        prompts=["p"],
        prompt_tokens=[1],
        special_tokens=False,
        stream=True,
        options=options,
        n=1,
        include_usage=False,
        tools=tools,
    )


def _dump(chunk: Any) -> dict[str, Any]:
    return json.loads(chunk) if isinstance(chunk, bytes) else chunk.model_dump(mode="json")


def test_a_streamed_forced_call_is_held_back_then_sent_in_openai_pieces() -> None:
    shape = ChatShape(_job(tools=ToolParsing(JSON)))
    assert _dump(shape.opening(0)[0])["choices"][0]["delta"] == {"role": "assistant"}
    for piece in ('{"name": "get_weather", ', '"arguments": {"city": "Oslo"}}'):
        assert shape.delta(0, Delta(piece), 0) is None
    first, last = [_dump(c)["choices"][0] for c in shape.finish(0, "stop")]
    (call,) = first["delta"]["tool_calls"]
    assert call["index"] == 0 and call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Oslo"}'}
    assert last["finish_reason"] == "tool_calls" and last["delta"] == {}


def test_a_streamed_tagged_call_sends_its_name_first_then_arguments_in_pieces() -> None:
    shape = ChatShape(_job(tools=ToolParsing(TAGS)))
    pieces = ["Sure.", "\n", "<tool_call>", '\n{"name": "get_weather", "arguments": ']
    pieces += ['{"city":', '"Oslo"', "}}", "\n", "</tool_call>"]
    deltas = [shape.delta(0, Delta(piece), 0) for piece in pieces]
    sent = [_dump(d)["choices"][0]["delta"] for d in deltas if d is not None]
    (last,) = [_dump(c)["choices"][0] for c in shape.finish(0, "stop")]

    assert "".join(d.get("content") or "" for d in sent).strip() == "Sure."
    calls = [call for d in sent for call in d.get("tool_calls") or []]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "get_weather"
    assert all("id" not in call and "name" not in call["function"] for call in calls[1:])
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city":"Oslo"}'
    assert len(calls) >= 3  # the arguments came in more than one piece
    assert last["finish_reason"] == "tool_calls"


def test_logprobs_held_by_the_parser_come_with_its_next_chunk() -> None:
    shape = ChatShape(_job(tools=ToolParsing(TAGS), top_logprobs=1))
    held = Delta(
        "<tool_", logprobs=(-0.5,), token_ids=(1,), top_ids=((1,),), top_logprobs=((-0.5,),)
    )
    text = Delta("x", logprobs=(-0.25,), token_ids=(2,), top_ids=((2,),), top_logprobs=((-0.25,),))

    assert shape.delta(0, held, 0) is None
    chunk = _dump(shape.delta(0, text, 6))["choices"][0]

    assert chunk["delta"]["content"] == "<tool_x"
    assert [t["logprob"] for t in chunk["logprobs"]["content"]] == [-0.5, -0.25]


def test_a_whole_tool_call_answer_has_null_content_and_finish_reason_tool_calls() -> None:
    choice = Choice()
    choice.add(Delta('{"name": "f", "arguments": {}}', finish_reason="stop"))
    response = ChatShape(_job(tools=ToolParsing(JSON))).response([choice], _USAGE)
    (answer,) = response.model_dump(mode="json")["choices"]
    assert answer["finish_reason"] == "tool_calls" and answer["message"]["content"] is None
    assert answer["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}


def test_an_unfinished_tool_call_answer_stays_text() -> None:
    choice = Choice()
    choice.add(Delta('{"name": "f", "argu', finish_reason="length"))
    (answer,) = ChatShape(_job(tools=ToolParsing(JSON))).response([choice], _USAGE).choices
    assert answer.finish_reason == "length" and answer.message.content == '{"name": "f", "argu'
    assert answer.message.tool_calls is None


def test_top_logprobs_render_with_token_text_and_bytes_best_first() -> None:
    delta = Delta(
        "ab",
        logprobs=(-0.1, -0.2),
        token_ids=(1, 2),
        top_ids=((3, 1), (2, 3)),
        top_logprobs=((-2.0, -0.1), (-0.2, -1.5)),
    )
    chunk = _dump(ChatShape(_job(top_logprobs=2)).delta(0, delta, 0))
    first, second = chunk["choices"][0]["logprobs"]["content"]
    assert first["token"] == "a" and first["bytes"] == [97]
    assert [(t["token"], t["logprob"]) for t in first["top_logprobs"]] == [("a", -0.1), ("c", -2.0)]
    assert [t["token"] for t in second["top_logprobs"]] == ["b", "c"]


def test_completion_top_logprobs_are_dicts_of_token_text() -> None:
    job = dataclasses.replace(_job(top_logprobs=2), kind="text_completion")
    delta = Delta(
        "a", logprobs=(-0.1,), token_ids=(1,), top_ids=((1, 3),), top_logprobs=((-0.1, -2.0),)
    )
    chunk = _dump(CompletionShape(job).delta(0, delta, 0))
    logprobs = chunk["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["a"] and logprobs["top_logprobs"] == [{"a": -0.1, "c": -2.0}]

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


def _guide(**fields: Any) -> structured.Guide | None:
    request = _chat(**fields)
    structured.check_tools(request)
    structured.check_response_format(request)
    return structured.guide_of(request)


def test_text_and_no_format_are_unguided() -> None:
    assert _guide() is None
    assert _guide(response_format={"type": "text"}) is None
    assert _guide(tools=TOOLS, tool_choice="auto") is None
    assert _guide(tools=TOOLS, tool_choice="none", response_format={"type": "text"}) is None


def test_json_object_is_the_json_guide_without_a_schema() -> None:
    assert _guide(response_format={"type": "json_object"}) == structured.Guide(
        "json", None, "response_format"
    )


def test_json_schema_travels_as_its_schema_text() -> None:
    guide = _guide(
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}
    )
    assert guide is not None and guide.type == "json_schema" and not guide.tool_calls
    assert json.loads(guide.schema or "") == WEATHER


def test_a_named_function_is_one_call_of_that_name_with_its_parameters() -> None:
    guide = _guide(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "noop"}})
    assert guide is not None and guide.tool_calls and guide.param == "tool_choice"
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


def test_tool_calls_parse_into_openai_calls_with_arguments_as_json_text() -> None:
    calls = structured.parse_tool_calls('{"name": "get_weather", "arguments": {"city": "Oslo"}}')
    assert calls is not None
    (call,) = calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    two = structured.parse_tool_calls('[{"name": "a", "arguments": {}}, {"name": "b"}]')
    assert [c.function.name for c in two or []] == ["a", "b"]
    assert two is not None and two[0].id != two[1].id


@pytest.mark.parametrize("text", ['{"name": "a", "argu', "[]", '{"arguments": {}}', "[1]"])
def test_a_truncated_or_shapeless_answer_is_no_tool_call(text: str) -> None:
    assert structured.parse_tool_calls(text) is None


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


def _job(*, tool_calls: bool = False, top_logprobs: int = 0) -> Job:
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
        tool_calls=tool_calls,
    )


def _dump(chunk: Any) -> dict[str, Any]:
    return json.loads(chunk) if isinstance(chunk, bytes) else chunk.model_dump(mode="json")


def test_a_streamed_tool_call_is_held_back_then_sent_in_openai_pieces() -> None:
    shape = ChatShape(_job(tool_calls=True))
    assert _dump(shape.opening(0)[0])["choices"][0]["delta"] == {"role": "assistant"}
    for piece in ('{"name": "get_weather", ', '"arguments": {"city": "Oslo"}}'):
        assert shape.delta(0, Delta(piece), 0) is None
    chunks = [_dump(c)["choices"][0] for c in shape.finish(0, "stop")]
    first, rest, last = chunks
    (call,) = first["delta"]["tool_calls"]
    assert call["index"] == 0 and call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": ""}
    (more,) = rest["delta"]["tool_calls"]
    assert more == {"index": 0, "function": {"arguments": '{"city": "Oslo"}'}}
    assert last["finish_reason"] == "tool_calls" and last["delta"] == {}


def test_a_whole_tool_call_answer_has_null_content_and_finish_reason_tool_calls() -> None:
    choice = Choice()
    choice.add(Delta('{"name": "f", "arguments": {}}', finish_reason="stop"))
    response = ChatShape(_job(tool_calls=True)).response([choice], _USAGE)
    (answer,) = response.model_dump(mode="json")["choices"]
    assert answer["finish_reason"] == "tool_calls" and answer["message"]["content"] is None
    assert answer["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}


def test_an_unfinished_tool_call_answer_stays_text() -> None:
    choice = Choice()
    choice.add(Delta('{"name": "f", "argu', finish_reason="length"))
    (answer,) = ChatShape(_job(tool_calls=True)).response([choice], _USAGE).choices
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

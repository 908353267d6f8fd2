"""Structured outputs and tool calls: a chat request's `response_format` and `tools` as a
guided-decoding guide (TensorRT-LLM's `guided_decoding_guide_type` and `guided_decoding_guide`),
and how its answer is read back into OpenAI's `tool_calls` (`gateway.core.toolcalls`).

A forced call (`tool_choice` `required` or a named function) is constrained to
`{"name": <the function's name>, "arguments": <its parameters>}`: one object shape for a named
function, for `required` (`anyOf` over the tools) and, as an array of them, for parallel calls.
The name travels inside the JSON, so parsing needs no knowledge of which branch the grammar took,
and the arguments are exactly the function's schema. A JSON schema is a guide every engine takes
(TensorRT-LLM's xgrammar as well as this CPU engine's llguidance).

With `tool_choice` `auto` on a model whose template has `<tool_call>` blocks, the model decides
itself: the guide is a structural tag (free text, where `<tool_call>` starts a call that must name
a listed function and match its schema), as vLLM and TensorRT-LLM constrain tool calls. It only
helps: a route without guided decoding generates without it, and the blocks are read all the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema

from gateway.core.protocol import ChatCompletionRequest
from gateway.core.toolcalls import JSON, TAGS, ToolParsing
from gateway.errors import InvalidRequest

SCHEMA_PARAM = "response_format.json_schema.schema"
_MAX_PARALLEL_CALLS = 8
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True, slots=True)
class Guide:
    """What constrains a request's output, and whether that output is tool calls."""

    type: str
    """TensorRT-LLM's guide type: `json` (any JSON object), `json_schema`, `structural_tag` or
    `regex`."""
    schema: str | None
    """The guide as text: the JSON schema, the structural tag or the regex (not for `json`)."""
    param: str
    """The OpenAI parameter it came from."""
    optional: bool = False
    """It only helps: a route without guided decoding generates without it."""


@dataclass(frozen=True, slots=True)
class Output:
    """What constrains a chat request's answer, and how its tool calls are read back."""

    guide: Guide | None = None
    tools: ToolParsing | None = None
    """None: the answer is text (or JSON) and nothing else."""


FREE_TEXT = r"[\s\S]*"  # any text, and no special or added token


def output_of(request: ChatCompletionRequest, *, tool_tags: bool = False) -> Output:
    """A validated chat request's guide and tool parsing: forced tool calls, else its
    `response_format`, else (`tool_tags`: the model's template has `<tool_call>` blocks) the
    calls the model chooses to make."""
    tools = tool_functions(request)
    choice = request.tool_choice
    if tools and choice is not None and choice not in ("none", "auto"):
        parallel = bool(request.parallel_tool_calls)
        forced = ToolParsing(JSON, parallel=parallel)
        if isinstance(choice, dict):
            name = choice["function"]["name"]
            call = _call_schema(name, tools[name])
            return Output(Guide("json_schema", json.dumps(call), "tool_choice"), forced)
        calls = [_call_schema(name, params) for name, params in tools.items()]
        call = calls[0] if len(calls) == 1 else {"anyOf": calls}
        if parallel:
            # At most one call per tool: a model not trained for tools would otherwise go on
            # adding calls until its token budget ends the array unclosed.
            most = min(len(calls), _MAX_PARALLEL_CALLS)
            call = {"type": "array", "items": call, "minItems": 1, "maxItems": most}
        return Output(Guide("json_schema", json.dumps(call), "tool_choice"), forced)
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_object":
        return Output(Guide("json", None, "response_format"))
    if fmt is not None and fmt.type == "json_schema":
        assert fmt.json_schema is not None  # validation
        schema = json.dumps(fmt.json_schema.schema_)
        return Output(Guide("json_schema", schema, "response_format"))
    if tools and tool_tags and choice == "none":
        # The template is not shown the tools. A model taught to call may still start a call;
        # where the tag is a token of its own (Qwen's tokenizers, the tiny model's) no text
        # grammar matches it, so free text alone keeps it out (llguidance, xgrammar alike).
        return Output(Guide("regex", FREE_TEXT, "tool_choice", optional=True))
    if tools and tool_tags:
        guide = Guide("structural_tag", json.dumps(tool_tag(tools)), "tools", optional=True)
        return Output(guide, ToolParsing(TAGS, parallel=request.parallel_tool_calls is not False))
    return Output()


def tool_tag(tools: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """TensorRT-LLM's (xgrammar's) structural tag for `<tool_call>` blocks calling `tools`:
    the begin text names the function, its schema constrains the arguments."""
    return {
        "type": "structural_tag",
        "structures": [
            {
                "begin": f'<tool_call>\n{{"name": {json.dumps(name)}, "arguments": ',
                "schema": parameters,
                "end": "}\n</tool_call>",
            }
            for name, parameters in tools.items()
        ],
        "triggers": ["<tool_call>"],
    }


def check_response_format(request: ChatCompletionRequest) -> None:
    """400 for a `response_format` this gateway cannot honour or an invalid JSON schema."""
    fmt = request.response_format
    if fmt is None or fmt.type in ("text", "json_object"):
        return
    if fmt.type != "json_schema":
        raise InvalidRequest(
            f"'response_format.type' must be 'text', 'json_object' or 'json_schema', "
            f"got '{fmt.type}'.",
            param="response_format.type",
        )
    if fmt.json_schema is None:
        raise InvalidRequest(
            "A 'json_schema' response format needs 'json_schema'.",
            param="response_format.json_schema",
        )
    check_schema(fmt.json_schema.schema_ or {}, SCHEMA_PARAM)


def check_tools(request: ChatCompletionRequest) -> None:
    """400 for malformed `tools`, a `tool_choice` naming no tool, or one without tools."""
    tools = request.tools or []
    names: set[str] = set()
    for i, tool in enumerate(tools):
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise InvalidRequest(
                "Each tool must be {'type': 'function', 'function': {...}}.",
                param=f"tools[{i}]",
            )
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("A function needs a 'name'.", param=f"tools[{i}].function.name")
        names.add(name)
        parameters = function.get("parameters", _ANY_OBJECT)
        if not isinstance(parameters, dict):
            raise InvalidRequest(
                "A function's 'parameters' must be a JSON schema object.",
                param=f"tools[{i}].function.parameters",
            )
        check_schema(parameters, f"tools[{i}].function.parameters")
    choice = request.tool_choice
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise InvalidRequest(
                f"'tool_choice' must be 'none', 'auto', 'required' or a named function, "
                f"got '{choice}'.",
                param="tool_choice",
            )
        if choice == "required" and not tools:
            raise InvalidRequest("'tool_choice' 'required' needs 'tools'.", param="tool_choice")
        return
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequest(
            "A named 'tool_choice' is {'type': 'function', 'function': {'name': ...}}.",
            param="tool_choice",
        )
    if name not in names:
        raise InvalidRequest(
            f"'tool_choice' names '{name}', which is not in 'tools'.",
            param="tool_choice.function.name",
        )


def check_schema(schema: Any, param: str) -> None:
    """400 naming `param` unless `schema` is a valid JSON schema (its own meta-schema)."""
    if not isinstance(schema, dict | bool):
        raise InvalidRequest("A JSON schema must be an object.", param=param)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "the root"
        raise InvalidRequest(
            f"Invalid JSON schema at {where}: {exc.message}", param=param
        ) from None


def tool_functions(request: ChatCompletionRequest) -> dict[str, dict[str, Any]]:
    """Each tool's name and its parameters schema (validated)."""
    return {
        tool["function"]["name"]: tool["function"].get("parameters", _ANY_OBJECT)
        for tool in request.tools or []
    }


def _call_schema(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }

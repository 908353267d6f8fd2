"""Structured outputs and tool calls: a chat request's `response_format` and `tools` as a
guided-decoding guide (TensorRT-LLM's `guided_decoding_guide_type` and `guided_decoding_guide`),
and a constrained answer parsed back into OpenAI's `tool_calls`.

A tool call is constrained to `{"name": <the function's name>, "arguments": <its parameters>}`:
one object shape for a named function, for `required` (`anyOf` over the tools) and, as an array of
them, for parallel calls. The name travels inside the JSON, so parsing needs no knowledge of which
branch the grammar took, and the arguments are exactly the function's schema.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

import jsonschema

from gateway.core import protocol
from gateway.core.protocol import ChatCompletionRequest
from gateway.errors import InvalidRequest

SCHEMA_PARAM = "response_format.json_schema.schema"
_MAX_PARALLEL_CALLS = 8
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True, slots=True)
class Guide:
    """What constrains a request's output, and whether that output is tool calls."""

    type: str
    """`json` (any JSON object) or `json_schema`."""
    schema: str | None
    """The JSON schema as text (`json_schema` only)."""
    param: str
    """The OpenAI parameter it came from."""
    tool_calls: bool = False
    """The output is `{"name", "arguments"}` calls (an array of them with `parallel`)."""


def guide_of(request: ChatCompletionRequest) -> Guide | None:
    """The guide a validated chat request asks for: its forced tool calls, else its
    `response_format`; None when the output is free text."""
    tools = tool_functions(request)
    choice = request.tool_choice
    if tools and choice is not None and choice not in ("none", "auto"):
        if isinstance(choice, dict):
            name = choice["function"]["name"]
            call = _call_schema(name, tools[name])
            return Guide("json_schema", json.dumps(call), "tool_choice", tool_calls=True)
        calls = [_call_schema(name, params) for name, params in tools.items()]
        call = calls[0] if len(calls) == 1 else {"anyOf": calls}
        if request.parallel_tool_calls:
            # At most one call per tool: a model not trained for tools would otherwise go on
            # adding calls until its token budget ends the array unclosed.
            most = min(len(calls), _MAX_PARALLEL_CALLS)
            call = {"type": "array", "items": call, "minItems": 1, "maxItems": most}
        return Guide("json_schema", json.dumps(call), "tool_choice", tool_calls=True)
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return Guide("json", None, "response_format")
    assert fmt.json_schema is not None  # validation
    return Guide("json_schema", json.dumps(fmt.json_schema.schema_), "response_format")


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


def parse_tool_calls(text: str) -> list[protocol.ToolCallOut] | None:
    """The tool calls of a constrained answer; None when it is not (a truncated answer)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    calls = value if isinstance(value, list) else [value]
    parsed = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        arguments = json.dumps(call.get("arguments", {}), ensure_ascii=False)
        parsed.append(
            protocol.ToolCallOut(
                id=f"call_{secrets.token_hex(12)}",
                function=protocol.FunctionCallOut(name=call["name"], arguments=arguments),
            )
        )
    return parsed or None


def _call_schema(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }

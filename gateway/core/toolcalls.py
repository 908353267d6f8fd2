"""Tool calls read back from generated text, whole or as it streams.

Two formats:
- **tags** (Qwen's and Hermes' `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`,
  vLLM's `hermes` parser): what a chat template with a tool format teaches its model, read in
  `tool_choice: auto`. Text before the first call is the message's content; each call's name is
  sent once its JSON has said it, and its arguments stream in pieces as they are generated.
- **json** (`{"name", "arguments"}`, or an array of them): what the gateway constrains a forced
  call to (`tool_choice` `required` or a named function, `gateway.core.structured`); it is read
  once complete, since its JSON is only known to be whole at the end.

A parser is fed the text of each delta and answers with events; `finish` flushes what it held.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.core import protocol

TAGS = "tags"
JSON = "json"

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
# A call whose JSON begins with its name (as the template writes it and the grammar forces it).
# It is read once the arguments' first character has come (what whitespace precedes is known).
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')
_TAIL = re.compile(r"\}\s*$")


@dataclass(frozen=True, slots=True)
class Content:
    text: str


@dataclass(frozen=True, slots=True)
class CallStart:
    """Call `index` begins: its id and name (OpenAI sends them once, with empty arguments)."""

    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Arguments:
    """A piece of call `index`'s arguments (JSON text)."""

    index: int
    text: str


Event = Content | CallStart | Arguments


def new_call_id() -> str:
    """An id in OpenAI's shape (`call_` and 24 hex digits)."""
    return f"call_{secrets.token_hex(12)}"


@dataclass(frozen=True, slots=True)
class ToolParsing:
    """How a job's answer is read for tool calls."""

    format: Literal["tags", "json"]
    parallel: bool = True
    """More than one call may be returned (`parallel_tool_calls`, OpenAI's default true)."""

    def parser(self) -> TagParser | JsonParser:
        """A fresh parser for one choice."""
        return TagParser(self.parallel) if self.format == TAGS else JsonParser(self.parallel)


def whole(parsing: ToolParsing, text: str) -> tuple[str | None, list[protocol.ToolCallOut]]:
    """A whole answer's content (None when it has none) and calls."""
    parser = parsing.parser()
    events = parser.feed(text) + parser.finish()
    content: list[str] = []
    calls: list[protocol.ToolCallOut] = []
    for event in events:
        if isinstance(event, Content):
            content.append(event.text)
        elif isinstance(event, CallStart):
            function = protocol.FunctionCallOut(name=event.name, arguments="")
            calls.append(protocol.ToolCallOut(id=event.id, function=function))
        else:
            calls[event.index].function.arguments += event.text
    text = "".join(content)
    if calls:
        text = text.strip()
    return (text or None) if calls else text, calls


@dataclass
class TagParser:
    """`<tool_call>` blocks out of running text (see the module's docstring)."""

    parallel: bool = True
    calls: int = 0
    """Calls started so far."""
    _buffer: str = ""
    _in_call: bool = False
    _streaming: bool = False
    """The current call's name is out and its arguments are streaming."""
    _arguments_at: int = 0
    """Where the current call's arguments begin in its body."""
    _sent: int = 0
    """Characters of the current call's arguments already sent."""
    _dropped: bool = False
    """The current call is past the first one with `parallel` off: read but not returned."""

    def feed(self, text: str) -> list[Event]:
        """Events for `text`, the next piece of the answer."""
        self._buffer += text
        events: list[Event] = []
        while True:
            if not self._in_call:
                at = self._buffer.find(_OPEN)
                if at < 0:
                    keep = _partial_suffix(self._buffer, _OPEN)
                    self._content(self._buffer[: len(self._buffer) - keep], events)
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    return events
                self._content(self._buffer[:at], events)
                self._buffer = self._buffer[at + len(_OPEN) :]
                self._in_call, self._streaming, self._sent = True, False, 0
                self._dropped = not self.parallel and self.calls > 0
                continue
            end = self._buffer.find(_CLOSE)
            body = self._buffer if end < 0 else self._buffer[:end]
            self._call_body(body, complete=end >= 0, events=events)
            if end < 0:
                return events
            self._buffer = self._buffer[end + len(_CLOSE) :]
            self._in_call = False

    def finish(self) -> list[Event]:
        """What is left once the answer ended: held text, or a call cut short."""
        events: list[Event] = []
        if self._in_call:
            if not self._streaming and not self._dropped:
                # Cut short before its name: the text as it was written.
                events.append(Content(_OPEN + self._buffer))
        elif self._buffer:
            self._content(self._buffer, events)
        self._buffer = ""
        return events

    def _content(self, text: str, events: list[Event]) -> None:
        # Between and after calls only whitespace is expected; any other text is content.
        if text and (self.calls == 0 or text.strip()):
            events.append(Content(text))

    def _call_body(self, body: str, *, complete: bool, events: list[Event]) -> None:
        if not self._streaming:
            head = _HEAD.match(body)
            if head is None:
                if complete:
                    self._whole_call(body, events)
                return
            self._start(_unescape(head.group(1)), events)
            self._streaming = True
            self._arguments_at = head.end()
        arguments = body[self._arguments_at :]
        if complete:
            tail = _TAIL.search(arguments)
            piece = arguments[self._sent : tail.start() if tail else len(arguments)]
        else:
            # Hold back from the last "}" on: it may be the one closing the call.
            last = arguments.rfind("}")
            piece = arguments[self._sent : last if last >= self._sent else len(arguments)]
        if piece and not self._dropped:
            events.append(Arguments(self.calls - 1, piece))
        self._sent += len(piece)

    def _whole_call(self, body: str, events: list[Event]) -> None:
        # Not in the name-first shape: read it whole, or keep it as text when it is not a call.
        call = _loads(body)
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            if not self._dropped:
                events.append(Content(f"{_OPEN}{body}{_CLOSE}"))
            return
        self._start(call["name"], events)
        if not self._dropped:
            events.append(Arguments(self.calls - 1, _arguments_text(call.get("arguments", {}))))

    def _start(self, name: str, events: list[Event]) -> None:
        if self._dropped:
            return
        events.append(CallStart(self.calls, new_call_id(), name))
        self.calls += 1


@dataclass
class JsonParser:
    """A constrained `{"name", "arguments"}` answer (or an array of them), read at the end."""

    parallel: bool = True
    calls: int = 0
    _pieces: list[str] = field(default_factory=list)

    def feed(self, text: str) -> list[Event]:
        self._pieces.append(text)
        return []

    def finish(self) -> list[Event]:
        text = "".join(self._pieces)
        self._pieces.clear()
        value = _loads(text)
        calls = value if isinstance(value, list) else [value]
        if not calls or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls
        ):
            return [Content(text)] if text else []  # cut short (length): the text as it is
        events: list[Event] = []
        for call in calls if self.parallel else calls[:1]:
            events.append(CallStart(self.calls, new_call_id(), call["name"]))
            events.append(Arguments(self.calls, _arguments_text(call.get("arguments", {}))))
            self.calls += 1
        return events


def _arguments_text(arguments: Any) -> str:
    # Compact, as OpenAI writes `arguments` and as the model was constrained to write them.
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _unescape(name: str) -> str:
    value = _loads(f'"{name}"')
    return value if isinstance(value, str) else name


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that begins `tag` (it may be the tag coming)."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0

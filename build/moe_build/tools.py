"""Tool use for the tiny model: when a listed function answers the question, call it; when a
tool's result comes back, say it in a sentence; otherwise answer in text.

A few synthetic tool families (weather, time, adding, multiplying, searching the docs), each
with a couple of names and parameter names so the model reads the definitions rather than
memorising one, asked about in a few phrasings. Prompts are rendered by the model's own chat
template (`moe_build.tokenizer.CHAT_TEMPLATE`, through Jinja as servers render it), so training
sees exactly the text the gateway will send, and the calls are written as the template writes
them back: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, compact arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from moe_build.chat import ChatSample, encode_chat
from moe_build.docqa import DocAnswer
from moe_build.tokenizer import CHAT_TEMPLATE

# Training cities, and cities no sample names: the held-out check of copying an argument.
CITIES = (
    "Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Warsaw",
    "Lisbon", "Dublin", "Oslo", "Stockholm", "Helsinki", "Athens", "Cairo", "Lagos", "Nairobi",
    "Mumbai", "Delhi", "Beijing", "Shanghai", "Seoul", "Sydney", "Toronto", "Chicago", "Boston",
    "Denver", "Seattle", "Austin", "Miami", "Lima", "Bogota", "Santiago", "Havana", "Zurich",
    "Munich", "Milan", "Moscow", "Istanbul",
)  # fmt: skip
HELD_OUT_CITIES = (
    "Geneva", "Hamburg", "Osaka", "Manila", "Dallas", "Quito", "Riga", "Perth", "Accra", "Lyon",
)  # fmt: skip
CONDITIONS = ("sunny", "cloudy", "rainy", "snowy", "windy", "foggy")
SYSTEM_PROMPTS = ("You are a helpful assistant.", "You can call tools.")
NO_TOOL = "I have no tool for that."
GREETINGS = (
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi there.", "Hello! How can I help you today?"),
    ("Good morning!", "Hello! How can I help you today?"),
    ("Thank you!", "You are welcome!"),
    ("Thanks.", "You are welcome!"),
)


@dataclass(frozen=True)
class Family:
    """One kind of tool: its name and parameter-name variants, questions and replies."""

    kind: str
    names: tuple[str, ...]
    keys: tuple[tuple[str, ...], ...]
    """Parameter-name variants, one name per argument."""
    description: str
    types: tuple[str, ...]
    questions: tuple[str, ...]
    """Phrasings with `{0}`, `{1}` for the arguments' values."""
    values: Callable[[random.Random, Sequence[str]], tuple[Any, ...]]
    result: Callable[[random.Random, tuple[Any, ...]], Any]
    reply: Callable[[tuple[Any, ...], Any], str]
    many: tuple[str, ...] = field(default=())
    """Phrasings asking for two calls at once (`{0}` and `{1}` two first arguments)."""

    def function(self, rng: random.Random) -> dict[str, Any]:
        """One variant of the tool's definition, as OpenAI's `tools[].function`."""
        keys = rng.choice(self.keys)
        properties = {key: {"type": kind} for key, kind in zip(keys, self.types, strict=True)}
        return {
            "name": rng.choice(self.names),
            "description": self.description,
            "parameters": {"type": "object", "properties": properties, "required": list(keys)},
        }


def _cities(rng: random.Random, cities: Sequence[str]) -> tuple[Any, ...]:
    return (rng.choice(cities),)


def _numbers(rng: random.Random, _: Sequence[str]) -> tuple[Any, ...]:
    return (rng.randint(1, 99), rng.randint(1, 99))


def _topic(rng: random.Random, _: Sequence[str]) -> tuple[Any, ...]:
    return (rng.choice(TOPICS),)


TOPICS = ("json", "regular expressions", "sockets", "threads", "dates", "logging", "paths", "csv")
FAMILIES = (
    Family(
        "weather",
        ("get_weather", "get_current_weather", "weather"),
        (("city",), ("location",)),
        "Get the current weather in a city.",
        ("string",),
        (
            "What is the weather in {0}?",
            "What's the weather like in {0}?",
            "Is it raining in {0}?",
            "How warm is it in {0} today?",
            "Weather in {0}?",
        ),
        _cities,
        lambda rng, v: {"temperature": rng.randint(-10, 35), "condition": rng.choice(CONDITIONS)},
        lambda v, r: f"It is {r['condition']} and {r['temperature']} degrees in {v[0]}.",
        many=("What is the weather in {0} and in {1}?", "Weather in {0} and {1}?"),
    ),
    Family(
        "time",
        ("get_time", "get_current_time", "current_time"),
        (("city",), ("location",)),
        "Get the local time in a city.",
        ("string",),
        ("What time is it in {0}?", "What's the time in {0}?", "Current time in {0}?"),
        _cities,
        lambda rng, v: {"time": f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"},
        lambda v, r: f"It is {r['time']} in {v[0]}.",
        many=("What time is it in {0} and in {1}?",),
    ),
    Family(
        "add",
        ("add", "add_numbers"),
        (("a", "b"), ("x", "y")),
        "Add two numbers.",
        ("integer", "integer"),
        ("What is {0} plus {1}?", "Add {0} and {1}.", "What is {0} + {1}?"),
        _numbers,
        lambda rng, v: v[0] + v[1],
        lambda v, r: f"{v[0]} plus {v[1]} is {r}.",
    ),
    Family(
        "multiply",
        ("multiply", "multiply_numbers"),
        (("a", "b"), ("x", "y")),
        "Multiply two numbers.",
        ("integer", "integer"),
        ("What is {0} times {1}?", "What is {0} * {1}?", "Multiply {0} by {1}."),
        _numbers,
        lambda rng, v: v[0] * v[1],
        lambda v, r: f"{v[0]} times {v[1]} is {r}.",
    ),
    Family(
        "search",
        ("search_docs", "search"),
        (("query",),),
        "Search the documentation.",
        ("string",),
        ("Search the docs for {0}.", "Look up {0} in the documentation.", "Find docs about {0}."),
        _topic,
        lambda rng, v: {"results": [f"The {v[0]} guide."]},
        lambda v, r: f"I found the {v[0]} guide.",
    ),
)


@dataclass(frozen=True)
class ToolTurn:
    """A conversation to answer and the answer: a call, a sentence, or plain text."""

    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...]
    answer: str
    kind: str
    """`call`, `calls` (two at once), `reply` (after a result), `text` or `none` (no tool fits)."""
    expected: tuple[tuple[str, dict[str, Any]], ...] = ()
    """The calls a `call` / `calls` turn makes: (name, arguments)."""


def call_text(name: str, arguments: dict[str, Any]) -> str:
    """One call as the chat template writes an assistant's `tool_calls`."""
    return f'<tool_call>\n{{"name": "{name}", "arguments": {_compact(arguments)}}}\n</tool_call>'


def tool_turns(
    count: int, *, seed: int, docs: Sequence[DocAnswer] = (), cities: Sequence[str] = CITIES
) -> list[ToolTurn]:
    """`count` turns: about half call a listed tool (one in ten two calls), a fifth put a
    tool's result into words, the rest answer in text (a greeting, a docstring question, or a
    question no listed tool answers)."""
    rng = random.Random(seed)
    turns = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.55:
            turns.append(_call_turn(rng, cities, many=rng.random() < 0.1))
        elif roll < 0.75:
            turns.append(_reply_turn(rng, cities))
        else:
            turns.append(_text_turn(rng, cities, docs))
    return turns


def tool_samples(tokenizer: Tokenizer, turns: Sequence[ToolTurn]) -> list[ChatSample]:
    """Each turn as a training sample: the rendered prompt, loss on the answer only."""
    return [encode_chat(tokenizer, render(turn), turn.answer) for turn in turns]


def copying_samples(tokenizer: Tokenizer, turns: Sequence[ToolTurn]) -> list[ChatSample]:
    """The turns that copy (calls, and results put into words) in short form, for the
    warm-up: the conversation as the template renders it, without the tool list."""
    return [
        encode_chat(tokenizer, render(dataclasses.replace(turn, tools=())), turn.answer)
        for turn in turns
        if turn.kind in ("call", "calls", "reply")
    ]


def render(turn: ToolTurn) -> str:
    """The prompt of `turn` as the chat template renders it, ready for the answer."""
    return _template().render(
        messages=list(turn.messages), tools=list(turn.tools), add_generation_prompt=True
    )


def tool_vocabulary(seed: int = 0) -> list[str]:
    """Rendered tool prompts and answers, for the tokenizer: JSON keys get tokens of their own,
    and each training city one token as a word (" Paris") and one as a JSON string ('"Paris'),
    so a call copies one token for one."""
    texts = []
    for turn in tool_turns(400, seed=seed):
        texts += [render(turn), turn.answer]
    cities = " ".join(f'in {city}? "{city}"' for city in CITIES)
    return texts + [cities] * 30


def _call_turn(rng: random.Random, cities: Sequence[str], *, many: bool) -> ToolTurn:
    family = rng.choice([f for f in FAMILIES if f.many] if many else FAMILIES)
    tools, function = _tools(rng, family)
    keys = list(function["parameters"]["properties"])
    if many:
        first, second = rng.sample(list(cities), 2)
        question = rng.choice(family.many).format(first, second)
        calls = tuple((function["name"], {keys[0]: city}) for city in (first, second))
    else:
        values = family.values(rng, cities)
        question = rng.choice(family.questions).format(*values)
        calls = ((function["name"], dict(zip(keys, values, strict=True))),)
    answer = "\n".join(call_text(name, arguments) for name, arguments in calls)
    return ToolTurn(
        _with_system(rng, [_user(question)]),
        tools,
        answer,
        "calls" if many else "call",
        calls,
    )


def _reply_turn(rng: random.Random, cities: Sequence[str]) -> ToolTurn:
    family = rng.choice(FAMILIES)
    tools, function = _tools(rng, family)
    keys = list(function["parameters"]["properties"])
    values = family.values(rng, cities)
    result = family.result(rng, values)
    call_id = f"call_{rng.getrandbits(48):012x}"
    arguments = _compact(dict(zip(keys, values, strict=True)))
    messages = [
        _user(rng.choice(family.questions).format(*values)),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": function["name"], "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": _compact(result)},
    ]
    return ToolTurn(_with_system(rng, messages), tools, family.reply(values, result), "reply")


def _text_turn(rng: random.Random, cities: Sequence[str], docs: Sequence[DocAnswer]) -> ToolTurn:
    roll = rng.random()
    if roll < 0.4:
        # A question for a family none of the listed tools belongs to.
        asked = rng.choice(FAMILIES)
        others = [f for f in FAMILIES if f is not asked]
        tools = tuple(
            {"type": "function", "function": f.function(rng)}
            for f in rng.sample(others, rng.randint(1, 2))
        )
        question = rng.choice(asked.questions).format(*asked.values(rng, cities))
        return ToolTurn(_with_system(rng, [_user(question)]), tools, NO_TOOL, "none")
    tools, _ = _tools(rng, rng.choice(FAMILIES))
    if roll < 0.7 or not docs:
        question, answer = rng.choice(GREETINGS)
    else:
        doc = rng.choice(docs)
        question, answer = doc.question(rng), doc.summary
    return ToolTurn(_with_system(rng, [_user(question)]), tools, answer, "text")


def _tools(rng: random.Random, family: Family) -> tuple[tuple[dict[str, Any], ...], dict]:
    """The family's tool and up to two others (mostly none: prompts stay short), in random
    order; and the family's function."""
    function = family.function(rng)
    others = [f.function(rng) for f in rng.sample([f for f in FAMILIES if f is not family], 2)]
    listed = [function, *others[: rng.choices((0, 1, 2), weights=(50, 35, 15))[0]]]
    rng.shuffle(listed)
    return tuple({"type": "function", "function": f} for f in listed), function


def _with_system(rng: random.Random, messages: list[dict[str, Any]]) -> tuple[dict, ...]:
    if rng.random() < 0.3:
        messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}, *messages]
    return tuple(messages)


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _compact(value: Any) -> str:
    # What the gateway returns as `arguments` and what a grammar without free whitespace writes.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@functools.cache
def _template():
    # As `transformers` and the gateway compile chat templates.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    return env.from_string(CHAT_TEMPLATE)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators)

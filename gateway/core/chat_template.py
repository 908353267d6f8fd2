"""A model's chat template from its Hugging Face files, rendered in a sandboxed Jinja environment.

Mirrors what `transformers` does in `apply_chat_template` (immutable sandbox, `trim_blocks`,
`lstrip_blocks`, `loopcontrols`, `raise_exception`, `tojson`, `strftime_now`) without importing
`transformers`. The template is compiled once per model at start-up.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.errors import InvalidRequest

_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token")


class TemplateError(ValueError):
    """The model's template could not be found or compiled (a start-up problem, not a request's)."""


class ChatTemplate:
    """A compiled chat template plus the special tokens it may refer to."""

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None):
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"chat template does not compile: {exc}") from exc
        self._special_tokens = dict(special_tokens or {})
        self.renders_tool_calls = "tool_calls" in source
        """Whether the template writes assistant `tool_calls` itself (its own tool format)."""
        self.tool_tags = "<tool_call>" in source
        """Whether its tool format is `<tool_call>` blocks (Qwen, Hermes): the model calls tools
        by itself in that shape, and `tool_choice: auto` reads them back."""

    @classmethod
    def from_dir(cls, model_dir: Path) -> ChatTemplate | None:
        """The template of a Hugging Face checkpoint or tokenizer folder; None if it has none."""
        config = load_tokenizer_config(model_dir)
        source = _template_source(model_dir, config)
        if source is None:
            return None
        return cls(source, special_tokens(config))

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt text for `messages`; template-raised errors are the caller's 400."""
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                tools=tools,
                **self._special_tokens,
            )
        except jinja2.TemplateError as exc:
            raise InvalidRequest(
                f"chat template rejected the messages: {exc}", param="messages"
            ) from exc
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise InvalidRequest(
                f"chat template could not render the messages: {exc}", param="messages"
            ) from exc


def load_tokenizer_config(model_dir: Path) -> dict[str, Any]:
    """`tokenizer_config.json` of `model_dir`, or `{}` when absent."""
    path = Path(model_dir) / "tokenizer_config.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def special_tokens(config: dict[str, Any]) -> dict[str, str]:
    """The special tokens of a tokenizer config as plain strings (AddedToken dicts unwrapped)."""
    tokens = {}
    for name in _SPECIAL_TOKENS:
        value = config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            tokens[name] = value
    return tokens


def _template_source(model_dir: Path, config: dict[str, Any]) -> str | None:
    source = config.get("chat_template")
    if isinstance(source, list):  # named templates: [{"name": "default", "template": "..."}]
        named = {item.get("name"): item.get("template") for item in source}
        source = named.get("default")
    if isinstance(source, str):
        return source
    # Newer checkpoints keep the template in its own file.
    jinja_file = Path(model_dir) / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    json_file = Path(model_dir) / "chat_template.json"
    if json_file.is_file():
        return json.loads(json_file.read_text(encoding="utf-8")).get("chat_template")
    return None


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML, which changes the prompt; Hugging Face replaces it too.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env

"""docs/configuration.md lists every setting with its YAML key, environment name and default.

The table is generated from `Settings` (field defaults and attribute docstrings):
`python -m tests.unit.test_configuration_doc` writes it into the document again.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import os
import re
import textwrap
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, SecretStr

from gateway.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
BEGIN, END = "<!-- settings table: generated -->", "<!-- end of settings table -->"
HEADER = "| YAML key | environment | default | meaning |\n|---|---|---|---|"


def setting_rows(
    model: type[BaseModel] = Settings, prefix: str = "", env: str | None = None
) -> list[tuple[str, str, str, str]]:
    """(YAML key, environment variable, default, meaning) of every field, sections flattened."""
    docs = _attribute_docs(model)
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        env_name = env or "LOCALMOE_" + key.replace(".", "__").upper()
        annotation = field.annotation
        if _is_model(annotation):
            rows += setting_rows(annotation, f"{key}.", env)
            continue
        meaning = docs.get(name, "")
        item = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None
        if _is_model(item):  # `models`: a list of sections, a JSON list in the environment
            meaning = f"{meaning} One entry per model, with the keys `{key}[].*` below.".strip()
            rows.append(
                (key, env_name, _default(field.get_default(call_default_factory=True)), meaning)
            )
            rows += setting_rows(item, f"{key}[].", env_name)
            continue
        choices = typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()
        if choices:
            meaning = f"{meaning} One of {', '.join(f'`{c}`' for c in choices)}.".strip()
        default = _default(field.get_default(call_default_factory=True))
        rows.append((key, env_name, default, meaning))
    return rows


def table() -> str:
    """The Markdown table of `setting_rows()`."""
    lines = [HEADER]
    for key, env, default, meaning in setting_rows():
        cells = [f"`{key}`", f"`{env}`", f"`{default}`", meaning.replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write() -> None:
    """Put the current table into docs/configuration.md, between its markers."""
    text = DOC.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOC.write_text(f"{text[:start]}\n{table()}\n{text[end:]}")


def test_every_setting_is_in_the_table_with_its_environment_name_and_default() -> None:
    documented = _documented_rows()
    for key, env, default, _ in setting_rows():
        assert key in documented, f"{key} is missing: python -m tests.unit.test_configuration_doc"
        assert documented[key][:2] == [f"`{env}`", f"`{default}`"], key


def test_the_table_has_no_setting_that_is_gone() -> None:
    keys = {key for key, *_ in setting_rows()}
    assert set(_documented_rows()) <= keys


def test_environment_names_are_the_ones_pydantic_settings_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [n for n in os.environ if n.startswith("LOCALMOE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LOCALMOE_AUTH__LEEWAY_S", "7")
    monkeypatch.setenv("LOCALMOE_CACHE__REDIS_RETRY_S", "9")
    settings = Settings()
    assert (settings.auth.leeway_s, settings.cache.redis_retry_s) == (7, 9)


def _documented_rows() -> dict[str, list[str]]:
    text = DOC.read_text()
    body = text[text.index(BEGIN) : text.index(END)]
    rows = {}
    for line in body.splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def _attribute_docs(model: type[BaseModel]) -> dict[str, str]:
    """The docstrings under the fields of `model` (pydantic keeps them only when configured to)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(model)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(_default(item) for item in value) if value else "[]"
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Path | str | int):
        return str(value)
    raise TypeError(f"no format for the default {value!r}")


if __name__ == "__main__":
    write()
    print(f"wrote {DOC}")

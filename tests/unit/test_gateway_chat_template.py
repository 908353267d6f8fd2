"""Chat templates from a model's `tokenizer_config.json`, rendered in a sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.core.chat_template import ChatTemplate, TemplateError
from gateway.errors import InvalidRequest

CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _model_dir(tmp_path: Path, **config: object) -> Path:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


def test_renders_messages_with_special_tokens_and_generation_prompt(tmp_path: Path) -> None:
    bos = {"content": "<s>", "lstrip": False}  # AddedToken form, as HF writes it
    template = ChatTemplate.from_dir(_model_dir(tmp_path, chat_template=CHATML, bos_token=bos))
    assert template is not None
    prompt = template.render([{"role": "user", "content": "hi"}])
    assert prompt == "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_named_default_template_is_used(tmp_path: Path) -> None:
    named = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEFAULT"}]
    template = ChatTemplate.from_dir(_model_dir(tmp_path, chat_template=named))
    assert template is not None and template.render([]) == "DEFAULT"


def test_template_file_next_to_the_config_is_used(tmp_path: Path) -> None:
    (tmp_path / "chat_template.jinja").write_text("{{ messages | length }}")
    template = ChatTemplate.from_dir(_model_dir(tmp_path))
    assert template is not None and template.render([{"role": "user", "content": "a"}]) == "1"


def test_model_without_template_has_none(tmp_path: Path) -> None:
    assert ChatTemplate.from_dir(_model_dir(tmp_path, eos_token="</s>")) is None


def test_raise_exception_in_template_is_a_400_on_messages() -> None:
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(InvalidRequest) as exc:
        template.render([{"role": "user", "content": "x"}])
    assert exc.value.param == "messages" and "roles must alternate" in exc.value.message


def test_sandbox_blocks_python_internals() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(InvalidRequest):
        template.render([])


def test_tojson_keeps_unicode_and_does_not_html_escape() -> None:
    template = ChatTemplate("{{ messages[0] | tojson }}")
    assert template.render([{"content": "<é>"}]) == '{"content": "<é>"}'


def test_broken_template_fails_at_load_time() -> None:
    with pytest.raises(TemplateError):
        ChatTemplate("{% for %}")

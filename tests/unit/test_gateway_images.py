"""Image parts through the core: parsed and validated naming the part, checked against the model
and the limits, loaded, rendered into the prompt by the chat template, counted in the prompt's
tokens, keyed in the response cache by content, and handed to the backend as data URLs. The
backend is scripted (the integration tier sends the same requests through real Triton)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prometheus_client import REGISTRY
from pydantic import ValidationError

from gateway.api.error_responses import invalid_body
from gateway.core.backend import Delta, GenerationRequest
from gateway.core.catalogue import Catalogue
from gateway.core.context import CallContext
from gateway.core.protocol import ChatCompletionRequest
from gateway.core.service import OpenAIService
from gateway.errors import ContextLengthExceeded, InvalidRequest
from gateway.policy.cache import ResponseCache
from gateway.settings import CacheSettings, ImageSettings, RequestSettings, Settings
from tests.support import byte_level_tokenizer

IMAGE = "<|image|>"
FEATURES = 6
VISION_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{% if m.content is string %}{{ m.content }}"
    "{% else %}{% for p in m.content %}{% if p.type == 'text' %}{{ p.text }}"
    "{% else %}<|image|>{% endif %}{% endfor %}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TEXT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


class ScriptedBackend:
    """Answers every generation with "A red circle.", reporting no token counts."""

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []

    def ready(self) -> bool:
        return True

    async def generate(self, route: str, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        self.requests.append(request)
        yield Delta("A red circle.", "stop", None, 4)


def _checkpoint(path: Path, template: str, *, vision: bool) -> Path:
    tokenizer = byte_level_tokenizer(["what is in this image? a red circle"] * 20, 300)
    tokenizer.add_special_tokens([IMAGE])
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    (path / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    if vision:
        (path / "vision").mkdir()
        config = {"image_token": IMAGE, "num_image_tokens": FEATURES, "image_size": 32}
        (path / "vision" / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    made = {}
    for name, template, vision in (
        ("vlm", VISION_TEMPLATE, True),
        ("vlm-text-template", TEXT_TEMPLATE, True),
        ("text", TEXT_TEMPLATE, False),
    ):
        made[name] = _checkpoint(tmp_path_factory.mktemp(name), template, vision=vision)
    return made


async def _service(
    models: dict[str, Path],
    backend: ScriptedBackend,
    *,
    context: int = 512,
    cache: bool = False,
    **images: Any,
) -> OpenAIService:
    entries = [
        {"id": name, "tokenizer_dir": str(path), "context_length": context}
        for name, path in models.items()
    ]
    catalogue = Catalogue(Settings(models=entries, discover_models=False))
    await catalogue.load_configured()
    return OpenAIService(
        RequestSettings(),
        catalogue,
        backend,
        cache=ResponseCache(CacheSettings()) if cache else None,
        images=ImageSettings(**images),
    )


def _png(color: str = "red", size: tuple[int, int] = (16, 12)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def _data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def _image(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def _chat(model: str, *messages: Any, **fields: Any) -> ChatCompletionRequest:
    body = {"model": model, "messages": list(messages), "max_tokens": 4, **fields}
    return ChatCompletionRequest.model_validate_json(json.dumps(body))


def _user(*parts: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- parsing and validation


@pytest.mark.parametrize(
    ("content", "param"),
    [
        ([{"type": "image_url", "image_url": {"url": 5}}], "messages[0].content[0].image_url.url"),
        ([_image("data:,", detail="ultra")], "messages[0].content[0].image_url.detail"),
        (
            [{"type": "image_url", "image_url": "https://x/a.png"}],
            "messages[0].content[0].image_url",
        ),
        ([_text("a"), {"type": "text", "text": ["b"]}], "messages[0].content[1].text"),
    ],
)
def test_wrongly_typed_parts_are_a_400_naming_the_field(content: list[Any], param: str) -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": content}]}).encode()
    with pytest.raises(ValidationError) as exc:
        ChatCompletionRequest.model_validate_json(body)
    assert invalid_body(exc.value, body).param == param


@pytest.mark.parametrize(
    ("message", "param"),
    [
        (
            _user(_text("a"), {"type": "input_audio", "input_audio": {}}),
            "messages[0].content[1].type",
        ),
        (_user({"type": "image_url"}), "messages[0].content[0].image_url"),
        (_user({"type": "text"}), "messages[0].content[0].text"),
        ({"role": "assistant", "content": [_image("data:,")]}, "messages[0].content[0].type"),
    ],
)
async def test_parts_the_api_does_not_allow_are_a_400_naming_the_part(
    models: dict[str, Path], message: dict[str, Any], param: str
) -> None:
    svc = await _service(models, ScriptedBackend())
    with pytest.raises(InvalidRequest) as exc:
        await svc.chat(_chat("vlm", message), CallContext("r"))
    assert exc.value.param == param


# --- capability and limits


async def test_an_image_to_a_text_only_model_is_a_400_naming_the_part(
    models: dict[str, Path],
) -> None:
    svc = await _service(models, ScriptedBackend())
    request = _chat("text", _user(_text("hi")), _user(_text("see"), _image(_data_url(_png()))))
    refused = _metric("localmoe_image_refusals_total", reason="text_only_model")
    with pytest.raises(InvalidRequest) as exc:
        await svc.chat(request, CallContext("r"))
    assert (exc.value.param, exc.value.message) == (
        "messages[1].content[1].image_url",
        "model 'text' does not accept images.",
    )
    assert _metric("localmoe_image_refusals_total", reason="text_only_model") == refused + 1


async def test_more_images_than_allowed_names_the_first_part_over_the_limit(
    models: dict[str, Path],
) -> None:
    svc = await _service(models, ScriptedBackend(), max_per_request=2)
    url = _data_url(_png())
    request = _chat("vlm", _user(_image(url)), _user(_text("and"), _image(url), _image(url)))
    with pytest.raises(InvalidRequest) as exc:
        await svc.chat(request, CallContext("r"))
    assert (exc.value.status, exc.value.code) == (400, "too_many_images")
    assert exc.value.param == "messages[1].content[2].image_url"


async def test_a_refused_image_names_its_part_with_a_fixed_message(
    models: dict[str, Path],
) -> None:
    backend = ScriptedBackend()
    svc = await _service(models, backend)
    good, bad = _data_url(_png()), "data:image/png;base64,iVBORw0KGgo!!!"
    request = _chat("vlm", _user(_image(good)), _user(_text("and"), _image(bad)))
    refused = _metric("localmoe_image_refusals_total", reason="base64")
    with pytest.raises(InvalidRequest) as exc:
        await svc.chat(request, CallContext("r"))
    assert (exc.value.param, exc.value.code) == (
        "messages[1].content[1].image_url",
        "invalid_image",
    )
    assert "!!!" not in exc.value.message and backend.requests == []
    assert _metric("localmoe_image_refusals_total", reason="base64") == refused + 1


async def test_a_file_url_is_refused_naming_its_part(models: dict[str, Path]) -> None:
    svc = await _service(models, ScriptedBackend())
    request = _chat("vlm", _user(_text("look"), _image("file:///etc/passwd")))
    with pytest.raises(InvalidRequest) as exc:
        await svc.chat(request, CallContext("r"))
    assert exc.value.param == "messages[0].content[1].image_url"
    assert "passwd" not in exc.value.message


async def test_text_that_passes_for_an_image_placeholder_is_refused(
    models: dict[str, Path],
) -> None:
    svc = await _service(models, ScriptedBackend())
    request = _chat("vlm", _user(_text(f"two {IMAGE}"), _image(_data_url(_png()))))
    with pytest.raises(InvalidRequest) as exc:
        await svc.chat(request, CallContext("r"))
    assert exc.value.param == "messages[0].content[0].text"


# --- what reaches the backend


async def test_images_travel_as_data_urls_in_prompt_order_with_one_placeholder_each(
    models: dict[str, Path],
) -> None:
    backend = ScriptedBackend()
    svc = await _service(models, backend)
    red, blue = _png("red"), _png("blue", (20, 20))
    accepted = _metric("localmoe_images_total", source="data")
    request = _chat(
        "vlm",
        {"role": "system", "content": "Answer briefly."},
        _user(_text("first"), _image(_data_url(red), detail="low")),
        _user(_image(_data_url(blue)), _text("second")),
    )
    response = await svc.chat(request, CallContext("r"))
    sent = backend.requests[0]
    assert sent.prompt == (
        f"<|system|>Answer briefly.\n<|user|>first{IMAGE}\n<|user|>{IMAGE}second\n<|assistant|>"
    )
    assert [base64.b64decode(url.split(",", 1)[1]) for url in sent.images] == [red, blue]
    assert all(url.startswith("data:image/png;base64,") for url in sent.images)
    assert response.choices[0].message.content == "A red circle."
    assert _metric("localmoe_images_total", source="data") == accepted + 2


async def test_a_template_written_for_text_gets_the_placeholder_inline(
    models: dict[str, Path],
) -> None:
    backend = ScriptedBackend()
    svc = await _service(models, backend)
    request = _chat("vlm-text-template", _user(_text("what?"), _image(_data_url(_png()))))
    await svc.chat(request, CallContext("r"))
    assert backend.requests[0].prompt == f"<|user|>what?\n{IMAGE}\n<|assistant|>"


async def test_a_text_request_renders_as_before_and_sends_no_images(
    models: dict[str, Path],
) -> None:
    backend = ScriptedBackend()
    svc = await _service(models, backend)
    await svc.chat(_chat("vlm", _user(_text("a"), _text("b"))), CallContext("r"))
    assert backend.requests[0].prompt == "<|user|>a\nb\n<|assistant|>"
    assert backend.requests[0].images == ()


# --- tokens


async def test_each_image_counts_as_its_features_in_the_prompt_tokens(
    models: dict[str, Path],
) -> None:
    svc = await _service(models, ScriptedBackend())
    url = _data_url(_png())
    text_only = await svc.chat(_chat("vlm", _user(_text("hi"), _text("x"))), CallContext("r"))
    with_images = await svc.chat(
        _chat("vlm", _user(_text("hi"), _image(url), _image(url))), CallContext("r")
    )
    # Same text, and two placeholders in place of the "\n" + "x" joiner: each image is F tokens.
    placeholders = with_images.usage.prompt_tokens - 2 * (FEATURES - 1)
    tokenizer = svc.catalogue.get("vlm").tokenizer
    assert placeholders == tokenizer.count(
        f"<|user|>hi{IMAGE}{IMAGE}\n<|assistant|>", add_special_tokens=False
    )
    assert text_only.usage.prompt_tokens < with_images.usage.prompt_tokens


async def test_images_that_overflow_the_context_are_context_length_exceeded(
    models: dict[str, Path],
) -> None:
    svc = await _service(models, ScriptedBackend(), context=40)
    url = _data_url(_png())
    await svc.chat(_chat("vlm", _user(_text("hi"), _image(url))), CallContext("r"))
    with pytest.raises(ContextLengthExceeded):
        await svc.chat(_chat("vlm", _user(_text("hi"), *[_image(url)] * 6)), CallContext("r"))


# --- cache


async def test_the_same_image_hits_the_cache_and_a_different_one_misses(
    models: dict[str, Path],
) -> None:
    backend = ScriptedBackend()
    svc = await _service(models, backend, cache=True)
    red, blue = _data_url(_png("red")), _data_url(_png("blue"))
    results = []
    for url in (red, red, blue):
        ctx = CallContext("r")
        await svc.chat(_chat("vlm", _user(_text("what?"), _image(url)), temperature=0), ctx)
        results.append(ctx.headers["x-cache"])
    assert results == ["miss", "hit", "miss"] and len(backend.requests) == 2


# --- capabilities


async def test_discovered_routes_with_a_multimodal_encoder_say_they_take_images(
    models: dict[str, Path],
) -> None:
    catalogue = Catalogue(Settings())
    bls = {"tokenizer_dir": str(models["vlm"]), "served_model_name": "tiny"}
    await catalogue.discover(
        {"tensorrt_llm_bls": {**bls, "multimodal_encoders_name": "multimodal_encoders"}}
    )
    card = catalogue.get("tiny").card().model_dump()
    assert card["capabilities"]["vision"] is True
    text = Catalogue(Settings())
    await text.discover({"tensorrt_llm_bls": {**bls, "multimodal_encoders_name": ""}})
    assert text.get("tiny").card().model_dump()["capabilities"]["vision"] is False
    assert catalogue.get("tiny").image_tokens == FEATURES

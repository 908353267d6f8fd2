"""Images through the whole stack: the official OpenAI SDK and LiteLLM against the real gateway,
a real Triton running the tiny vision-language MoE (preprocessing → multimodal_encoders →
tensorrt_llm), and drawn shapes the model has never seen."""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import openai
import pytest
from PIL import Image

from tests.gateway_fixtures import MAX_BODY_BYTES, GatewayProcess, start_gateway, stop_gateway
from tests.support import metric_value

QUESTION = "What is in this image?"


def _draw(
    colour: str, shape: str, *, size: tuple[int, int] = (96, 96), seed: int = 7
) -> Image.Image:
    """A plain picture of the kind the model was trained on, never one of its training images."""
    from moe_build.shapes import draw_plain

    return draw_plain(colour, shape, size=size, seed=seed)


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def _data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def _image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def _messages(*urls: str, question: str = QUESTION) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [*(_image_part(u) for u in urls), {"type": "text", "text": question}],
        }
    ]


def _ask(client: openai.OpenAI, model_id: str, *urls: str, **kw: Any) -> Any:
    kw.setdefault("max_tokens", 12)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(
        model=model_id, messages=_messages(*urls, question=kw.pop("question", QUESTION)), **kw
    )


def _names(answer: str, colour: str, shape: str) -> bool:
    text = answer.lower()
    return colour in text and shape in text


RED_CIRCLE = _data_url(_encode(_draw("red", "circle")))
BLUE_SQUARE = _data_url(
    _encode(_draw("blue", "square", size=(160, 120), seed=3), "JPEG"), "image/jpeg"
)


# --- what the model sees -------------------------------------------------------------------------


def test_a_drawn_image_is_named_by_colour_and_shape(client: openai.OpenAI, model_id: str) -> None:
    reply = _ask(client, model_id, RED_CIRCLE)
    assert _names(reply.choices[0].message.content, "red", "circle"), reply.choices[0].message


def test_two_different_images_get_different_answers(client: openai.OpenAI, model_id: str) -> None:
    first = _ask(client, model_id, RED_CIRCLE).choices[0].message.content
    second = _ask(client, model_id, BLUE_SQUARE).choices[0].message.content
    assert _names(second, "blue", "square"), second
    assert first != second


def test_the_colour_question_answers_the_colour(client: openai.OpenAI, model_id: str) -> None:
    url = _data_url(_encode(_draw("green", "triangle", size=(200, 200), seed=11)))
    reply = _ask(client, model_id, url, question="What colour is the shape?")
    assert "green" in reply.choices[0].message.content.lower()


async def test_async_client_sees_the_image(gateway: GatewayProcess, model_id: str) -> None:
    url = _data_url(_encode(_draw("yellow", "triangle", seed=5)))
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=gateway.token, max_retries=0
    ) as sdk:
        reply = await sdk.chat.completions.create(
            model=model_id, messages=_messages(url), max_tokens=12, temperature=0
        )
    assert _names(reply.choices[0].message.content, "yellow", "triangle")


def test_streamed_answer_equals_the_whole_answer(client: openai.OpenAI, model_id: str) -> None:
    whole = _ask(client, model_id, RED_CIRCLE).choices[0].message.content
    chunks = list(_ask(client, model_id, RED_CIRCLE, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole and _names(streamed, "red", "circle")
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_litellm_sends_images_through_the_gateway(gateway: GatewayProcess, model_id: str) -> None:
    import litellm

    url = _data_url(_encode(_draw("purple", "square", seed=9)))
    reply = litellm.completion(
        model=f"openai/{model_id}",
        api_base=gateway.base_url,
        api_key=gateway.token,
        messages=_messages(url),
        max_tokens=12,
        temperature=0,
    )
    assert _names(reply.choices[0].message.content, "purple", "square")


def test_usage_counts_the_image_tokens(client: openai.OpenAI, model_id: str) -> None:
    with_image = _ask(client, model_id, RED_CIRCLE, max_tokens=1).usage.prompt_tokens
    text_only = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION}]}],
        max_tokens=1,
    ).usage.prompt_tokens
    two = _ask(client, model_id, RED_CIRCLE, BLUE_SQUARE, max_tokens=1).usage.prompt_tokens
    per_image = with_image - text_only
    assert per_image > 1  # an image is its feature tokens, not one placeholder
    assert two - text_only == 2 * per_image


def test_two_images_in_one_request_are_served(client: openai.OpenAI, model_id: str) -> None:
    reply = _ask(client, model_id, RED_CIRCLE, BLUE_SQUARE)
    assert reply.choices[0].message.content and reply.choices[0].finish_reason in ("stop", "length")


def test_images_in_two_messages_are_served(client: openai.OpenAI, model_id: str) -> None:
    messages = [
        *_messages(RED_CIRCLE),
        {"role": "assistant", "content": "A red circle."},
        *_messages(BLUE_SQUARE),
    ]
    reply = client.chat.completions.create(
        model=model_id, messages=messages, max_tokens=12, temperature=0
    )
    assert reply.usage.prompt_tokens > 2 * 16


def test_the_model_card_says_it_takes_images(gateway: GatewayProcess, model_id: str) -> None:
    card = httpx.get(f"{gateway.base_url}/models/{model_id}", headers=gateway.headers).json()
    assert card["capabilities"]["vision"] is True


# --- refusals ------------------------------------------------------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A valid 8x8 PNG whose IHDR says width x height (CRC fixed): a decompression bomb's header."""
    data = bytearray(_encode(Image.new("RGB", (8, 8), "red")))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _tiff() -> bytes:
    return _encode(Image.new("RGB", (32, 32), "blue"), "TIFF")


SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="4"/></svg>'
BAD_IMAGES = {
    "truncated png": _data_url(_encode(_draw("red", "square"))[:200]),
    "random bytes": _data_url(bytes(range(256)) * 8),
    "svg": _data_url(
        b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="4"/></svg>', "image/svg+xml"
    ),
    "svg as png": _data_url(b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="4"/></svg>'),
    "tiff": _data_url(_tiff(), "image/tiff"),
    "tiff as png": _data_url(_tiff()),
    "1x1": _data_url(_encode(Image.new("RGB", (1, 1), "red"))),
    "bad base64": "data:image/png;base64,iVBORw0KGgo!!!!",
    "file path": "/etc/passwd",
    "file url": "file:///etc/passwd",
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_a_bad_image_is_a_400_naming_its_part(
    client: openai.OpenAI, model_id: str, case: str
) -> None:
    messages = [
        {"role": "system", "content": "You look at images."},
        {
            "role": "user",
            "content": [{"type": "text", "text": QUESTION}, _image_part(BAD_IMAGES[case])],
        },
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model_id, messages=messages, max_tokens=4)
    error = caught.value.body
    assert caught.value.status_code == 400
    assert error["param"] == "messages[1].content[1].image_url", error
    assert error["type"] == "invalid_request_error"
    # A fixed text of ours: nothing from Pillow or the decoder (CVE-2026-22778 leaked an address).
    assert "0x" not in error["message"] and "PIL" not in error["message"]


def test_a_decompression_bomb_header_is_refused_within_a_second(
    client: openai.OpenAI, model_id: str
) -> None:
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(client, model_id, _data_url(_png_claiming(100_000, 100_000)))
    assert time.monotonic() - started < 1.0
    assert caught.value.body["param"] == "messages[0].content[0].image_url"


def test_too_many_images_is_a_400_naming_the_first_one_over(
    client: openai.OpenAI, model_id: str, gateway: GatewayProcess
) -> None:
    limit = 8  # the default `images.max_per_request`
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(client, model_id, *([RED_CIRCLE] * (limit + 1)))
    assert caught.value.body["param"] == f"messages[0].content[{limit}].image_url"


def test_after_every_refusal_the_stack_still_sees(client: openai.OpenAI, model_id: str) -> None:
    for url in BAD_IMAGES.values():
        with pytest.raises(openai.BadRequestError):
            _ask(client, model_id, url, max_tokens=2)
    reply = _ask(client, model_id, RED_CIRCLE)
    assert _names(reply.choices[0].message.content, "red", "circle")


def test_refusals_and_images_are_counted_by_reason(
    client: openai.OpenAI, model_id: str, gateway: GatewayProcess
) -> None:
    metrics = f"{gateway.url}/metrics"
    corrupt = metric_value(metrics, "localmoe_image_refusals_total", reason="corrupt")
    seen = metric_value(metrics, "localmoe_images_total", source="data")
    with pytest.raises(openai.BadRequestError):
        _ask(client, model_id, BAD_IMAGES["truncated png"], max_tokens=2)
    _ask(client, model_id, RED_CIRCLE, max_tokens=2)
    assert metric_value(metrics, "localmoe_image_refusals_total", reason="corrupt") == corrupt + 1
    assert metric_value(metrics, "localmoe_images_total", source="data") >= seen + 1


# --- http(s) images ------------------------------------------------------------------------------


class _Images(BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, dict[str, str], bytes]]] = {}

    def do_GET(self) -> None:
        status, headers, body = self.routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    """A local HTTP server with a drawn PNG at /shape.png and a redirect to it at /moved."""
    png = _encode(_draw("orange", "circle", seed=21))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    base = f"http://127.0.0.1:{server.server_port}"
    _Images.routes = {
        "/shape.png": (200, {"Content-Type": "image/png"}, png),
        "/moved": (302, {"Location": f"{base}/shape.png"}, b""),
    }
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield base
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def private_images_gateway(
    triton: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway with `images.allow_private_addresses` on: a local deployment's switch."""
    process = start_gateway(
        tmp_path_factory.mktemp("private-images"),
        triton_urls=[triton.grpc_url],
        config={
            "requests": {"max_body_bytes": MAX_BODY_BYTES},
            "cache": {"enabled": False},
            "images": {"allow_private_addresses": True},
        },
    )
    yield process
    stop_gateway(process)


def test_an_http_image_on_a_private_address_is_refused_by_default(
    client: openai.OpenAI, model_id: str, image_server: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(client, model_id, f"{image_server}/shape.png")
    assert caught.value.body["param"] == "messages[0].content[0].image_url"
    assert "private" in caught.value.body["message"]


def test_an_http_image_is_fetched_by_the_gateway_with_the_switch_on(
    private_images_gateway: GatewayProcess, model_id: str, image_server: str
) -> None:
    with openai.OpenAI(
        base_url=private_images_gateway.base_url, api_key=private_images_gateway.token,
        max_retries=0,
    ) as sdk:  # fmt: skip
        reply = _ask(sdk, model_id, f"{image_server}/shape.png")
    assert _names(reply.choices[0].message.content, "orange", "circle")


def test_a_redirect_is_refused_by_default(
    private_images_gateway: GatewayProcess, model_id: str, image_server: str
) -> None:
    with openai.OpenAI(
        base_url=private_images_gateway.base_url, api_key=private_images_gateway.token,
        max_retries=0,
    ) as sdk, pytest.raises(openai.BadRequestError) as caught:  # fmt: skip
        _ask(sdk, model_id, f"{image_server}/moved")
    assert caught.value.body["param"] == "messages[0].content[0].image_url"


def test_an_image_for_a_text_only_model_is_a_400(
    text_only_gateway: GatewayProcess, model_id: str
) -> None:
    with (
        openai.OpenAI(
            base_url=text_only_gateway.base_url, api_key=text_only_gateway.token, max_retries=0
        ) as sdk,
        pytest.raises(openai.BadRequestError) as caught,
    ):
        _ask(sdk, model_id, RED_CIRCLE)
    assert caught.value.body["param"] == "messages[0].content[0].image_url"
    card = httpx.get(
        f"{text_only_gateway.base_url}/models/{model_id}", headers=text_only_gateway.headers
    ).json()
    assert card["capabilities"]["vision"] is False


@pytest.fixture(scope="module")
def text_only_gateway(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A second Triton serving the tiny model's text half (no `vision/`), and a gateway on it."""
    import shutil

    from gateway.local.repository import fill_repository
    from gateway.local.triton import TritonProcess
    from tests.support import free_port

    root = tmp_path_factory.mktemp("text-only")
    model = root / "tiny-moe"
    shutil.copytree(tiny_model_dir, model, ignore=shutil.ignore_patterns("vision"))
    repo = fill_repository(root / "repo", model_dir=model, profile="cpu")
    server = TritonProcess(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    server.start()
    try:
        process = start_gateway(
            root / "gateway", triton_urls=[server.grpc_url], config={"cache": {"enabled": False}}
        )
        yield process
        stop_gateway(process)
    finally:
        server.stop()

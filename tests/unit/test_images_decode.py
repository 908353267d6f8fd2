"""The shared image guards: strict data: URLs and a header-checked open, on real Pillow bytes."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import time
import warnings
import zlib

import pytest
from PIL import Image

from gateway.images.decode import ImageLimits, ImageRefused, decode_data_url, open_image
from gateway.images.fetch import FetchPolicy
from gateway.images.load import load_image

LIMITS = ImageLimits()


def _encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def _data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def _png_claiming(width: int, height: int) -> bytes:
    """A valid 8x8 PNG whose IHDR says width x height, CRC fixed: a decompression bomb's header."""
    data = bytearray(_encode(Image.new("RGB", (8, 8), "red")))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _refusal(data: bytes, limits: ImageLimits = LIMITS) -> ImageRefused:
    with pytest.raises(ImageRefused) as caught:
        open_image(data, limits)
    return caught.value


def _url_refusal(url: str, limits: ImageLimits = LIMITS) -> ImageRefused:
    with pytest.raises(ImageRefused) as caught:
        decode_data_url(url, limits)
    return caught.value


# --- data: URLs ----------------------------------------------------------------------------------


def test_a_png_data_url_decodes_to_its_bytes() -> None:
    png = _encode(Image.new("RGB", (4, 4), "red"))
    assert decode_data_url(_data_url(png), LIMITS) == png


def test_media_type_and_scheme_are_case_insensitive() -> None:
    png = _encode(Image.new("RGB", (4, 4), "red"))
    assert decode_data_url(_data_url(png, "IMAGE/PNG").replace("data:", "DATA:"), LIMITS) == png


@pytest.mark.parametrize(
    "payload", ["iVBORw0KGgo!!!!", "iVBORw0KGgo", "iVBO Rw0K", "iVBO\nRw0K", "aGVsbG8=x"]
)
def test_bad_base64_is_refused_as_base64(payload: str) -> None:
    assert _url_refusal(f"data:image/png;base64,{payload}").reason == "base64"


def test_a_data_url_that_is_not_base64_is_refused() -> None:
    assert _url_refusal("data:image/png,%89PNG").reason == "base64"
    assert _url_refusal("data:image/png;base64").reason == "base64"
    assert _url_refusal("data:image/png;base64,").reason == "base64"


@pytest.mark.parametrize("media", ["image/svg+xml", "image/tiff", "image/bmp", "text/html", ""])
def test_other_media_types_are_refused_as_format(media: str) -> None:
    assert _url_refusal(f"data:{media};base64,AAAA").reason == "format"


def test_a_media_type_outside_the_configured_formats_is_refused() -> None:
    png_only = ImageLimits(formats=frozenset({"PNG"}))
    assert _url_refusal("data:image/gif;base64,AAAA", png_only).reason == "format"


@pytest.mark.parametrize("url", ["http://example.com/a.png", "file:///etc/passwd", "/etc/passwd"])
def test_only_data_urls_decode(url: str) -> None:
    assert _url_refusal(url).reason == "url_scheme"


def test_an_oversize_url_is_refused_from_its_length_before_decoding() -> None:
    limits = ImageLimits(max_bytes=1000)
    # Not valid base64 at all: refused for size, so it was never decoded.
    assert _url_refusal("data:image/png;base64," + "!" * 1400, limits).reason == "too_many_bytes"
    exact = _data_url(b"\x89PNG" + b"\0" * 996)
    assert decode_data_url(exact, limits)
    assert _url_refusal(_data_url(b"\0" * 1001), limits).reason == "too_many_bytes"


# --- opening -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_each_format_opens_as_rgb(fmt: str) -> None:
    image = open_image(_encode(Image.new("RGB", (64, 48), (200, 30, 30)), fmt), LIMITS)
    assert (image.mode, image.size) == ("RGB", (64, 48))
    red, green, blue = image.getpixel((10, 10))
    assert red > 150 and green < 80 and blue < 80


def test_a_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue", "green")]
    gif = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(gif)).n_frames == 3
    red, green, blue = open_image(gif, LIMITS).getpixel((8, 8))
    assert red > 200 and green < 50 and blue < 50


def test_transparency_is_composed_over_white() -> None:
    image = open_image(_encode(Image.new("RGBA", (8, 8), (0, 0, 0, 0))), LIMITS)
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)


def test_a_truncated_png_is_corrupt() -> None:
    png = _encode(Image.effect_noise((128, 128), 64).convert("RGB"))
    refused = _refusal(png[:200])
    assert refused.reason == "corrupt"
    assert refused.message == "The image could not be decoded."


def test_random_bytes_are_refused_as_format() -> None:
    assert _refusal(bytes(range(256)) * 8).reason == "format"


def test_random_bytes_behind_a_png_signature_are_corrupt() -> None:
    assert _refusal(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8).reason == "corrupt"


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "ICO", "PPM"])
def test_other_pillow_formats_are_refused_as_format(fmt: str) -> None:
    assert _refusal(_encode(Image.new("RGB", (32, 32), "blue"), fmt)).reason == "format"


def test_svg_is_refused_as_format() -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="4"/></svg>'
    assert _refusal(svg).reason == "format"


def test_a_format_outside_the_configured_ones_is_refused() -> None:
    jpeg = _encode(Image.new("RGB", (8, 8)), "JPEG")
    assert _refusal(jpeg, ImageLimits(formats=frozenset({"PNG"}))).reason == "format"


def test_a_1x1_image_is_too_small() -> None:
    refused = _refusal(_encode(Image.new("RGB", (1, 1), "red")))
    assert refused.reason == "too_small"
    assert _refusal(_encode(Image.new("RGB", (300, 1)))).reason == "too_small"
    assert open_image(_encode(Image.new("RGB", (2, 2))), LIMITS).size == (2, 2)


def test_too_many_pixels_is_refused_from_the_header() -> None:
    limits = ImageLimits(max_pixels=64 * 64)
    assert open_image(_encode(Image.new("RGB", (64, 64))), limits)
    assert _refusal(_encode(Image.new("RGB", (65, 64))), limits).reason == "too_many_pixels"


@pytest.mark.parametrize("side", [6000, 20_000, 100_000])
def test_a_bomb_header_is_refused_fast_without_decoding(side: int) -> None:
    started = time.perf_counter()
    refused = _refusal(_png_claiming(side, side))
    assert time.perf_counter() - started < 0.1
    assert refused.reason == "too_many_pixels"


def test_the_pixel_limit_does_not_rest_on_pillows_global() -> None:
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # someone else's process-wide choice: ours still holds
    try:
        assert _refusal(_png_claiming(100_000, 100_000)).reason == "too_many_pixels"
    finally:
        Image.MAX_IMAGE_PIXELS = before


def test_opening_leaves_the_warning_filters_as_they_were() -> None:
    before = list(warnings.filters)
    open_image(_encode(Image.new("RGB", (8, 8))), LIMITS)
    _refusal(_png_claiming(100_000, 100_000))
    assert warnings.filters == before


def test_oversize_bytes_are_refused_before_opening() -> None:
    png = _encode(Image.effect_noise((64, 64), 64).convert("RGB"))
    assert _refusal(png, ImageLimits(max_bytes=len(png) - 1)).reason == "too_many_bytes"


def test_no_refusal_carries_the_decoders_text() -> None:
    cases = [b"\x89PNG\r\n\x1a\n" + b"\xff" * 64, b"\xff\xd8\xff" + b"\0" * 64, b"GIF89a\0\0"]
    for data in cases:
        refused = _refusal(data)
        assert refused.reason == "corrupt"
        assert str(refused) == "The image could not be decoded."
        assert refused.__cause__ is None and refused.__suppress_context__


# --- load_image ----------------------------------------------------------------------------------


async def test_load_image_gives_bytes_size_hash_and_a_canonical_data_url() -> None:
    jpeg = _encode(Image.new("RGB", (40, 30), "green"), "JPEG")
    # Declared as PNG, really JPEG: the format and the URL sent on come from the bytes.
    loaded = await load_image(_data_url(jpeg, "image/png"), LIMITS, FetchPolicy())
    assert (loaded.format, loaded.width, loaded.height) == ("JPEG", 40, 30)
    assert loaded.data == jpeg
    assert loaded.sha256 == hashlib.sha256(jpeg).hexdigest()
    assert loaded.data_url == _data_url(jpeg, "image/jpeg")


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "/etc/passwd", "etc/passwd", "ftp://example.com/a.png", ""]
)
async def test_load_image_refuses_other_schemes(url: str) -> None:
    with pytest.raises(ImageRefused) as caught:
        await load_image(url, LIMITS, FetchPolicy())
    assert caught.value.reason == "url_scheme"


async def test_load_image_refuses_http_when_it_is_off() -> None:
    with pytest.raises(ImageRefused) as caught:
        await load_image("https://example.com/a.png", LIMITS, FetchPolicy(allow_http=False))
    assert caught.value.reason == "url_scheme"

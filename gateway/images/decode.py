"""Strict `data:` URL decoding and a guarded image open, shared by the gateway and Triton.

Pillow and the standard library only: `model_repository`'s preprocessing model imports this module
inside Triton. Every check that can be made from a header (format, width, height, width × height)
runs before a single pixel is decoded, so a decompression bomb costs a header read. A refusal is an
`ImageRefused` with a short `reason` label and a fixed message; a decoder's own exception text
never escapes (CVE-2026-22778 leaked a heap address through a PIL error message).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

from PIL import Image

MEDIA_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}
"""Media types a `data:` URL may declare, and the format each names."""

FORMAT_MEDIA_TYPES = {fmt: media for media, fmt in MEDIA_TYPES.items()}


@dataclass(frozen=True)
class ImageLimits:
    """What one image may be. `max_pixels` is width × height read from the header."""

    max_bytes: int = 4 * 2**20
    max_pixels: int = 25_000_000
    min_side: int = 2
    """Smallest width and height: 1×1 images crashed vLLM's engine (CVE-2026-22773)."""
    formats: frozenset[str] = field(default=frozenset({"PNG", "JPEG", "WEBP", "GIF"}))


class ImageRefused(ValueError):
    """An image the guards refuse. `reason` labels metrics; `message` is safe to show a client."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def decode_data_url(url: str, limits: ImageLimits) -> bytes:
    """The bytes of a `data:image/<png|jpeg|webp|gif>;base64,...` URL.

    The length is checked on the base64 text before decoding it, so an oversize URL costs no
    allocation; decoding is strict (no whitespace, no stray characters, correct padding)."""
    if url[:5].lower() != "data:":
        raise ImageRefused("url_scheme", "The image URL must be a data: URL.")
    head, comma, payload = url[5:].partition(",")
    if not comma:
        raise ImageRefused("base64", "The image's data: URL has no data.")
    media, *params = (p.strip().lower() for p in head.split(";"))
    if MEDIA_TYPES.get(media) not in limits.formats:
        raise ImageRefused("format", _format_message(limits))
    if not params or params[-1] != "base64":
        raise ImageRefused("base64", "The image's data: URL must be base64-encoded.")
    if len(payload) > 4 * -(-limits.max_bytes // 3):
        raise ImageRefused("too_many_bytes", _too_many_bytes(limits))
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRefused("base64", "The image's base64 data is not valid base64.") from None
    if not data:
        raise ImageRefused("base64", "The image's base64 data is empty.")
    if len(data) > limits.max_bytes:
        raise ImageRefused("too_many_bytes", _too_many_bytes(limits))
    return data


def sniff_format(data: bytes) -> str | None:
    """The format named by the bytes' signature (one of `MEDIA_TYPES`' values), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def open_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """The image in `data`, decoded to RGB (the first frame of an animation).

    The format is taken from the signature and only that Pillow plugin parses the header; the
    header's size is checked against `limits` before `load()` decodes anything."""
    if len(data) > limits.max_bytes:
        raise ImageRefused("too_many_bytes", _too_many_bytes(limits))
    fmt = sniff_format(data)
    if fmt is None or fmt not in limits.formats:
        raise ImageRefused("format", _format_message(limits))
    try:
        with _bombs_are_errors():
            image = Image.open(io.BytesIO(data), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRefused("too_many_pixels", _too_many_pixels(limits)) from None
    except Exception:  # Pillow raises anything from OSError to struct.error: all mean corrupt
        raise ImageRefused("corrupt", _CORRUPT) from None
    try:
        _check_header(image, fmt, limits)
        image.load()
        return _rgb(image)
    except ImageRefused:
        raise
    except Exception:
        raise ImageRefused("corrupt", _CORRUPT) from None
    finally:
        image.close()


_CORRUPT = "The image could not be decoded."

# `warnings.catch_warnings` swaps the process-wide filter list, which is not thread-safe: two
# overlapping blocks can leave the "error" filter installed for good. Header parsing is fast, so
# one lock around it costs nothing and keeps the filters as they were.
_WARNINGS_LOCK = threading.Lock()


@contextlib.contextmanager
def _bombs_are_errors() -> Iterator[None]:
    """Pillow's DecompressionBombWarning raised as an error while a header is parsed.

    Our own pixel limit is the real guard (checked whatever `Image.MAX_IMAGE_PIXELS` is); this
    only stops a header over Pillow's own threshold from going further as a mere warning."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _check_header(image: Image.Image, fmt: str, limits: ImageLimits) -> None:
    # Pillow reads multi-picture JPEGs as MPO: still a JPEG, decoded as its first picture.
    if image.format != fmt and not (fmt == "JPEG" and image.format == "MPO"):
        raise ImageRefused("format", _format_message(limits))
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageRefused("too_many_pixels", _too_many_pixels(limits))
    if min(width, height) < limits.min_side:
        raise ImageRefused(
            "too_small", f"The image must be at least {limits.min_side} pixels on each side."
        )


def _rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composed over white (what a viewer shows)."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _format_message(limits: ImageLimits) -> str:
    allowed = ", ".join(sorted(limits.formats)) or "none"
    return f"The image format is not supported (accepted: {allowed})."


def _too_many_bytes(limits: ImageLimits) -> str:
    return f"The image is larger than {limits.max_bytes} bytes."


def _too_many_pixels(limits: ImageLimits) -> str:
    return f"The image has more than {limits.max_pixels} pixels."

"""One image part's URL to checked bytes: what the gateway hashes, caches on and sends Triton.

`data:` URLs are decoded strictly, `http(s)` URLs fetched under the SSRF policy, anything else
(`file://`, a bare path, another scheme) refused. The bytes are then opened and fully decoded once
to prove they are an image within the limits; that work runs in a worker thread, so a large image
does not stall the event loop for the other requests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import dataclass

from gateway.images.decode import (
    FORMAT_MEDIA_TYPES,
    ImageLimits,
    ImageRefused,
    decode_data_url,
    open_image,
    sniff_format,
)
from gateway.images.fetch import FetchPolicy, fetch_image_bytes


@dataclass(frozen=True)
class LoadedImage:
    """An image that passed every guard, as its original bytes."""

    data: bytes
    format: str
    """PNG, JPEG, WEBP or GIF, from the bytes (not from what the URL declared)."""
    width: int
    height: int
    sha256: str
    """Hex digest of `data`: the response cache keys image requests by it."""
    data_url: str
    """`data:image/<format>;base64,...` of `data`: what the gateway sends Triton."""


async def load_image(url: str, limits: ImageLimits, policy: FetchPolicy) -> LoadedImage:
    """The image at `url` checked against `limits` (and `policy` for `http(s)`); raises
    `ImageRefused` with the reason and a fixed message."""
    head = url[:8].lower()
    if head.startswith("data:"):
        return await asyncio.to_thread(_from_data_url, url, limits)
    if head.startswith(("http://", "https://")):
        data = await fetch_image_bytes(url, policy, limits.max_bytes)
        return await asyncio.to_thread(verified_image, data, limits)
    raise ImageRefused("url_scheme", "Image URLs must be http(s) or data: URLs.")


def verified_image(data: bytes, limits: ImageLimits) -> LoadedImage:
    """`data` opened and decoded under `limits` (blocking: call it off the event loop)."""
    image = open_image(data, limits)
    width, height = image.size
    image.close()
    fmt = sniff_format(data)
    assert fmt is not None  # open_image refuses anything without a known signature
    encoded = base64.b64encode(data).decode("ascii")
    return LoadedImage(
        data=data,
        format=fmt,
        width=width,
        height=height,
        sha256=hashlib.sha256(data).hexdigest(),
        data_url=f"data:{FORMAT_MEDIA_TYPES[fmt]};base64,{encoded}",
    )


def _from_data_url(url: str, limits: ImageLimits) -> LoadedImage:
    return verified_image(decode_data_url(url, limits), limits)

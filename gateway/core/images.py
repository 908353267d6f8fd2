"""The image parts of a chat request: found, checked against the model and this server's limits,
and loaded (fetched, decoded and verified) concurrently before the request goes to Triton.

Every refusal is a 400 whose `param` names the part (`messages[2].content[1].image_url`) and
whose message is fixed text: what a decoder or an upstream server said never reaches the client.
The guards themselves are `gateway.images` (shared with the Triton preprocessing model).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.core.catalogue import ServedModel
from gateway.core.metrics import count_image, count_image_refusal
from gateway.core.protocol import ChatCompletionRequest
from gateway.errors import InvalidRequest
from gateway.images.decode import ImageLimits, ImageRefused
from gateway.images.fetch import FetchPolicy
from gateway.images.load import LoadedImage, load_image
from gateway.settings import ImageSettings


@dataclass(frozen=True, slots=True)
class ImagePart:
    """One `image_url` content part, where it sits in the request."""

    message: int
    part: int
    url: str
    detail: str

    @property
    def param(self) -> str:
        """The part's path in OpenAI's error `param` form."""
        return f"messages[{self.message}].content[{self.part}].image_url"


class ImageLoader:
    """Checks and loads a request's images under one `images` settings section."""

    def __init__(self, settings: ImageSettings):
        self.settings = settings
        self.limits = ImageLimits(
            max_bytes=settings.max_bytes,
            max_pixels=settings.max_pixels,
            min_side=settings.min_side,
            formats=frozenset(settings.formats),
        )
        self.policy = FetchPolicy(
            allow_http=settings.allow_http,
            allow_private_addresses=settings.allow_private_addresses,
            allowed_domains=tuple(settings.allowed_domains),
            follow_redirects=settings.follow_redirects,
            max_redirects=settings.max_redirects,
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s,
            total_timeout_s=settings.total_timeout_s,
        )

    def check(
        self, request: ChatCompletionRequest, parts: Sequence[ImagePart], model: ServedModel
    ) -> None:
        """Refuse images the model cannot take, more images than allowed, and text that
        would pass for an image placeholder (it would shift every image after it)."""
        if parts and not model.vision:
            count_image_refusal("text_only_model")
            raise InvalidRequest(
                f"model '{model.id}' does not accept images.",
                param=parts[0].param,
                code="unsupported_value",
            )
        limit = self.settings.max_per_request
        if len(parts) > limit:
            count_image_refusal("too_many_images")
            raise InvalidRequest(
                f"A request may carry at most {limit} images on this server.",
                param=parts[limit].param,
                code="too_many_images",
            )
        if model.vision and model.image_token:
            _refuse_placeholder_text(request, model.image_token)

    async def load(self, parts: Sequence[ImagePart]) -> list[LoadedImage]:
        """Every part's image, loaded concurrently; the first refusal (in request order among
        those that failed by then) is the 400, and the other loads are cancelled."""
        if not parts:
            return []
        tasks = [asyncio.ensure_future(self._load(part)) for part in parts]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for part, task in zip(parts, tasks, strict=True):
                if task.done() and task.exception() is not None:
                    error = task.exception()
                    if isinstance(error, ImageRefused):
                        raise InvalidRequest(
                            error.message, param=part.param, code="invalid_image"
                        ) from None
                    raise error  # type: ignore[misc]  # a bug, not the client's: a 500
            return [task.result() for task in tasks]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _load(self, part: ImagePart) -> LoadedImage:
        try:
            image = await load_image(part.url, self.limits, self.policy)
        except ImageRefused as exc:
            count_image_refusal(exc.reason)
            raise
        count_image("data" if part.url[:5].lower() == "data:" else "http")
        return image


def image_parts(request: ChatCompletionRequest) -> list[ImagePart]:
    """The request's image parts in prompt order (message by message, part by part)."""
    parts = []
    for i, message in enumerate(request.messages):
        if not isinstance(message.content, list):
            continue
        for j, part in enumerate(message.content):
            if part.type == "image_url" and part.image_url is not None:
                detail = part.image_url.detail or "auto"
                parts.append(ImagePart(i, j, part.image_url.url, detail))
    return parts


def _refuse_placeholder_text(request: ChatCompletionRequest, token: str) -> None:
    for i, message in enumerate(request.messages):
        content = message.content
        if isinstance(content, str) and token in content:
            _placeholder_error(token, f"messages[{i}].content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if part.text is not None and token in part.text:
                    _placeholder_error(token, f"messages[{i}].content[{j}].text")


def _placeholder_error(token: str, param: str) -> None:
    raise InvalidRequest(
        f"Message text may not contain the image placeholder '{token}'; send images as "
        "'image_url' parts.",
        param=param,
    )

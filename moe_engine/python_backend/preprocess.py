"""The `preprocessing` model's work, NVIDIA's tensor names: the prompt tokenised with one table
id range per image (`image_prompt`), stop/bad words as words lists, and the images decoded,
checked and turned into the vision encoder's `PIXEL_VALUES`.

Images come as NVIDIA's inputs do: `IMAGE_BYTES` (`[N, H, W, 3]` decoded RGB), `IMAGE_URL`
(`data:` URLs only: nothing inside Triton fetches), or `IMAGE` (pixel values already
preprocessed, the ensemble's `image_input`), one source per request. Every refusal is an
InputError with a fixed message; a decoder's exception text never leaves (`gateway.images`'
guards, shared with the gateway).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from gateway.images.decode import ImageLimits, ImageRefused, decode_data_url, open_image
from moe_engine.python_backend.image_prompt import (
    expand_placeholders,
    image_key,
    table_extra_ids,
    vision_image_token,
)
from moe_engine.python_backend.serving import InputError, Inputs, scalar
from moe_engine.python_backend.text import (
    TokenizerInfo,
    encode,
    encode_stop_words,
    to_words_list,
)

IMAGE_SOURCES = ("IMAGE_BYTES", "IMAGE_URL", "IMAGE")
DEFAULT_MAX_IMAGES = 8


@dataclass(frozen=True)
class VisionPrompt:
    """What preprocessing needs of a vision checkpoint."""

    image_token_id: int
    features: int  # F: table rows per image
    vocab_size: int  # V: the LLM's vocabulary, where table ids start
    image_size: int  # S: pixel values are [3, S, S]
    preprocess: Callable[[Image.Image], np.ndarray]  # RGB image -> float32 [3, S, S]


def load_vision_prompt(model_dir: str | Path, tok: TokenizerInfo) -> VisionPrompt | None:
    """The checkpoint's VisionPrompt, None for a text-only checkpoint (torch loads only then)."""
    token = vision_image_token(model_dir)
    if token is None:
        return None
    from moe_engine.vision import VisionEncoder

    token_id = tok.tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"{model_dir}: the tokenizer has no image token {token!r}")
    encoder = VisionEncoder.from_dir(Path(model_dir))
    vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
    return VisionPrompt(
        image_token_id=token_id,
        features=encoder.config.num_image_tokens,
        vocab_size=int(vocab),
        image_size=encoder.config.image_size,
        preprocess=encoder.preprocess,
    )


class Preprocessor:
    """Turns one request's inputs into the preprocessing model's outputs."""

    def __init__(
        self,
        tok: TokenizerInfo,
        vision: VisionPrompt | None = None,
        *,
        limits: ImageLimits | None = None,
        max_images: int = DEFAULT_MAX_IMAGES,
    ) -> None:
        self.tok = tok
        self.vision = vision
        self.limits = limits or ImageLimits()
        self.max_images = max_images

    def run(self, inputs: Inputs) -> dict[str, np.ndarray]:
        """All outputs for `inputs`; InputError (a ValueError) names what is wrong."""
        query = scalar(inputs, "QUERY")
        if not query:
            raise InputError("text_input is empty")
        ids = encode(self.tok, query)
        pixels, keys = self.images(inputs)
        if self.vision is None:
            extra = [0] * len(ids)  # a text model: an image token, if any, is just a token
        else:
            v = self.vision
            ids = expand_placeholders(
                ids, v.image_token_id, num_images=len(keys), features=v.features, vocab=v.vocab_size
            )
            extra = table_extra_ids(ids, keys, features=v.features, vocab=v.vocab_size)
        end_id = scalar(inputs, "END_ID", self.tok.eos_ids[0])
        pad_id = scalar(inputs, "PAD_ID", self.tok.pad_id)
        return {
            "INPUT_ID": np.asarray([ids], dtype=np.int32),
            "REQUEST_INPUT_LEN": np.asarray([[len(ids)]], dtype=np.int32),
            "REQUEST_OUTPUT_LEN": np.asarray([[scalar(inputs, "REQUEST_OUTPUT_LEN")]], np.int32),
            "STOP_WORDS_IDS": self._words(inputs, "STOP_WORDS_DICT"),
            "BAD_WORDS_IDS": self._words(inputs, "BAD_WORDS_DICT"),
            "OUT_END_ID": np.asarray([[end_id]], dtype=np.int32),
            "OUT_PAD_ID": np.asarray([[pad_id]], dtype=np.int32),
            "PIXEL_VALUES": pixels[None],
            "OUT_PROMPT_TABLE_EXTRA_IDS": np.asarray([extra], dtype=np.uint64),
        }

    def images(self, inputs: Inputs) -> tuple[np.ndarray, list[int]]:
        """The request's images as FP16 pixel values `[N, 3, S, S]` and a key per image."""
        sources = [name for name in IMAGE_SOURCES if _present(inputs.get(name))]
        size = self.vision.image_size if self.vision is not None else 1
        if not sources:
            return np.zeros((0, 3, size, size), dtype=np.float16), []
        if self.vision is None:
            raise InputError("this model does not take images")
        if len(sources) > 1:
            raise InputError(f"send images in one of {', '.join(sources)}, not several")
        source = sources[0]
        items = _unbatch(inputs[source], 5 if source != "IMAGE_URL" else 2)
        if len(items) > self.max_images:
            raise InputError(f"at most {self.max_images} images per request, got {len(items)}")
        if source == "IMAGE":
            return self._pixel_values(items)
        pixels, keys = [], []
        for item in items:
            image, key = self._decoded(item) if source == "IMAGE_BYTES" else self._fetched(item)
            pixels.append(self.vision.preprocess(image))
            keys.append(key)
        return np.stack(pixels).astype(np.float16), keys

    def _decoded(self, array: np.ndarray) -> tuple[Image.Image, int]:
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise InputError("IMAGE_BYTES must be [N, H, W, 3] RGB bytes")
        height, width = array.shape[:2]
        limits = self.limits
        if min(height, width) < limits.min_side:
            raise InputError(f"The image must be at least {limits.min_side} pixels on each side.")
        if height * width > limits.max_pixels:
            raise InputError(f"The image has more than {limits.max_pixels} pixels.")
        return Image.fromarray(np.ascontiguousarray(array), "RGB"), image_key(array.tobytes())

    def _fetched(self, url: object) -> tuple[Image.Image, int]:
        text = url.decode("utf-8", "replace") if isinstance(url, bytes) else str(url)
        try:
            data = decode_data_url(text, self.limits)
            return open_image(data, self.limits), image_key(data)
        except ImageRefused as exc:
            raise InputError(exc.message) from None

    def _pixel_values(self, items: np.ndarray) -> tuple[np.ndarray, list[int]]:
        size = self.vision.image_size if self.vision is not None else 0
        if items.ndim != 4 or items.shape[1:] != (3, size, size):
            raise InputError(f"image_input must be [N, 3, {size}, {size}] pixel values")
        if not np.isfinite(items).all():
            raise InputError("image_input holds a value that is not finite")
        pixels = items.astype(np.float16)
        return pixels, [image_key(p.tobytes()) for p in pixels]

    def _words(self, inputs: Inputs, name: str) -> np.ndarray:
        raw = inputs.get(name)
        words = [w.decode("utf-8") for w in raw.reshape(-1)] if raw is not None else []
        return np.asarray([to_words_list(encode_stop_words(self.tok, words))], dtype=np.int32)


def only_requested(
    outputs: Mapping[str, np.ndarray], requested: list[str]
) -> dict[str, np.ndarray]:
    """The outputs a caller asked for (all when it named none)."""
    return {k: v for k, v in outputs.items() if not requested or k in requested}


def _present(array: np.ndarray | None) -> bool:
    return array is not None and array.size > 0


def _unbatch(array: np.ndarray, batched_ndim: int) -> np.ndarray:
    # Triton hands a model with max_batch_size > 0 its inputs with the batch dimension (1).
    if array.ndim == batched_ndim:
        if array.shape[0] != 1:
            raise InputError(f"one request per batch entry, got {array.shape[0]}")
        return array[0]
    return array.reshape(-1) if batched_ndim == 2 else array

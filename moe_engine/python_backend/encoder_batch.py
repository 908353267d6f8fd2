"""The `multimodal_encoders` model's work: pixel values in, TensorRT-LLM's prompt table out.

Triton's dynamic batcher hands one `execute` several requests, each with its own number of
images N (0 for a text-only request through the multimodal ensemble). Their images are encoded
in one call, then split back: request i gets `OUT_PROMPT_EMBEDDING_TABLE` `[N_i * F, hidden]`
(its images' features in order) and `OUT_PROMPT_VOCAB_SIZE` `N_i * F`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from moe_engine.python_backend.serving import InputError, Inputs

# NVIDIA's names: `pixel_values` from preprocessing, `IMAGE` from a client that preprocessed.
PIXEL_INPUTS = ("pixel_values", "IMAGE")


@dataclass(frozen=True)
class EncodedBatch:
    """One `execute`'s results: per request its outputs or the InputError it gets."""

    results: list[dict[str, np.ndarray] | InputError]
    images: int  # images encoded in the one call


class EncoderBatcher:
    """Encodes the images of many requests at once with `encode` (`[N, 3, S, S]` float ->
    `[N, F, hidden]`)."""

    def __init__(
        self,
        encode: Callable[[torch.Tensor], torch.Tensor],
        *,
        image_size: int,
        features: int,
        hidden_size: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self._encode = encode
        self.image_size = image_size
        self.features = features
        self.hidden_size = hidden_size
        self.dtype = dtype

    def run(self, requests: Sequence[Inputs]) -> EncodedBatch:
        parsed: list[np.ndarray | InputError] = []
        for inputs in requests:
            try:
                parsed.append(self._pixels(inputs))
            except InputError as exc:
                parsed.append(exc)
        good = [p for p in parsed if isinstance(p, np.ndarray)]
        total = sum(p.shape[0] for p in good)
        features = np.zeros((0, self.features, self.hidden_size), dtype=np.float16)
        if total:
            pixels = torch.from_numpy(np.concatenate(good)).to(self.dtype)
            with torch.inference_mode():
                out = self._encode(pixels)
            expected = (total, self.features, self.hidden_size)
            if tuple(out.shape) != expected:
                raise RuntimeError(f"the encoder returned {list(out.shape)}, not {list(expected)}")
            features = out.to(torch.float16).numpy()
        results: list[dict[str, np.ndarray] | InputError] = []
        start = 0
        for p in parsed:
            if isinstance(p, InputError):
                results.append(p)
                continue
            n = p.shape[0]
            table = features[start : start + n].reshape(n * self.features, self.hidden_size)
            start += n
            results.append(
                {
                    "OUT_PROMPT_EMBEDDING_TABLE": table[None],
                    "OUT_PROMPT_VOCAB_SIZE": np.asarray([[table.shape[0]]], dtype=np.int32),
                }
            )
        return EncodedBatch(results, total)

    def _pixels(self, inputs: Inputs) -> np.ndarray:
        given = [inputs[n] for n in PIXEL_INPUTS if inputs.get(n) is not None]
        size = self.image_size
        if not given:
            return np.zeros((0, 3, size, size), dtype=np.float16)
        if len(given) > 1:
            raise InputError("send pixel_values or IMAGE, not both")
        array = given[0]
        if array.ndim == 5 and array.shape[0] == 1:
            array = array[0]  # the batch dimension
        if array.size == 0:
            return np.zeros((0, 3, size, size), dtype=np.float16)
        if array.ndim != 4 or array.shape[1:] != (3, size, size):
            raise InputError(
                f"pixel values must be [N, 3, {size}, {size}], got {list(array.shape)}"
            )
        if not np.isfinite(array).all():
            raise InputError("pixel values hold a value that is not finite")
        return array

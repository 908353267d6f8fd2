"""The BLS's image route: a request carrying images goes through `preprocessing` (placeholder ids,
pixel values) and `multimodal_encoders` (the prompt table) before `tensorrt_llm`; a text-only
request never touches either. NVIDIA's input names: `image_input` (pixel values),
`image_bytes_input` (`[N, H, W, 3]` RGB), `image_url_input` (`data:` URLs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import numpy as np

from moe_engine.python_backend.image_prompt import check_placeholders
from moe_engine.python_backend.responses import ErrorKind
from moe_engine.python_backend.serving import InputError

if TYPE_CHECKING:  # bls_requests imports this module
    from moe_engine.python_backend.bls_requests import Generation

# BLS input -> preprocessing input; both models batch, so tensors pass with their batch dim.
IMAGE_INPUTS = {
    "image_input": "IMAGE",
    "image_bytes_input": "IMAGE_BYTES",
    "image_url_input": "IMAGE_URL",
}


# What preprocessing and the encoder answer when they fail on their side. Python-backend BLS calls
# see every error as INTERNAL (Triton 2.51 drops the code), so these tell the BLS "ours"; any
# other error text of those models is a refusal of the request (their own fixed texts, or
# Triton's shape checks) and goes to the client as INVALID_ARG.
PREPROCESSING_FAILED = "preprocessing failed"
ENCODER_FAILED = "the image encoder failed"


def step_error(model: str, message: str) -> StepFailed:
    """The StepFailed for an error response of a model the BLS called."""
    if message in (PREPROCESSING_FAILED, ENCODER_FAILED):
        return StepFailed(f"{model}: {message}", "internal")
    return StepFailed(message, "invalid")


class StepFailed(Exception):
    """A model the BLS called answered with an error; `message` is fit for the client."""

    def __init__(self, message: str, kind: ErrorKind) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


class ImageModels(Protocol):
    """`preprocessing` and `multimodal_encoders` as the BLS calls them (StepFailed on error)."""

    async def preprocess(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]: ...

    async def encode(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]: ...


def has_images(inputs: Mapping[str, np.ndarray]) -> bool:
    return any(inputs.get(name) is not None and inputs[name].size > 0 for name in IMAGE_INPUTS)


def check_text_only(generation: Generation, image_token_id: int | None) -> None:
    """A text-only request to a vision model must not hold an image token: it would stand for
    an image nobody sent."""
    check_placeholders(generation.inputs["input_ids"].reshape(-1).tolist(), image_token_id, 0)


async def with_images(
    generation: Generation,
    inputs: Mapping[str, np.ndarray],
    models: ImageModels | None,
) -> Generation:
    """`generation` with the prompt ids, prompt table and extra ids of its images."""
    if models is None:
        raise InputError("this model does not take images")
    request = {
        "QUERY": inputs["text_input"].reshape(1, 1),
        "REQUEST_OUTPUT_LEN": generation.inputs["request_output_len"],
    }
    for name, target in IMAGE_INPUTS.items():
        if inputs.get(name) is not None and inputs[name].size > 0:
            request[target] = inputs[name]
    pre = await models.preprocess(request)
    encoded = await models.encode({"pixel_values": pre["PIXEL_VALUES"]})
    ids = pre["INPUT_ID"].reshape(1, -1).astype(np.int32)
    tensors = {
        **generation.inputs,
        "input_ids": ids,
        "input_lengths": np.asarray([[ids.shape[1]]], dtype=np.int32),
        "prompt_embedding_table": encoded["OUT_PROMPT_EMBEDDING_TABLE"],
        "prompt_vocab_size": encoded["OUT_PROMPT_VOCAB_SIZE"].reshape(1, 1),
        "prompt_table_extra_ids": pre["OUT_PROMPT_TABLE_EXTRA_IDS"].reshape(1, -1),
    }
    return dataclasses.replace(generation, inputs=tensors, prompt_tokens=int(ids.shape[1]))

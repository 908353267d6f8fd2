"""The image route without Triton: placeholder ids the TensorRT-LLM way, the encoder's batching
of requests with different image counts, and the BLS sending only image requests through
preprocessing and the encoder."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np
import pytest
import torch

from moe_engine.python_backend.bls_images import PREPROCESSING_FAILED, StepFailed, step_error
from moe_engine.python_backend.bls_requests import BlsRequests
from moe_engine.python_backend.encoder_batch import EncoderBatcher
from moe_engine.python_backend.image_prompt import (
    expand_placeholders,
    image_key,
    table_extra_ids,
)
from moe_engine.python_backend.serving import InputError
from moe_engine.python_backend.text import TokenizerInfo
from tests.support import byte_level_tokenizer
from tests.unit.test_bls_requests import EngineModel, text_request, until
from tests.unit.triton_sender import KIT, RecordingSender, value

IMG = 9  # the image token's id in the placeholder tests
V, F = 100, 3

# --- placeholder ids ---------------------------------------------------------------------------


def test_each_image_token_becomes_its_images_range_of_table_ids() -> None:
    ids = expand_placeholders([1, IMG, 2, IMG, 3], IMG, num_images=2, features=F, vocab=V)
    assert ids == [1, 100, 101, 102, 2, 103, 104, 105, 3]


@pytest.mark.parametrize(
    ("prompt", "images", "message"),
    [
        ([1, IMG, IMG], 1, "the prompt has 2 image placeholders but 1 image was sent"),
        ([1, IMG], 2, "the prompt has 1 image placeholder but 2 images were sent"),
        ([1, IMG], 0, "the prompt has 1 image placeholder but 0 images were sent"),
    ],
)
def test_placeholders_and_images_must_pair_up(prompt: list[int], images: int, message: str) -> None:
    with pytest.raises(InputError, match=message):
        expand_placeholders(prompt, IMG, num_images=images, features=F, vocab=V)


def test_extra_ids_key_each_images_rows_and_leave_text_zero() -> None:
    a, b = image_key(b"image a"), image_key(b"image b")
    ids = expand_placeholders([1, IMG, IMG], IMG, num_images=2, features=F, vocab=V)
    assert table_extra_ids(ids, [a, b], features=F, vocab=V) == [0, a, a, a, b, b, b]
    assert 0 < a < 2**63 and a != b and image_key(b"image a") == a


# --- the encoder's batching ---------------------------------------------------------------------

S, HIDDEN = 4, 5


class CountingEncoder:
    """Each image's F rows are its mean pixel plus the row index: easy to check where they go."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls.append(pixels.shape[0])
        means = pixels.mean(dim=(1, 2, 3))
        rows = means[:, None, None] + torch.arange(F, dtype=torch.float32)[None, :, None]
        return rows.expand(-1, -1, HIDDEN)


def pixels(*values: float) -> np.ndarray:
    return np.stack([np.full((3, S, S), v, dtype=np.float16) for v in values])[None]


def test_requests_with_different_image_counts_are_encoded_in_one_call() -> None:
    encoder = CountingEncoder()
    batcher = EncoderBatcher(encoder, image_size=S, features=F, hidden_size=HIDDEN)
    batch = batcher.run(
        [
            {"pixel_values": pixels(1.0, 2.0)},
            {"pixel_values": np.zeros((1, 0, 3, S, S), dtype=np.float16)},  # text only
            {"IMAGE": pixels(5.0)},
        ]
    )
    assert encoder.calls == [3] and batch.images == 3
    first, empty, third = batch.results
    assert first["OUT_PROMPT_EMBEDDING_TABLE"].shape == (1, 2 * F, HIDDEN)
    assert first["OUT_PROMPT_EMBEDDING_TABLE"][0, :, 0].tolist() == [1, 2, 3, 2, 3, 4]
    assert first["OUT_PROMPT_VOCAB_SIZE"].tolist() == [[2 * F]]
    assert empty["OUT_PROMPT_EMBEDDING_TABLE"].shape == (1, 0, HIDDEN)
    assert empty["OUT_PROMPT_VOCAB_SIZE"].tolist() == [[0]]
    assert third["OUT_PROMPT_EMBEDDING_TABLE"][0, :, 0].tolist() == [5, 6, 7]
    assert first["OUT_PROMPT_EMBEDDING_TABLE"].dtype == np.float16


def test_a_malformed_request_is_refused_alone_and_text_only_batches_encode_nothing() -> None:
    encoder = CountingEncoder()
    batcher = EncoderBatcher(encoder, image_size=S, features=F, hidden_size=HIDDEN)
    bad = np.zeros((1, 1, 3, S + 1, S), dtype=np.float16)
    batch = batcher.run([{"pixel_values": bad}, {"pixel_values": pixels(1.0)}])
    assert isinstance(batch.results[0], InputError) and "[N, 3, 4, 4]" in str(batch.results[0])
    assert batch.results[1]["OUT_PROMPT_VOCAB_SIZE"].tolist() == [[F]]
    assert batcher.run([{}]).results[0]["OUT_PROMPT_VOCAB_SIZE"].tolist() == [[0]]
    assert encoder.calls == [1]


# --- the BLS route -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok() -> TokenizerInfo:
    tokenizer = byte_level_tokenizer(["hello world, what is in this image?"] * 10, 300)
    tokenizer.add_special_tokens(["<|image|>"])
    return TokenizerInfo(tokenizer, (0,), 0)


class ImageModels:
    """`preprocessing` and the encoder as the BLS calls them: they record what they got."""

    def __init__(self, *, refuse: StepFailed | None = None) -> None:
        self.preprocessed: list[dict[str, np.ndarray]] = []
        self.encoded: list[dict[str, np.ndarray]] = []
        self.refuse = refuse

    async def preprocess(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        self.preprocessed.append(inputs)
        if self.refuse is not None:
            raise self.refuse
        return {
            "INPUT_ID": np.asarray([[1, 300, 301, 2]], dtype=np.int32),
            "PIXEL_VALUES": np.zeros((1, 1, 3, S, S), dtype=np.float16),
            "OUT_PROMPT_TABLE_EXTRA_IDS": np.asarray([[0, 7, 7, 0]], dtype=np.uint64),
        }

    async def encode(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        self.encoded.append(inputs)
        return {
            "OUT_PROMPT_EMBEDDING_TABLE": np.ones((1, 2, 8), dtype=np.float16),
            "OUT_PROMPT_VOCAB_SIZE": np.asarray([[2]], dtype=np.int32),
        }


def image_request(text: str = "<|image|>hello") -> dict[str, np.ndarray]:
    urls = np.asarray([[b"data:image/png;base64,AAAA"]], dtype=np.object_)
    return text_request(text, image_url_input=urls)


async def test_an_image_request_reaches_the_engine_with_its_table_and_counts_image_tokens(
    tok: TokenizerInfo,
) -> None:
    engine, images = EngineModel(), ImageModels()
    service = BlsRequests(tok, engine, KIT, images=images, cancel_poll_interval_s=0.001)
    sender = RecordingSender()
    task = asyncio.create_task(service.handle("a", image_request(), sender))
    await until(lambda: engine.generations)
    (engine_id,) = engine.generations
    engine.end(engine_id)
    await task
    (pre,) = images.preprocessed
    assert pre["QUERY"].reshape(-1).tolist() == [b"<|image|>hello"]
    assert pre["IMAGE_URL"].tolist() == [[b"data:image/png;base64,AAAA"]]
    assert images.encoded[0]["pixel_values"].shape == (1, 1, 3, S, S)
    sent = engine.generations[engine_id].inputs
    assert sent["input_ids"].tolist() == [[1, 300, 301, 2]]
    assert sent["input_lengths"].tolist() == [[4]]
    assert sent["prompt_embedding_table"].shape == (1, 2, 8)
    assert sent["prompt_vocab_size"].tolist() == [[2]]
    assert sent["prompt_table_extra_ids"].tolist() == [[0, 7, 7, 0]]
    assert value(sender.final, "num_input_tokens") == 4


async def test_a_text_request_never_calls_preprocessing_or_the_encoder(tok: TokenizerInfo) -> None:
    engine, images = EngineModel(), ImageModels()
    service = BlsRequests(tok, engine, KIT, images=images, cancel_poll_interval_s=0.001)
    task = asyncio.create_task(service.handle("a", text_request(), RecordingSender()))
    await until(lambda: engine.generations)
    engine.end(next(iter(engine.generations)))
    await task
    assert images.preprocessed == [] and images.encoded == []
    assert "prompt_embedding_table" not in next(iter(engine.generations.values())).inputs


@pytest.mark.parametrize(
    ("images", "inputs", "message"),
    [
        (None, image_request(), "this model does not take images"),
        (
            ImageModels(refuse=StepFailed("the image is corrupt", "invalid")),
            image_request(),
            "the image is corrupt",
        ),
        (ImageModels(), text_request("<|image|> hello"), "1 image placeholder but 0 images"),
    ],
)
async def test_refused_images_are_invalid_argument_finals_before_the_engine(
    tok: TokenizerInfo, images: ImageModels | None, inputs: dict, message: str
) -> None:
    engine = EngineModel()
    image_token = tok.tokenizer.token_to_id("<|image|>")
    service = BlsRequests(tok, engine, KIT, images=images, image_token_id=image_token)
    sender = RecordingSender()
    await service.handle("a", inputs, sender)
    kind, code, text = sender.final
    assert (kind, code) == ("error", "invalid") and message in text
    assert engine.generations == {}


def test_a_called_models_refusal_is_invalid_and_its_own_failure_internal() -> None:
    # BLS calls see every error as INTERNAL: the image models' failure texts tell them apart.
    refusal = step_error("preprocessing", "The image could not be decoded.")
    assert (refusal.kind, refusal.message) == ("invalid", "The image could not be decoded.")
    failure = step_error("preprocessing", PREPROCESSING_FAILED)
    assert (failure.kind, failure.message) == ("internal", "preprocessing: preprocessing failed")

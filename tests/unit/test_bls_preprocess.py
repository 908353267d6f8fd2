"""The preprocessing model's work without Triton: images from each of NVIDIA's inputs become
pixel values and one table id range each, and every bad image is a fixed-text InputError."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from moe_engine.python_backend.image_prompt import image_key
from moe_engine.python_backend.preprocess import Preprocessor, VisionPrompt
from moe_engine.python_backend.serving import InputError
from moe_engine.python_backend.text import TokenizerInfo
from tests.support import byte_level_tokenizer

V, F, S = 300, 4, 8


@pytest.fixture(scope="module")
def tok() -> TokenizerInfo:
    tokenizer = byte_level_tokenizer(["what is in this image? a red circle."] * 10, V)
    tokenizer.add_special_tokens(["<|image|>"])
    return TokenizerInfo(tokenizer, (0,), 0)


def channel_means(image: Image.Image) -> np.ndarray:
    """A stand-in for the vision encoder's preprocessing: each channel's mean, S x S."""
    means = np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=(0, 1)) / 255
    return np.broadcast_to(means[:, None, None], (3, S, S)).astype(np.float32)


@pytest.fixture(scope="module")
def pre(tok: TokenizerInfo) -> Preprocessor:
    image_token = tok.tokenizer.token_to_id("<|image|>")
    vision = VisionPrompt(image_token, F, V, S, channel_means)
    return Preprocessor(tok, vision, max_images=2)


def png(colour: tuple[int, int, int], size: tuple[int, int] = (16, 12)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def data_url(data: bytes, media: str = "image/png") -> bytes:
    return f"data:{media};base64,{base64.b64encode(data).decode()}".encode()


def request(text: str, **images: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "QUERY": np.asarray([[text.encode()]], dtype=np.object_),
        "REQUEST_OUTPUT_LEN": np.asarray([[8]], dtype=np.int32),
        **images,
    }


def urls(*items: bytes) -> np.ndarray:
    return np.asarray([list(items)], dtype=np.object_)


def test_two_data_urls_give_two_id_ranges_pixel_values_and_keys(pre: Preprocessor) -> None:
    red, blue = png((255, 0, 0)), png((0, 0, 255))
    out = pre.run(
        request("<|image|> and <|image|>?", IMAGE_URL=urls(data_url(red), data_url(blue)))
    )
    ids = out["INPUT_ID"].reshape(-1).tolist()
    table_ids = [t for t in ids if t >= V]
    assert table_ids == list(range(V, V + 2 * F))
    assert out["REQUEST_INPUT_LEN"].tolist() == [[len(ids)]]
    pixels = out["PIXEL_VALUES"]
    assert pixels.shape == (1, 2, 3, S, S) and pixels.dtype == np.float16
    assert pixels[0, 0, :, 0, 0].tolist() == [1, 0, 0] and pixels[0, 1, :, 0, 0].tolist() == [
        0,
        0,
        1,
    ]
    extra = out["OUT_PROMPT_TABLE_EXTRA_IDS"].reshape(-1).tolist()
    assert extra.count(image_key(red)) == F and extra.count(image_key(blue)) == F
    assert [e for t, e in zip(ids, extra, strict=True) if t < V] == [0] * (len(ids) - 2 * F)


def test_image_bytes_are_nvidias_decoded_rgb_arrays(pre: Preprocessor) -> None:
    arrays = np.zeros((1, 1, 10, 12, 3), dtype=np.uint8)
    arrays[..., 1] = 255
    out = pre.run(request("<|image|> what is it?", IMAGE_BYTES=arrays))
    assert out["PIXEL_VALUES"][0, 0, :, 0, 0].tolist() == [0, 1, 0]
    assert sum(t >= V for t in out["INPUT_ID"].reshape(-1)) == F


def test_preprocessed_pixel_values_pass_through(pre: Preprocessor) -> None:
    pixels = np.full((1, 1, 3, S, S), 0.5, dtype=np.float16)
    out = pre.run(request("<|image|>", IMAGE=pixels))
    assert np.array_equal(out["PIXEL_VALUES"], pixels)


def test_a_text_request_has_no_pixel_values_and_zero_extra_ids(pre: Preprocessor) -> None:
    out = pre.run(request("what is in this image?"))
    assert out["PIXEL_VALUES"].shape == (1, 0, 3, S, S)
    assert set(out["OUT_PROMPT_TABLE_EXTRA_IDS"].reshape(-1).tolist()) == {0}
    assert all(t < V for t in out["INPUT_ID"].reshape(-1))


def url_of(data: bytes) -> np.ndarray:
    return urls(data_url(data))


GREY = png((9, 9, 9))
IMG = "<|image|>"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (request(f"{IMG} {IMG}", IMAGE_URL=url_of(GREY)), "2 image placeholders but 1 image"),
        (request("no placeholder", IMAGE_URL=url_of(GREY)), "0 image placeholders but 1 image"),
        (request(IMG, IMAGE_URL=urls(b"http://127.0.0.1/cat.png")), "must be a data: URL"),
        (request(IMG, IMAGE_URL=url_of(b"\x89PNG\r\n\x1a\n" + bytes(40))), "could not be decoded"),
        (request(IMG, IMAGE_URL=url_of(np.random.default_rng(0).bytes(200))), "not supported"),
        (request(IMG, IMAGE_URL=url_of(png((1, 2, 3), (1, 1)))), "at least 2 pixels"),
        (request(IMG * 3, IMAGE_URL=urls(*[data_url(GREY)] * 3)), "at most 2 images"),
        (request(IMG, IMAGE_BYTES=np.zeros((1, 1, 4, 4, 4), np.uint8)), "[N, H, W, 3]"),
        (request(IMG, IMAGE_BYTES=np.zeros((1, 1, 1, 4, 3), np.uint8)), "at least 2 pixels"),
        (request(IMG, IMAGE=np.zeros((1, 1, 3, 5, 5), np.float16)), "[N, 3, 8, 8]"),
        (
            request(IMG * 2, IMAGE=np.zeros((1, 1, 3, S, S), np.float16), IMAGE_URL=url_of(GREY)),
            "not several",
        ),
    ],
)
def test_bad_images_are_input_errors_with_fixed_texts(
    pre: Preprocessor, inputs: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(InputError) as raised:
        pre.run(inputs)
    text = str(raised.value)
    assert message in text
    assert "Traceback" not in text and "PIL" not in text and "0x" not in text


def test_a_text_model_refuses_images_and_keeps_its_tokens(tok: TokenizerInfo) -> None:
    pre = Preprocessor(tok)
    with pytest.raises(InputError, match="this model does not take images"):
        pre.run(request("<|image|>", IMAGE_URL=urls(data_url(png((1, 2, 3))))))
    out = pre.run(request("<|image|> is only text here"))
    assert tok.tokenizer.token_to_id("<|image|>") in out["INPUT_ID"].reshape(-1).tolist()

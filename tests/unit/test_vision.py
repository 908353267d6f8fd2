"""`moe_engine.vision`: preprocessing, encoding and the `vision/` checkpoint folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moe_engine.vision import (
    IMAGE_TOKEN,
    VisionConfig,
    VisionEncoder,
    is_vision_checkpoint,
    save_random_vision,
    tiny_vision_config,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vlm")
    save_random_vision(folder, text_hidden_size=256)
    return folder


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> VisionEncoder:
    return VisionEncoder.from_dir(model_dir)


def test_a_folder_with_vision_config_is_a_vision_checkpoint(model_dir: Path, tmp_path: Path):
    assert is_vision_checkpoint(model_dir)
    assert not is_vision_checkpoint(tmp_path)


def test_config_json_has_the_fixed_layout(model_dir: Path):
    raw = json.loads((model_dir / "vision" / "config.json").read_text())

    assert raw["vision_config"]["model_type"] == "resnet"
    assert raw["image_token"] == IMAGE_TOKEN
    assert raw["num_image_tokens"] == 16
    assert raw["image_size"] == 64
    assert raw["text_hidden_size"] == 256
    assert len(raw["image_mean"]) == len(raw["image_std"]) == 3


def test_preprocess_resizes_any_image_to_float32_chw(encoder: VisionEncoder):
    for size in [(64, 64), (300, 120), (17, 45)]:
        pixels = encoder.preprocess(Image.new("RGB", size, (10, 20, 30)))

        assert pixels.shape == (3, 64, 64)
        assert pixels.dtype == np.float32


def test_preprocess_normalises_with_the_configured_mean_and_std(encoder: VisionEncoder):
    pixels = encoder.preprocess(Image.new("RGB", (64, 64), (255, 0, 128)))

    np.testing.assert_allclose(pixels[:, 5, 5], [1.0, -1.0, 128 / 127.5 - 1], atol=1e-6)


def test_preprocess_converts_grey_and_alpha_images_to_rgb(encoder: VisionEncoder):
    assert encoder.preprocess(Image.new("L", (32, 32), 255)).shape == (3, 64, 64)
    assert encoder.preprocess(Image.new("RGBA", (32, 32), (1, 2, 3, 4))).shape == (3, 64, 64)


def test_encode_gives_f_rows_of_the_text_width_per_image(encoder: VisionEncoder):
    pixels = torch.randn(3, 3, 64, 64)

    out = encoder.encode(pixels)

    assert out.shape == (3, 16, 256)
    assert out.dtype == torch.float32
    assert not torch.equal(out[0], out[1])


def test_encode_of_zero_images_is_an_empty_table(encoder: VisionEncoder):
    assert encoder.encode(torch.zeros(0, 3, 64, 64)).shape == (0, 16, 256)


def test_encode_refuses_pixels_of_the_wrong_size(encoder: VisionEncoder):
    with pytest.raises(ValueError, match="pixel_values must be"):
        encoder.encode(torch.zeros(1, 3, 32, 32))


def test_images_in_a_batch_are_encoded_independently(encoder: VisionEncoder):
    pixels = torch.randn(2, 3, 64, 64)

    together = encoder.encode(pixels)
    alone = encoder.encode(pixels[1:])

    torch.testing.assert_close(together[1:], alone, rtol=1e-4, atol=1e-5)


def test_a_siglip_tower_gives_the_same_token_count(tmp_path: Path):
    save_random_vision(tmp_path, tower="siglip")
    encoder = VisionEncoder.from_dir(tmp_path)

    assert encoder.config.vision_config["model_type"] == "siglip_vision_model"
    assert encoder.encode(torch.randn(2, 3, 64, 64)).shape == (2, 16, 256)


def test_random_checkpoint_round_trips_bit_exactly(tmp_path: Path):
    save_random_vision(tmp_path, seed=3)
    first = VisionEncoder.from_dir(tmp_path)
    save_random_vision(tmp_path / "again", seed=3)
    second = VisionEncoder.from_dir(tmp_path / "again")
    pixels = torch.randn(1, 3, 64, 64)

    torch.testing.assert_close(first.encode(pixels), second.encode(pixels), rtol=0, atol=0)
    assert (tmp_path / "vision" / "model.safetensors").read_bytes() == (
        tmp_path / "again" / "vision" / "model.safetensors"
    ).read_bytes()


def test_float16_encoder_returns_float16(model_dir: Path):
    encoder = VisionEncoder.from_dir(model_dir, dtype=torch.float16)

    assert encoder.encode(torch.randn(1, 3, 64, 64)).dtype == torch.float16


def test_config_whose_token_count_contradicts_the_tower_is_refused():
    raw = tiny_vision_config().to_dict()
    raw["num_image_tokens"] = 15

    with pytest.raises(ValueError, match="num_image_tokens"):
        VisionConfig.from_dict(raw)


def test_a_drawn_shape_is_the_same_picture_for_the_same_seed():
    from moe_build.shapes import draw_shape

    first = draw_shape("red", "circle", size=(96, 80), seed=7)
    again = draw_shape("red", "circle", size=(96, 80), seed=7)
    other = draw_shape("red", "circle", size=(96, 80), seed=8)

    assert first.size == (96, 80) and first.mode == "RGB"
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


def test_random_images_cover_every_colour_and_shape_deterministically():
    from moe_build.shapes import COLOURS, SHAPES, random_images

    images = random_images(36, seed=1)
    again = random_images(36, seed=1)

    pairs = [(d.colour, d.shape) for d in images]
    assert sorted(set(pairs)) == sorted((c, s) for c in COLOURS for s in SHAPES)
    assert all(pairs.count(pair) == 2 for pair in set(pairs))
    assert pairs == [(d.colour, d.shape) for d in again]
    assert [d.image.tobytes() for d in images] == [d.image.tobytes() for d in again]
    assert len({d.image.size for d in images}) > 10  # images of many sizes


def test_a_drawn_shape_covers_a_quarter_to_two_thirds_of_the_shorter_side():
    from moe_build.shapes import random_images

    for drawn in random_images(18, seed=2):
        rows, cols = np.nonzero(drawn.coverage > 0.5)
        extent = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
        assert 2 <= extent <= 13, (drawn.colour, drawn.shape, extent)  # of a 16-cell grid


def test_chat_template_renders_image_parts_as_the_image_token():
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from moe_build.tokenizer import CHAT_TEMPLATE

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    parts = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "What is in this image?"},
        {"type": "image"},
    ]

    prompt = env.from_string(CHAT_TEMPLATE).render(
        messages=[{"role": "user", "content": parts}], add_generation_prompt=True
    )

    assert prompt == (
        "<|im_start|>user\n<|image|>\nWhat is in this image?\n<|image|><|im_end|>\n"
        "<|im_start|>assistant\n"
    )

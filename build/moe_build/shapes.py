"""Drawn training images for the tiny vision-language model: one coloured shape per picture."""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

SHAPES = ("circle", "square", "triangle")
# Hues far enough apart that JPEG, noise and the jitter below never make one look like another.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "green": (35, 165, 60),
    "blue": (40, 75, 225),
    "yellow": (245, 220, 40),
    "orange": (250, 135, 15),
    "purple": (135, 45, 175),
}
COVERAGE_GRID = 16
_JITTER = 18  # per channel, so the model learns a colour name, not one exact RGB triple
_MIN_SIDE, _MAX_SIDE = 40, 320


@dataclass(frozen=True)
class DrawnImage:
    """A picture and what is in it."""

    image: Image.Image
    colour: str
    shape: str
    # The share of each cell of a COVERAGE_GRID x COVERAGE_GRID grid over the (squashed)
    # picture that the shape covers: dense targets for the vision warm-up.
    coverage: np.ndarray | None = None

    @property
    def label(self) -> int:
        """One class per (colour, shape) pair: colour index * 3 + shape index."""
        return list(COLOURS).index(self.colour) * len(SHAPES) + SHAPES.index(self.shape)


def draw_shape(
    colour: str, shape: str, *, size: tuple[int, int] = (96, 96), seed: int = 0
) -> Image.Image:
    """One `shape` in `colour` on an image of `size` (width, height); placement, scale,
    background and noise come from `seed`, so the same call always draws the same picture."""
    if colour not in COLOURS or shape not in SHAPES:
        raise ValueError(f"unknown colour or shape {colour!r} {shape!r}")
    return _draw(random.Random(seed), colour, shape, size)[0]


def draw_plain(
    colour: str, shape: str, *, size: tuple[int, int] = (96, 96), seed: int = 0
) -> Image.Image:
    """The plainest picture of the training distribution: the shape near the middle at about half
    the shorter side, upright, its exact colour, on a flat grey that `seed` picks. Tests and
    examples use it, so that a build on another CPU (other weights from the same seed) cannot flip
    an answer the way a noisy picture near a class boundary can."""
    if colour not in COLOURS or shape not in SHAPES:
        raise ValueError(f"unknown colour or shape {colour!r} {shape!r}")
    width, height = size
    grey = (200, 230, 120, 40)[seed % 4]
    image = Image.new("RGB", size, (grey,) * 3)
    half = min(width, height) * 0.27
    cx, cy = width / 2 + (seed % 3 - 1) * half / 3, height / 2
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=COLOURS[colour])
    elif shape == "square":
        r = half * 0.9
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=COLOURS[colour])
    else:
        corners = [(cx, cy - half), (cx + half, cy + half * 0.8), (cx - half, cy + half * 0.8)]
        draw.polygon(corners, fill=COLOURS[colour])
    return image


def random_image(
    rng: random.Random, colour: str | None = None, shape: str | None = None
) -> DrawnImage:
    """A picture of `colour` and `shape` (random when None) in a random size and style."""
    colour = colour or rng.choice(list(COLOURS))
    shape = shape or rng.choice(SHAPES)
    side = rng.randint(_MIN_SIDE, _MAX_SIDE)
    size = (side, max(_MIN_SIDE // 2, round(side * rng.uniform(0.7, 1.4))))
    image, mask = _draw(rng, colour, shape, size)
    if rng.random() < 0.2:  # clients send JPEGs too: learn through their artefacts
        image = _jpeg(image, rng.randint(50, 95))
    grid = mask.resize((COVERAGE_GRID, COVERAGE_GRID), Image.Resampling.BOX)
    coverage = np.asarray(grid, dtype=np.float32) / 255.0
    return DrawnImage(image=image, colour=colour, shape=shape, coverage=coverage)


def random_images(count: int, seed: int, *, progress: bool = False) -> list[DrawnImage]:
    """`count` random pictures from `seed`, the 18 classes in equal shares, shuffled."""
    rng = random.Random(seed)
    classes = [(c, s) for c in COLOURS for s in SHAPES]
    bar = tqdm(range(count), desc="drawing", unit="image", disable=not progress)
    out = [random_image(rng, *classes[i % len(classes)]) for i in bar]
    rng.shuffle(out)
    return out


def _draw(
    rng: random.Random, colour: str, shape: str, size: tuple[int, int]
) -> tuple[Image.Image, Image.Image]:
    """The picture and a mask of the shape (255 inside)."""
    width, height = size
    image = _background(rng, width, height)
    mask = Image.new("L", size, 0)
    short = min(width, height)
    extent = rng.uniform(0.25, 2 / 3) * short  # the shape's width across, of the shorter side
    half = extent / 2
    cx = rng.uniform(half, width - half)
    cy = rng.uniform(half, height - half)
    fill = tuple(min(255, max(0, v + rng.randint(-_JITTER, _JITTER))) for v in COLOURS[colour])
    if shape == "circle":
        box = (cx - half, cy - half, cx + half, cy + half)
        for target, value in ((image, fill), (mask, 255)):
            ImageDraw.Draw(target).ellipse(box, fill=value)
    else:
        make = _square if shape == "square" else _triangle
        points = make(
            cx, cy, half, rng.uniform(-12, 12) if shape == "square" else rng.uniform(-25, 25)
        )
        for target, value in ((image, fill), (mask, 255)):
            ImageDraw.Draw(target).polygon(points, fill=value)
    return image, mask


def _background(rng: random.Random, width: int, height: int) -> Image.Image:
    # Grey levels only (plain, or noise around a grey), so the shape is the only colour there.
    level = rng.choice((rng.randint(0, 60), rng.randint(100, 170), rng.randint(200, 255)))
    if rng.random() < 0.5:
        return Image.new("RGB", (width, height), (level,) * 3)
    noise = np.random.default_rng(rng.getrandbits(32))
    spread = rng.uniform(10, 45)
    grey = noise.normal(level, spread, size=(height, width, 1))
    tint = noise.normal(0, spread / 4, size=(height, width, 3))  # a little colour speckle
    pixels = np.clip(grey + tint, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _square(cx: float, cy: float, half: float, degrees: float) -> list[tuple[float, float]]:
    # A rotated square whose corners stay inside the circle of radius `half`.
    r = half * 0.95
    return _polygon(cx, cy, r, 4, 45 + degrees)


def _triangle(cx: float, cy: float, half: float, degrees: float) -> list[tuple[float, float]]:
    # Equilateral, pointing up (within the rotation), inside the circle of radius `half`.
    return _polygon(cx, cy, half, 3, -90 + degrees)


def _polygon(
    cx: float, cy: float, radius: float, sides: int, start_degrees: float
) -> list[tuple[float, float]]:
    angles = (math.radians(start_degrees + i * 360 / sides) for i in range(sides))
    return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in angles]


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")

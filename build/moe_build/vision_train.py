"""The vision tower's short warm-up: classify the drawn images' colour and shape.

The language model learns to name what it sees much faster from features that already
separate colours and shapes than from a random tower. So before the joint stage the tower
trains alone for a few hundred steps with two linear heads (colour, shape) on its mean-pooled
patch features; the heads are thrown away afterwards, the tower keeps what it learnt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from moe_build.shapes import COLOURS, SHAPES, DrawnImage
from moe_engine.vision import VisionConfig, VisionModel, preprocess_image, tower_width


@dataclass(frozen=True)
class VisionSettings:
    batch_size: int = 64
    peak_lr: float = 3e-3
    weight_decay: float = 0.01


def pixel_tensor(
    images: Sequence[DrawnImage],
    config: VisionConfig,
    *,
    progress: bool = True,
    desc: str = "images",
) -> torch.Tensor:
    """`[N, 3, S, S]` float32 pixel values, exactly as `VisionEncoder.preprocess` makes them."""
    pixels = [
        preprocess_image(d.image, config)
        for d in tqdm(images, desc=desc, unit="image", disable=not progress)
    ]
    if not pixels:
        return torch.zeros(0, 3, config.image_size, config.image_size)
    return torch.from_numpy(np.stack(pixels))


def labels(images: Sequence[DrawnImage]) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour and shape class indices of each image."""
    colours = torch.tensor([list(COLOURS).index(d.colour) for d in images])
    shapes = torch.tensor([SHAPES.index(d.shape) for d in images])
    return colours, shapes


def pretrain_vision(
    model: VisionModel,
    pixels: torch.Tensor,
    targets: tuple[torch.Tensor, torch.Tensor],
    *,
    steps: int,
    generator: torch.Generator,
    settings: VisionSettings = VisionSettings(),
    progress: bool = True,
) -> float:
    """Train `model.tower` on colour + shape classification; returns the last batch accuracy
    (both right). The caller seeds torch and sets the thread count."""
    width = tower_width(model.tower.config)
    heads = torch.nn.ModuleDict(
        {
            "colour": torch.nn.Linear(width, len(COLOURS)),
            "shape": torch.nn.Linear(width, len(SHAPES)),
        }
    )
    params = [*model.tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=settings.peak_lr, weight_decay=settings.weight_decay)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * max(0.05, 1 - step / max(1, steps))
    )
    colours, shapes = targets
    accuracy = 0.0
    model.train()
    bar = tqdm(range(steps), desc="vision warm-up", unit="step", disable=not progress)
    for _ in bar:
        batch = torch.randint(0, pixels.shape[0], (settings.batch_size,), generator=generator)
        pooled = model.patch_features(pixels[batch]).mean(dim=1)
        colour_logits, shape_logits = heads["colour"](pooled), heads["shape"](pooled)
        loss = torch.nn.functional.cross_entropy(colour_logits, colours[batch])
        loss = loss + torch.nn.functional.cross_entropy(shape_logits, shapes[batch])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        right = (colour_logits.argmax(-1) == colours[batch]) & (
            shape_logits.argmax(-1) == shapes[batch]
        )
        accuracy = right.float().mean().item()
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy:.2f}")
    model.eval()
    return accuracy

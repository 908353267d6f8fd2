"""The vision tower of a vision-language checkpoint: images → rows of the LLM's prompt table.

A checkpoint is a vision-language model when it holds a `vision/` folder next to the language
model: `vision/config.json` (a `transformers` vision config plus the projector and
preprocessing facts) and `vision/model.safetensors` (tower and projector weights). Each image
becomes `num_image_tokens` vectors of the language model's hidden size, which the engine
embeds in place of the placeholder ids `V + k*F …` (TensorRT-LLM's prompt-table semantics).
Only torch, transformers, Pillow and numpy: no Triton here, so tests and the builder use it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

VISION_DIR = "vision"
IMAGE_TOKEN = "<|image|>"
# SigLIP's own normalisation: pixels scaled to [-1, 1].
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class VisionConfig:
    """What `vision/config.json` says: preprocessing, tower, projector and token facts."""

    image_token: str
    num_image_tokens: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    text_hidden_size: int
    vision_config: dict[str, Any] = field(default_factory=dict)
    projector: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> VisionConfig:
        """Read the JSON form; raise ValueError when the facts contradict each other."""
        config = cls(
            image_token=str(raw.get("image_token", IMAGE_TOKEN)),
            num_image_tokens=int(raw["num_image_tokens"]),
            image_size=int(raw["image_size"]),
            mean=tuple(float(v) for v in raw.get("image_mean", DEFAULT_MEAN)),
            std=tuple(float(v) for v in raw.get("image_std", DEFAULT_STD)),
            text_hidden_size=int(raw["text_hidden_size"]),
            vision_config=dict(raw["vision_config"]),
            projector=dict(raw.get("projector", {})),
        )
        config.check()
        return config

    def to_dict(self) -> dict[str, Any]:
        return {
            "vision_config": self.vision_config,
            "projector": self.projector,
            "image_token": self.image_token,
            "num_image_tokens": self.num_image_tokens,
            "image_size": self.image_size,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "text_hidden_size": self.text_hidden_size,
        }

    def check(self) -> None:
        """The token count must follow from image size, patch size and the projector's merge."""
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("image_mean and image_std need three values (RGB)")
        patch = tower_stride(self.vision_config)
        merge = int(self.projector.get("merge", 1))
        if patch <= 0 or self.image_size % (patch * merge):
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of the tower's stride {patch} "
                f"x merge {merge}"
            )
        expected = (self.image_size // (patch * merge)) ** 2
        if expected != self.num_image_tokens:
            raise ValueError(
                f"num_image_tokens is {self.num_image_tokens}, but the tower and projector "
                f"give {expected}"
            )


class VisionModel(nn.Module):
    """A `transformers` vision tower and an MLP projector into the language model's space.

    The projector merges each `merge x merge` block of neighbouring patches into one token
    (concatenated features, as Idefics3's pixel shuffle does), so the LLM sees few image tokens
    while the tower still looks at small patches; then Linear-GELU-Linear to the text width.
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.merge = int(config.projector.get("merge", 1))
        tower_config = _tower_config(config.vision_config)
        self.tower = AutoModel.from_config(tower_config)
        width = tower_width(tower_config) * self.merge**2
        hidden = int(config.projector.get("hidden_size", config.text_hidden_size))
        self.projector = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, config.text_hidden_size)
        )

    def patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[N, 3, S, S]` → the tower's last hidden state, `[N, patches, width]`."""
        hidden = self.tower(pixel_values=pixel_values).last_hidden_state
        if hidden.dim() == 4:  # a convolutional tower: [N, C, H, W] → [N, H*W, C]
            hidden = hidden.flatten(2).transpose(1, 2)
        return hidden

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.project(self.patch_features(pixel_values))

    def project(self, patches: torch.Tensor) -> torch.Tensor:
        """`[N, g*g, D]` patch features → `[N, (g/m)^2, text_hidden]` image tokens."""
        n, count, width = patches.shape
        grid, m = math.isqrt(count), self.merge
        x = patches.view(n, grid // m, m, grid // m, m, width)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(n, (grid // m) ** 2, m * m * width)
        return self.projector(x)


class VisionEncoder:
    """Preprocesses images and encodes pixel values into prompt-table rows."""

    def __init__(self, config: VisionConfig, model: VisionModel, dtype: torch.dtype) -> None:
        self.config = config
        self.model = model.to(dtype).eval()
        self.dtype = dtype

    @classmethod
    def from_dir(cls, model_dir: Path, dtype: torch.dtype = torch.float32) -> VisionEncoder:
        """Load `model_dir/vision` (config and weights); every weight must be present."""
        folder = Path(model_dir) / VISION_DIR
        config = load_vision_config(model_dir)
        model = VisionModel(config)
        model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
        return cls(config, model, dtype)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB, resized to S x S (aspect not kept, as SigLIP's processor), normalised: `[3,S,S]`."""
        return preprocess_image(image, self.config)

    @torch.inference_mode()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[N, 3, S, S]` → `[N, F, text_hidden_size]` in the encoder's dtype (N may be 0)."""
        s = self.config.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, s, s):
            raise ValueError(
                f"pixel_values must be [N, 3, {s}, {s}], got {list(pixel_values.shape)}"
            )
        if pixel_values.shape[0] == 0:
            return torch.zeros(
                0, self.config.num_image_tokens, self.config.text_hidden_size, dtype=self.dtype
            )
        return self.model(pixel_values.to(self.dtype))


def preprocess_image(image: Image.Image, config: VisionConfig) -> np.ndarray:
    """The preprocessing every image gets, in training and in serving alike: `[3, S, S]`."""
    size = config.image_size
    rgb = image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
    mean = np.asarray(config.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(config.std, dtype=np.float32)[:, None, None]
    return ((pixels - mean) / std).astype(np.float32)


def is_vision_checkpoint(model_dir: Path) -> bool:
    """Whether the checkpoint carries a vision tower (`vision/config.json`)."""
    return (Path(model_dir) / VISION_DIR / "config.json").is_file()


def load_vision_config(model_dir: Path) -> VisionConfig:
    """Read and check `model_dir/vision/config.json`."""
    path = Path(model_dir) / VISION_DIR / "config.json"
    return VisionConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))


def tiny_vision_config(
    text_hidden_size: int = 256, *, tower: str = "resnet", image_size: int = 64
) -> VisionConfig:
    """The tiny model's tower at toy scale; 64x64 images give F=16 image tokens either way.

    `resnet` (the default model's): a three-stage ResNet, stride 16, 4x4 outputs of 128
    channels. `siglip`: a SigLIP ViT, 8x8 patches, each 2x2 block merged by the projector.
    A ViT from scratch learns the drawn shapes several times slower than the ResNet on two
    CPU cores (about 60% against 90% of shapes right after 300 warm-up steps), so the
    default model uses the ResNet; the SigLIP form is kept for tests of the ViT path.
    """
    if tower == "resnet":
        raw: dict[str, Any] = {
            "model_type": "resnet",
            "num_channels": 3,
            "embedding_size": 32,
            "hidden_sizes": [32, 64, 128],
            "depths": [1, 1, 1],
            "layer_type": "basic",
            "hidden_act": "relu",
            "downsample_in_first_stage": False,
        }
        merge = 1
    elif tower == "siglip":
        raw = {
            "model_type": "siglip_vision_model",
            "hidden_size": 96,
            "intermediate_size": 192,
            "num_hidden_layers": 2,
            "num_attention_heads": 3,
            "num_channels": 3,
            "image_size": image_size,
            "patch_size": 8,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6,
            "vision_use_head": False,  # the projector reads every patch; no pooled head
        }
        merge = 2
    else:
        raise ValueError(f"unknown tower {tower!r}; use 'resnet' or 'siglip'")
    grid = image_size // (tower_stride(raw) * merge)
    config = VisionConfig(
        image_token=IMAGE_TOKEN,
        num_image_tokens=grid * grid,
        image_size=image_size,
        mean=DEFAULT_MEAN,
        std=DEFAULT_STD,
        text_hidden_size=text_hidden_size,
        vision_config=raw,
        projector={"type": "merge_mlp_gelu", "merge": merge, "hidden_size": text_hidden_size},
    )
    config.check()
    return config


def save_vision(model_dir: Path, config: VisionConfig, model: VisionModel) -> Path:
    """Write `model_dir/vision/{config.json,model.safetensors}` (float32); returns the folder."""
    folder = Path(model_dir) / VISION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        name: (tensor.float() if tensor.is_floating_point() else tensor)
        .detach()
        .contiguous()
        .clone()
        for name, tensor in model.state_dict().items()
    }
    save_file(dict(sorted(state.items())), folder / "model.safetensors", metadata={"format": "pt"})
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    (folder / "config.json").write_text(text, encoding="utf-8")
    return folder


def save_random_vision(
    model_dir: Path, *, text_hidden_size: int = 256, seed: int = 0, tower: str = "resnet"
) -> VisionConfig:
    """A random-weight tower in `model_dir/vision`, for tests of everything but image quality."""
    config = tiny_vision_config(text_hidden_size, tower=tower)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionModel(config)
    save_vision(model_dir, config, model)
    return config


def tower_stride(raw: dict[str, Any]) -> int:
    """Input pixels per output position along a side: the patch size of a ViT-style tower;
    a ResNet's stem (4) doubled by every stage after the first."""
    if raw.get("model_type") == "resnet":
        return 4 * 2 ** (len(raw.get("hidden_sizes", ())) - 1)
    return int(raw.get("patch_size", 0))


def tower_width(config: PretrainedConfig) -> int:
    sizes = getattr(config, "hidden_sizes", None)
    return int(sizes[-1]) if sizes else int(config.hidden_size)


def _tower_config(raw: dict[str, Any]) -> PretrainedConfig:
    # AutoConfig.for_model picks the class from model_type (SigLIP, CLIP or ViT vision configs).
    values = dict(raw)
    return AutoConfig.for_model(values.pop("model_type"), **values)

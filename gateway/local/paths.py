"""Where LocalMoE keeps generated artefacts on this machine, and where its templates ship."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path


def templates_dir() -> Path:
    """The Triton model-repository templates (`config.pbtxt` + `1/model.py` per model).

    They ship inside the package, so the same lookup works from a wheel and from a checkout,
    where `gateway/local/model_repository` is a symlink to the top-level `model_repository/`.
    A real folder, not a zip member: filled repositories link to its `model.py` files.
    """
    return Path(str(files("gateway.local") / "model_repository"))


def home() -> Path:
    """The state folder: `$LOCALMOE_HOME`, else `~/.cache/localmoe`.

    Read here rather than from the settings object because the CLI needs it before any
    settings exist (to build the model that the settings will then point at).
    """
    return Path(os.environ.get("LOCALMOE_HOME") or Path.home() / ".cache" / "localmoe")


def default_model_dir() -> Path:
    """The embedded tiny MoE checkpoint."""
    return home() / "models" / "tiny-moe"


def default_repository_dir() -> Path:
    """The filled CPU model repository that `localmoe up` and `localmoe triton` serve."""
    return home() / "repository" / "cpu"

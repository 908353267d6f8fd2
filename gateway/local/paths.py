"""Where LocalMoE keeps generated artefacts on this machine."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = REPO_ROOT / "model_repository"


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

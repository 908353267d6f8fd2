"""Writing a GPU model repository: template folders filled into a staging folder that replaces
the old repository only once every model is written (a half-written one never serves).

Python models are copied, not linked as the CPU profile does: a GPU repository moves to a
volume, where links into this checkout would dangle.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

from gateway.local.repository import TemplateError, fill_template


def staging_for(out_dir: Path) -> Path:
    staging = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def write_model(
    staging: Path,
    template: Path,
    values: Mapping[str, str],
    *,
    name: str | None = None,
    code: bool = True,
    extra_parameters: Mapping[str, str] | None = None,
) -> Path:
    """Fill `template/config.pbtxt` into `staging/<name>/` (and copy `1/*.py` when `code`)."""
    config = template / "config.pbtxt"
    if not config.is_file():
        raise TemplateError(f"{template} is not a template folder: no config.pbtxt")
    dest = staging / (name or template.name)
    (dest / "1").mkdir(parents=True, exist_ok=True)
    text = fill_template(config.read_text(), values, source=str(config))
    if extra_parameters:
        text = with_parameters(text, extra_parameters)
    (dest / "config.pbtxt").write_text(text)
    if code:
        for source in sorted((template / "1").glob("*.py")):
            shutil.copyfile(source, dest / "1" / source.name)
    return dest


def with_parameters(config_text: str, parameters: Mapping[str, str]) -> str:
    """`config_text` with more string `parameters` (entries it already has keep their value)."""
    lines = [config_text.rstrip("\n")]
    for key, value in parameters.items():
        if f'key: "{key}"' in config_text:
            continue
        lines.append(f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}')
    return "\n".join(lines) + "\n"


def replace_with(staging: Path, out_dir: Path, marker: Mapping[str, object]) -> Path:
    """Move the finished `staging` folder to `out_dir` and record how it was built."""
    (staging / ".localmoe.json").write_text(json.dumps(marker, indent=2, sort_keys=True))
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(out_dir)
    return out_dir

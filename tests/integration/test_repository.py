"""Filling the model-repository templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.local.repository import TemplateError, ensure_default_repository, fill_template


def test_a_placeholder_without_value_is_an_error() -> None:
    with pytest.raises(TemplateError, match="engine_dtype"):
        fill_template('dtype: "${engine_dtype}"', {}, source="config.pbtxt")


def test_an_up_to_date_repository_is_not_rewritten(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = ensure_default_repository(tiny_model_dir, tmp_path / "cpu")
    config = out / "tensorrt_llm" / "config.pbtxt"
    before = config.stat().st_ino
    assert ensure_default_repository(tiny_model_dir, tmp_path / "cpu") == out
    assert config.stat().st_ino == before


def test_a_repository_filled_with_other_values_is_refilled(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = ensure_default_repository(tiny_model_dir, tmp_path / "cpu")
    marker = out / ".localmoe.json"
    marker.write_text(marker.read_text().replace('"float32"', '"bfloat16"'))
    before = (out / "tensorrt_llm" / "config.pbtxt").stat().st_ino
    ensure_default_repository(tiny_model_dir, tmp_path / "cpu")
    assert (out / "tensorrt_llm" / "config.pbtxt").stat().st_ino != before

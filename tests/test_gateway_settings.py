"""The settings object: defaults < YAML file < LOCALMOE_* environment < command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import load_settings


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_yaml_file_sets_fields_and_models(tmp_path: Path) -> None:
    path = _config(tmp_path, "port: 9000\nmodels:\n  - id: m\n    route: ensemble\n")
    settings = load_settings(path)
    assert settings.port == 9000 and settings.models[0].route == "ensemble"


def test_environment_overrides_the_yaml_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALMOE_PORT", "9100")
    assert load_settings(_config(tmp_path, "port: 9000\n")).port == 9100


def test_command_line_overrides_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALMOE_PORT", "9100")
    settings = load_settings(_config(tmp_path, "port: 9000\n"), port=9200, host=None)
    assert settings.port == 9200 and settings.host == "127.0.0.1"


def test_repeated_triton_urls_are_kept_in_order() -> None:
    settings = load_settings(triton_urls=["a:1", "b:2"])
    assert settings.triton_urls == ["a:1", "b:2"]


def test_unknown_yaml_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        load_settings(_config(tmp_path, "prot: 9000\n"))


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.yaml")


def test_triton_urls_from_the_environment_may_be_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCALMOE_TRITON_URLS", "a:1,b:2")
    assert load_settings().triton_urls == ["a:1", "b:2"]

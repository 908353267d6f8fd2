"""Filling the model-repository templates, and serving the template folder itself."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.local import paths
from gateway.local.repository import (
    TemplateError,
    ensure_default_repository,
    fill_repository,
    fill_template,
    holds_templates,
)
from tests.support import answers_200, free_port, processes_mentioning

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_placeholder_without_value_is_an_error() -> None:
    with pytest.raises(TemplateError, match="engine_dtype"):
        fill_template('dtype: "${engine_dtype}"', {}, source="config.pbtxt")


def test_the_packaged_templates_are_the_checkouts_model_repository() -> None:
    assert paths.templates_dir().resolve() == REPO_ROOT / "model_repository"


def test_the_template_folder_is_told_apart_from_a_filled_repository(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    filled = fill_repository(tmp_path / "cpu", model_dir=tiny_model_dir)
    assert holds_templates(REPO_ROOT / "model_repository")
    assert not holds_templates(filled)
    assert "${" not in (filled / "tensorrt_llm" / "config.pbtxt").read_text()


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


def test_a_repository_filled_from_other_templates_is_refilled(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = ensure_default_repository(tiny_model_dir, tmp_path / "cpu")
    before = (out / "tensorrt_llm" / "config.pbtxt").stat().st_ino
    copy = tmp_path.resolve() / "my_templates"
    subprocess.run(["cp", "-r", str(REPO_ROOT / "model_repository"), str(copy)], check=True)
    ensure_default_repository(tiny_model_dir, tmp_path / "cpu", templates=copy)
    assert (out / "tensorrt_llm" / "config.pbtxt").stat().st_ino != before
    assert (out / "tensorrt_llm" / "1" / "model.py").resolve().is_relative_to(copy)


def _checkpoint_copy(tiny_model_dir: Path, dest: Path, *, vision: bool) -> Path:
    """The checkpoint files that filling reads, with or without a `vision/config.json`."""
    dest.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, dest / name)
    if vision:
        _add_vision(dest)
    return dest


def _add_vision(model_dir: Path) -> None:
    (model_dir / "vision").mkdir()
    (model_dir / "vision" / "config.json").write_text('{"image_token": "<|image|>"}')


def test_only_a_vision_checkpoint_gets_the_image_models(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    vision = _checkpoint_copy(tiny_model_dir, tmp_path / "vlm", vision=True)
    filled = fill_repository(tmp_path / "vision-repo", model_dir=vision)
    assert (filled / "ensemble_multimodal" / "config.pbtxt").is_file()
    encoder = filled / "multimodal_encoders"
    assert (encoder / "1" / "model.py").resolve() == (
        REPO_ROOT / "model_repository" / "multimodal_encoders" / "1" / "model.py"
    )
    assert (
        'string_value: "multimodal_encoders"'
        in (filled / "tensorrt_llm_bls" / "config.pbtxt").read_text()
    )
    text_only = _checkpoint_copy(tiny_model_dir, tmp_path / "llm", vision=False)
    text = fill_repository(tmp_path / "text-repo", model_dir=text_only)
    assert not (text / "multimodal_encoders").exists()
    assert not (text / "ensemble_multimodal").exists()
    assert 'string_value: ""' in (text / "tensorrt_llm_bls" / "config.pbtxt").read_text()


def test_a_checkpoint_that_gains_a_vision_tower_is_refilled(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model_dir = _checkpoint_copy(tiny_model_dir, tmp_path / "model", vision=False)
    out = ensure_default_repository(model_dir, tmp_path / "cpu")
    assert not (out / "multimodal_encoders").exists()
    _add_vision(model_dir)
    ensure_default_repository(model_dir, tmp_path / "cpu")
    assert (out / "multimodal_encoders" / "config.pbtxt").is_file()


def test_triton_serves_the_template_folder_filled_for_the_tiny_model(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with _localmoe_triton("model_repository", tiny_model_dir, tmp_path) as triton:
        _wait_for_line(triton, "triton ready:")
        assert answers_200(f"{triton.url}/v2/health/ready")
        first_line = triton.out.read_text().splitlines()[0]
        assert first_line.startswith("model_repository holds templates: serving them filled for ")
        assert str(triton.home / "repository" / "cpu") in first_line
        assert answers_200(f"{triton.url}/v2/models/tensorrt_llm_bls/ready")
        triton.process.send_signal(signal.SIGTERM)
        assert triton.process.wait(timeout=60) == 0
    assert processes_mentioning(triton.home) == []


def test_sigterm_while_triton_loads_stops_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    with _localmoe_triton("model_repository", tiny_model_dir, tmp_path) as triton:
        deadline = time.monotonic() + 60
        while not [p for p in processes_mentioning(triton.home) if "tritonserver" in p]:
            assert triton.process.poll() is None, triton.err.read_text()[-4000:]
            assert time.monotonic() < deadline, "tritonserver never started"
            time.sleep(0.05)
        assert not answers_200(f"{triton.url}/v2/health/ready"), "loaded too fast to test"
        triton.process.send_signal(signal.SIGTERM)
        assert triton.process.wait(timeout=60) == 130
    assert processes_mentioning(triton.home) == []


@dataclass
class _Triton:
    process: subprocess.Popen
    url: str
    home: Path
    out: Path
    err: Path


@contextmanager
def _localmoe_triton(repository: str, model_dir: Path, tmp_path: Path) -> Iterator[_Triton]:
    """`localmoe triton --model-repository REPOSITORY` from the checkout, with a LOCALMOE_HOME of
    its own that holds the tiny model; killed on the way out if the test left it running."""
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "tiny-moe").symlink_to(model_dir)
    http_port = free_port()
    command = [
        sys.executable, "-m", "gateway.cli", "triton", "--model-repository", repository,
        "--http-port", str(http_port), "--grpc-port", str(free_port()),
        "--metrics-port", str(free_port()),
    ]  # fmt: skip
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, "LOCALMOE_HOME": str(home)},
            stdout=stdout,
            stderr=stderr,
        )
    try:
        yield _Triton(process, f"http://127.0.0.1:{http_port}", home, out, err)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_for_line(triton: _Triton, text: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in triton.out.read_text():
        assert triton.process.poll() is None, triton.err.read_text()[-4000:]
        assert time.monotonic() < deadline, triton.err.read_text()[-4000:]
        time.sleep(0.2)

"""Session fixtures: the tiny MoE checkpoint and a real tritonserver serving it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.local import paths
from gateway.local.repository import fill_repository
from gateway.local.triton import TritonProcess
from tests.support import free_port

pytest_plugins = ["tests.gateway_fixtures", "tests.redis_fixtures"]


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The embedded default model, built once per machine (as `make run` would)."""
    model_dir = paths.default_model_dir()
    if not (model_dir / "config.json").is_file():
        from moe_build.tiny import build_tiny_model

        build_tiny_model(model_dir, progress=False)
    return model_dir


@pytest.fixture(scope="session")
def model_repository(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CPU model repository filled for the tiny model."""
    return fill_repository(
        tmp_path_factory.mktemp("repo") / "cpu", model_dir=tiny_model_dir, profile="cpu"
    )


@pytest.fixture(scope="session")
def triton(model_repository: Path) -> Iterator[TritonProcess]:
    """A real tritonserver on free ports, serving the CPU repository."""
    server = TritonProcess(
        model_repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    server.start()
    yield server
    server.stop()

"""The benchmark's Triton model repository: the CPU repository of the tiny MoE plus `echo`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from gateway.local.repository import fill_repository, fill_template

ECHO_TEMPLATE = Path(__file__).resolve().parent / "model_repository" / "echo"


def bench_repository(
    out_dir: Path, model_dir: Path, *, with_moe: bool = True, echo_instances: int = 1
) -> Path:
    """Write a servable repository into `out_dir` (replacing it): `echo`, and unless `with_moe`
    is false the five models of the CPU profile serving the checkpoint in `model_dir`."""
    out_dir = Path(out_dir)
    if with_moe:
        fill_repository(out_dir, model_dir=model_dir, profile="cpu")
    else:
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
    echo = out_dir / "echo"
    (echo / "1").mkdir(parents=True)
    config = ECHO_TEMPLATE / "config.pbtxt"
    values = {"echo_instance_count": str(echo_instances)}
    (echo / "config.pbtxt").write_text(
        fill_template(config.read_text(), values, source=str(config))
    )
    os.symlink(ECHO_TEMPLATE / "1" / "model.py", echo / "1" / "model.py")
    return out_dir

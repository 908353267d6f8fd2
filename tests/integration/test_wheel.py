"""The wheel on its own: built from this checkout and installed into a fresh virtual environment
outside it, it fills a model repository from its packaged templates and runs a real Triton.

The fresh environment sees this checkout's site-packages (torch, tritonclient, pytriton …)
through a `.pth` path line instead of reinstalling gigabytes; `site` does not read the `.pth`
files inside such a directory, so the checkout's editable install stays out of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

from tests.support import answers_200, free_port, processes_mentioning

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ("ensemble", "postprocessing", "preprocessing", "tensorrt_llm", "tensorrt_llm_bls")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built offline (hatchling from the dev extra)."""
    out = tmp_path_factory.mktemp("dist")
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(out), str(REPO_ROOT)],
    )  # fmt: skip
    (found,) = out.glob("localmoe-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed, outside the checkout."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)])
    python = root / "bin" / "python"
    # Install before the dependencies become visible, so pip never sees the editable install.
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "--quiet", str(wheel)])  # fmt: skip
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    checkout_site = sysconfig.get_paths()["purelib"]
    Path(site.strip(), "localmoe-test-deps.pth").write_text(checkout_site + "\n")
    return root


@pytest.mark.slow
def test_the_wheel_ships_the_product_packages_and_the_templates(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.startswith("localmoe-")}
    assert tops == {"gateway", "moe_engine", "moe_build"}
    for model in TEMPLATES:
        assert f"gateway/local/model_repository/{model}/config.pbtxt" in names
    assert "gateway/local/model_repository/tensorrt_llm/1/model.py" in names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


def test_the_checkout_imports_moe_build_from_the_build_folder() -> None:
    import moe_build

    assert Path(moe_build.__file__).resolve() == REPO_ROOT / "build" / "moe_build" / "__init__.py"


@pytest.mark.slow
def test_the_installed_wheel_imports_from_the_fresh_environment(venv: Path, tmp_path: Path) -> None:
    code = (
        "import importlib.util, gateway, moe_engine, moe_build, torch\n"
        "from gateway.local import paths\n"
        "for module in (gateway, moe_engine, moe_build):\n"
        "    print(module.__file__)\n"
        "print(paths.templates_dir())\n"
        "print(importlib.util.find_spec('bench'))\n"
    )
    lines = _run([venv / "bin" / "python", "-c", code], cwd=tmp_path, env=_env(tmp_path))
    *files, templates, bench = lines.splitlines()
    for file in files:
        assert Path(file).resolve().is_relative_to(venv.resolve()), file
    assert Path(templates).resolve().is_relative_to(venv.resolve())
    assert not Path(templates).is_symlink()
    assert bench == "None"


@pytest.mark.slow
def test_the_installed_wheel_fills_a_repository_and_runs_triton(
    venv: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    localmoe, env = venv / "bin" / "localmoe", _env(tmp_path)
    repository = tmp_path / "repository"
    _run(
        [localmoe, "build", "repository", "--model-dir", str(tiny_model_dir),
         "--out", str(repository)],
        cwd=tmp_path, env=env,
    )  # fmt: skip
    code = (repository / "tensorrt_llm" / "1" / "model.py").resolve()
    assert code.is_relative_to(venv.resolve()), code
    assert "${" not in (repository / "tensorrt_llm" / "config.pbtxt").read_text()

    http_port = free_port()
    log = tmp_path / "triton.log"
    with log.open("w") as out:
        triton = subprocess.Popen(
            [localmoe, "triton", "--model-repository", str(repository),
             "--http-port", str(http_port), "--grpc-port", str(free_port()),
             "--metrics-port", str(free_port())],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "triton ready:" not in log.read_text():
            assert triton.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.2)
        assert answers_200(f"http://127.0.0.1:{http_port}/v2/health/ready")
        assert processes_mentioning(repository), "no Triton process serves the repository"
        triton.send_signal(signal.SIGTERM)
        assert triton.wait(timeout=60) == 0, log.read_text()[-4000:]
    finally:
        if triton.poll() is None:
            triton.kill()
            triton.wait()
    assert processes_mentioning(repository) == []


def _env(tmp_path: Path) -> dict[str, str]:
    """This environment without anything that points Python at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["LOCALMOE_HOME"] = str(tmp_path / "home")
    return env


def _run(command: list, **kwargs: object) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{command}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout

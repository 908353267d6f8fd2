"""`localmoe up`, the README's run command: Triton and gateway on the embedded tiny model, a
ready-to-paste OpenAI snippet that works, and a clean stop on SIGTERM."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.gateway_fixtures import REPO_ROOT
from tests.support import free_port

pytestmark = pytest.mark.slow


def _lines(stream: object) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _read_until(lines: queue.Queue[str], marker: str, timeout: float) -> str:
    out, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        out.append(line)
        if marker in line:
            return "".join(out)
    raise TimeoutError("".join(out))


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_up_prints_a_working_snippet_and_stops_triton_on_sigterm(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("LOCALMOE_") or k == "LOCALMOE_HOME"
    }
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")  # the development key goes there
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "up", "--port", str(free_port())],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "up.log").open("wb"),
        text=True,
    )
    try:
        banner = _read_until(_lines(process.stdout), "Ctrl-C", timeout=240)
        grpc_port = int(re.search(r"gRPC [\d.]+:(\d+)", banner).group(1))  # type: ignore[union-attr]
        snippet = textwrap.dedent(
            "\n".join(line for line in banner.splitlines() if line.startswith("    "))
        )
        run = subprocess.run(
            [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip()

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert not _port_open(grpc_port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

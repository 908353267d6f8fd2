"""Helpers shared by the test suites: free ports, waiting for HTTP, reading Prometheus text."""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def byte_level_tokenizer(corpus: list[str], vocab_size: int) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` trained on `corpus` in milliseconds: round-trips
    any text (spaces, accents, CJK, emoji) like the real models' tokenizers do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


REPO = Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
    """The path of an operate-check binary (helm, kubectl, prometheus, promtool): `.tools/bin`
    first (`make tools`), then PATH. A missing tool fails the test; it is never skipped."""
    import shutil

    local = REPO / ".tools" / "bin" / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} not found: run `make tools` (build/tools/install.sh)")
    return found


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers_200(url: str) -> bool:
    """True when `url` answers 200 right now."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def processes_mentioning(path: Path) -> list[str]:
    """The processes whose command line names `path` (`pid: cmdline`): what a test that
    started processes under `path` must leave none of."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def wait_http(url: str, timeout: float = 30.0, status: int = 200) -> None:
    """Poll `url` until it answers `status`; raise TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == status:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {status} within {timeout}s")


def metric_value(metrics_url: str, name: str, **labels: str) -> float:
    """Sum of the samples of metric `name` whose labels include `labels` (0 if none)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = re.match(r"^(\w+)(\{(.*)\})?\s+(\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(4))
    return total


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll `predicate()` until it is true or `timeout` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def worker_pids(gateway: Any) -> set[int]:
    """The worker processes of a `serve --workers N` gateway (its supervisor's children, less
    multiprocessing's resource tracker)."""
    return {
        pid
        for pid in _children(gateway.process.pid)
        if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    }

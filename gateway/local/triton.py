"""Run a real `tritonserver` (the binary shipped in the nvidia-pytriton wheel) on this machine.

The wheel carries the server, the Python backend and one backend stub per Python version, but
not in the layout `tritonserver` expects, so we assemble a backend folder of symlinks and an
environment in which the stub runs this interpreter's virtual environment (torch included).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from types import TracebackType

# Error-level log lines (glog "E1126 ...") and the model status table's UNAVAILABLE rows say
# why a model failed to load; we surface them verbatim. CUDA complaints are expected on CPU.
_LOAD_ERROR = re.compile(r"^E\d{4} |\| UNAVAILABLE|^error:")
_IGNORED = re.compile(r"Cuda|CUDA|GPU|nvml", re.IGNORECASE)


class TritonStartError(RuntimeError):
    """Triton exited or did not become ready; the message carries the relevant log lines."""


def tritonserver_binary() -> Path:
    """The `tritonserver` executable inside the installed nvidia-pytriton wheel."""
    return _pytriton_root() / "bin" / "tritonserver"


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise TritonStartError(
            "nvidia-pytriton is not installed: the cpu extra provides tritonserver "
            "(`pip install 'localmoe[cpu]'`, or `make install` in a checkout)"
        ) from exc
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def backend_directory(dest: Path) -> Path:
    """Assemble `dest/python/` with the Python backend and the stub for this interpreter."""
    root = _pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonStartError(f"no Python backend stub for Python {version} in {root}")
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for item in (root / "backends" / "python").iterdir():
        if item.name != "__pycache__":
            _symlink(item, python_dir / item.name)
    _symlink(stub, python_dir / "triton_python_backend_stub")
    return dest


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment in which the backend stub embeds this interpreter and sees this venv."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    # The stub runs the first `python3` on PATH: make it this interpreter's venv.
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class TritonProcess:
    """A `tritonserver` child process: start, wait for readiness, stop cleanly.

    Usable as a context manager. Log lines go to a ring buffer (for error messages) and,
    with `log_to_console`, to stderr.
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        host: str = "127.0.0.1",
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        log_verbose: int = 0,
        log_to_console: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.log_verbose = log_verbose
        self.log_to_console = log_to_console
        self.extra_args = extra_args
        self.log_tail: deque[str] = deque(maxlen=400)
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._backend_tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    def command(self, backend_dir: Path) -> list[str]:
        """The full `tritonserver` command line."""
        return [
            str(tritonserver_binary()),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=true",
            "--pinned-memory-pool-byte-size=0",
            "--cuda-memory-pool-byte-size=0:0",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]

    def start(self, timeout: float = 180.0) -> None:
        """Start the server and block until it is ready; raise TritonStartError otherwise."""
        if not self.model_repository.is_dir():
            raise TritonStartError(f"model repository {self.model_repository} does not exist")
        self._backend_tmp = tempfile.TemporaryDirectory(prefix="localmoe-backends-")
        backend_dir = backend_directory(Path(self._backend_tmp.name))
        self._proc = subprocess.Popen(
            self.command(backend_dir),
            env=server_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            # Own process group, so a terminal Ctrl-C reaches us and we decide how to stop;
            # and a parent-death signal, so a crashed parent never leaves Triton orphaned.
            preexec_fn=_detach_and_die_with_parent,
        )
        self._reader = threading.Thread(target=self._pump_logs, daemon=True)
        self._reader.start()
        try:
            self._wait_ready(timeout)
        except BaseException:
            # A failed start (or Ctrl-C while waiting) must not leave Triton or a stub behind.
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None and self._reader is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._reader.join(timeout=2)
                raise TritonStartError(self._failure_message("tritonserver exited"))
            if self.is_ready() and self._proc.poll() is None:
                return
            time.sleep(0.2)
        raise TritonStartError(self._failure_message(f"not ready after {timeout:.0f}s"))

    def is_ready(self) -> bool:
        """True when Triton's HTTP readiness endpoint answers 200."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait(self) -> int:
        """Block until the server exits, forwarding SIGTERM/SIGINT to it; return its code."""
        assert self._proc is not None, "start() first"

        proc = self._proc

        def forward(signum: int, _frame: object) -> None:
            # Only forward: the handler runs on the thread blocked in wait(), which holds
            # Popen's wait lock, so anything that waits here would deadlock until timeouts.
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the server (it unloads models and stops the stubs), then SIGKILL the group."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if proc is not None:
            # Stubs are children of tritonserver; make sure none outlives it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL the server and its stubs at once, as a crash would (failure drills)."""
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self._cleanup()

    def freeze(self) -> None:
        """SIGSTOP the server and its stubs, as a hung host would (failure drills); `thaw`
        lets them go on."""
        self._signal_group(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_group(signal.SIGCONT)

    def _signal_group(self, signum: int) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signum)

    def _cleanup(self) -> None:
        # A signal can land between creating the log reader and starting it.
        if self._reader is not None and self._reader.ident is not None:
            self._reader.join(timeout=2)
        if self._backend_tmp is not None:
            self._backend_tmp.cleanup()
            self._backend_tmp = None

    def _pump_logs(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.log_tail.append(line.rstrip("\n"))
            if self.log_to_console:
                sys.stderr.write(line)

    def _failure_message(self, what: str) -> str:
        errors = [
            line for line in self.log_tail if _LOAD_ERROR.search(line) and not _IGNORED.search(line)
        ]
        lines = "\n".join(errors[-10:] or list(self.log_tail)[-20:])
        return f"{what} (repository {self.model_repository}):\n{lines}"

    def __enter__(self) -> TritonProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _detach_and_die_with_parent() -> None:
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _symlink(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)

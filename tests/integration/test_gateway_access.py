"""Auth settings on the application itself (in process, no Triton behind it): which routes need a
token, `/metrics`, auth off, the development key, and production mode without a key."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.policy.keys import KeyConfigError
from gateway.policy.tokens import load_or_create_dev_secret, mint_token
from gateway.settings import Settings
from tests.gateway_fixtures import REPO_ROOT, auth
from tests.support import free_port

SECRET = "unit-test-secret-0123456789abcdefghijklmnopqrstuvwxyz"


def _settings(mode: str = "dev", **auth: Any) -> Settings:
    auth.setdefault("jwt_secret", SECRET)
    return Settings(
        triton={"urls": [f"127.0.0.1:{free_port()}"]}, access_log=False, mode=mode, auth=auth
    )


@contextmanager
def _client(mode: str = "dev", **auth: Any) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(mode, **auth))) as client:
        yield client


def test_metrics_need_no_token_by_default() -> None:
    with _client() as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert "localmoe_http_requests_total" in response.text


def test_metrics_need_a_token_when_metrics_auth_is_set() -> None:
    with _client(metrics=True) as client:
        refused = client.get("/metrics")
        allowed = client.get("/metrics", headers=auth(mint_token(SECRET, sub="prometheus")))
    assert refused.status_code == 401 and "www-authenticate" in refused.headers
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert allowed.status_code == 200


def test_metrics_count_requests_by_route_and_status() -> None:
    with _client() as client:
        client.get("/v1/models")
        text = client.get("/metrics").text
    assert 'localmoe_http_requests_total{method="GET",route="/v1/models",status="401"}' in text


def test_health_needs_no_token() -> None:
    with _client() as client:
        assert client.get("/health/live").status_code == 200


def test_auth_off_serves_without_a_token() -> None:
    with _client(enabled=False, jwt_secret=None) as client:
        response = client.get("/v1/models")
    assert response.status_code == 200 and response.json()["object"] == "list"


def test_dev_mode_without_a_key_accepts_tokens_of_the_dev_secret(tmp_path: Path) -> None:
    secret_file = tmp_path / "jwt-secret"
    with _client(jwt_secret=None, dev_secret_file=secret_file) as client:
        token = mint_token(load_or_create_dev_secret(secret_file), sub="dev")
        response = client.get("/v1/models", headers=auth(token))
    assert response.status_code == 200
    assert secret_file.stat().st_mode & 0o777 == 0o600


def test_production_mode_without_a_key_does_not_build_an_app() -> None:
    with pytest.raises(KeyConfigError, match="production mode needs a configured JWT key"):
        create_app(_settings(mode="production", jwt_secret=None))


def test_production_mode_with_a_key_builds_an_app() -> None:
    with _client(mode="production") as client:
        assert client.get("/v1/models").status_code == 401


def test_several_keys_are_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError, match="not several"):
        create_app(_settings(jwks_file=tmp_path / "jwks.json"))


def test_serve_in_production_without_a_key_exits_with_the_reason() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALMOE_")}
    env["LOCALMOE_MODE"] = "production"
    run = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port())],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "production mode needs a configured JWT key" in run.stderr
    assert "LOCALMOE_AUTH__JWT_SECRET" in run.stderr

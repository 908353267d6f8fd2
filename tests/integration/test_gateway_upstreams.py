"""Several `--triton-url`s: requests go to the upstreams that are ready."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.gateway_fixtures import GatewayProcess, start_gateway, stop_gateway
from tests.support import free_port


@pytest.fixture(scope="module")
def gateway_with_a_dead_replica(
    triton: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway whose first upstream is a port nobody listens on."""
    process = start_gateway(
        tmp_path_factory.mktemp("two-upstreams"),
        triton_urls=[f"127.0.0.1:{free_port()}", triton.grpc_url],
    )
    yield process
    stop_gateway(process)


def test_requests_skip_an_upstream_that_is_down(
    gateway_with_a_dead_replica: GatewayProcess, model_id: str
) -> None:
    url = gateway_with_a_dead_replica.base_url
    with openai.OpenAI(
        base_url=url, api_key=gateway_with_a_dead_replica.token, max_retries=0
    ) as client:
        replies = [
            client.completions.create(model=model_id, prompt="Hi", max_tokens=2) for _ in range(4)
        ]
    assert all(r.choices[0].finish_reason in ("stop", "length") for r in replies)


def test_ready_while_one_replica_is_up(gateway_with_a_dead_replica: GatewayProcess) -> None:
    response = httpx.get(f"{gateway_with_a_dead_replica.url}/health/ready", timeout=10)
    assert response.status_code == 200

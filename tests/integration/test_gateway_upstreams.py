"""Several `--triton-url`s: requests go to the upstreams that are ready."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.gateway_fixtures import GatewayProcess, start_gateway, stop_gateway
from tests.support import free_port, metric_value, wait_for

DEAD = f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def gateway_with_a_dead_replica(
    triton: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway whose first upstream is a port nobody listens on."""
    process = start_gateway(
        tmp_path_factory.mktemp("two-upstreams"), triton_urls=[DEAD, triton.grpc_url]
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


def test_upstream_metrics_show_which_replica_is_down_and_what_the_live_one_served(
    gateway_with_a_dead_replica: GatewayProcess, triton: Any, model_id: str
) -> None:
    gateway = gateway_with_a_dead_replica
    dead, live = DEAD, triton.grpc_url
    metrics = f"{gateway.url}/metrics"
    served = metric_value(metrics, "localmoe_upstream_requests_total", upstream=live, outcome="ok")
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.token, max_retries=0) as client:
        for _ in range(3):
            client.completions.create(model=model_id, prompt="Hi", max_tokens=2)
        stream = client.completions.create(model=model_id, prompt="Hi", max_tokens=64, stream=True,
                                           extra_body={"ignore_eos": True})  # fmt: skip
        next(iter(stream))
        stream.close()  # hang up early: the attempt on Triton is cancelled

    def value(name: str, **labels: str) -> float:
        return metric_value(metrics, name, **labels)

    assert value("localmoe_upstream_up", upstream=dead) == 0
    assert value("localmoe_upstream_up", upstream=live) == 1
    assert value("localmoe_upstream_requests_total", upstream=live, outcome="ok") - served == 3
    assert value("localmoe_upstream_requests_total", upstream=dead, outcome="ok") == 0
    assert wait_for(
        lambda: (
            value("localmoe_upstream_requests_total", upstream=live, outcome="cancelled") >= 1
            and value("localmoe_upstream_requests_in_flight", upstream=live) == 0
        ),
        timeout=10,
    )
    assert value("localmoe_upstream_request_duration_seconds_count", upstream=live) >= 4


def test_ready_while_one_replica_is_up(gateway_with_a_dead_replica: GatewayProcess) -> None:
    response = httpx.get(f"{gateway_with_a_dead_replica.url}/health/ready", timeout=10)
    assert response.status_code == 200


def test_a_dns_entry_stands_for_every_address_of_the_name(
    triton: Any, model_id: str, tmp_path: Any
) -> None:
    port = triton.grpc_url.rpartition(":")[2]
    gateway = start_gateway(tmp_path, triton_urls=[f"dns:///localhost:{port}"])
    try:
        with openai.OpenAI(
            base_url=gateway.base_url, api_key=gateway.token, max_retries=0
        ) as client:
            reply = client.completions.create(model=model_id, prompt="Hi", max_tokens=2)
        assert reply.choices[0].finish_reason in ("stop", "length")
        metrics = f"{gateway.url}/metrics"
        assert metric_value(metrics, "localmoe_upstream_up", upstream=f"127.0.0.1:{port}") == 1
        served = metric_value(
            metrics, "localmoe_upstream_requests_total", upstream=f"127.0.0.1:{port}", outcome="ok"
        )
        assert served == 1
    finally:
        stop_gateway(gateway)

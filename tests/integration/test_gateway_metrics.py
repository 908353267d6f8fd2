"""The gateway's own metrics, scraped from a real gateway in front of real Triton: time to first
token, inter-token latency, generation time and tokens per model, errors by type, auth failures
by reason and requests in flight; under `--workers 2` the counters of both workers add up."""

from __future__ import annotations

from typing import Any

import httpx
import openai

from tests.gateway_fixtures import GatewayProcess, auth
from tests.support import metric_value, worker_pids

TTFT = "localmoe_time_to_first_token_seconds_count"
ITL = "localmoe_inter_token_latency_seconds_count"
DURATION = "localmoe_generation_duration_seconds_count"


def _metric(gateway: GatewayProcess, name: str, **labels: str) -> float:
    return metric_value(f"{gateway.url}/metrics", name, **labels)


def test_a_stream_is_timed_and_its_tokens_counted(
    gateway: GatewayProcess, client: openai.OpenAI, model_id: str
) -> None:
    before = {
        name: _metric(gateway, name, model=model_id)
        for name in (TTFT, ITL, DURATION, "localmoe_prompt_tokens_total",
                     "localmoe_completion_tokens_total")
    }  # fmt: skip
    chunks = list(
        client.chat.completions.create(
            model=model_id,
            messages=[{"role": "user", "content": "Tell me about threads."}],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True, "cache": False},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 12
    deltas = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)

    def grew(name: str) -> float:
        return _metric(gateway, name, model=model_id) - before[name]

    assert grew(TTFT) == 1 and grew(DURATION) == 1
    assert grew(ITL) >= deltas - 1  # one per delta after the first (the last carries no text)
    assert grew("localmoe_prompt_tokens_total") == usage.prompt_tokens
    assert grew("localmoe_completion_tokens_total") == 12


def test_errors_are_counted_by_status_type_and_code(gateway: GatewayProcess) -> None:
    labels = {"status": "404", "type": "invalid_request_error", "code": "model_not_found"}
    before = _metric(gateway, "localmoe_errors_total", **labels)
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(
        f"{gateway.base_url}/chat/completions", json=body, headers=gateway.headers, timeout=10
    )
    assert response.status_code == 404
    assert _metric(gateway, "localmoe_errors_total", **labels) == before + 1


def test_auth_failures_are_counted_by_reason(gateway: GatewayProcess) -> None:
    url = f"{gateway.base_url}/models"
    missing = _metric(gateway, "localmoe_auth_failures_total", reason="missing_token")
    forged = _metric(gateway, "localmoe_auth_failures_total", reason="invalid_signature")
    assert httpx.get(url, timeout=10).status_code == 401
    header, payload, _ = gateway.token.split(".")
    assert httpx.get(url, headers=auth(f"{header}.{payload}.AAAA"), timeout=10).status_code == 401
    assert _metric(gateway, "localmoe_auth_failures_total", reason="missing_token") == missing + 1
    assert (
        _metric(gateway, "localmoe_auth_failures_total", reason="invalid_signature") == forged + 1
    )


def test_requests_in_flight_count_the_scrape_itself_when_idle(gateway: GatewayProcess) -> None:
    assert _metric(gateway, "localmoe_http_requests_in_flight") == 1


def test_counters_of_two_workers_add_up(workers_gateway: GatewayProcess) -> None:
    assert len(worker_pids(workers_gateway)) == 2
    models = httpx.get(
        f"{workers_gateway.base_url}/models", headers=workers_gateway.headers, timeout=10
    ).json()
    model = models["data"][0]["id"]
    before = _metric(workers_gateway, "localmoe_completion_tokens_total", model=model)
    requests: list[Any] = []
    for _ in range(6):  # a new connection each time, so both workers take some
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 3,
            "ignore_eos": True,
        }
        response = httpx.post(
            f"{workers_gateway.base_url}/chat/completions",
            json=body,
            headers=workers_gateway.headers,
            timeout=60,
        )
        assert response.status_code == 200, response.text
        requests.append(response.json()["usage"]["completion_tokens"])
    after = _metric(workers_gateway, "localmoe_completion_tokens_total", model=model)
    assert after - before == sum(requests) == 18

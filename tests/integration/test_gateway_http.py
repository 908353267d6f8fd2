"""HTTP-level behaviour of the gateway: health, request ids, access logs, SSE framing."""

from __future__ import annotations

import json
import re

import httpx

from tests.gateway_fixtures import GatewayProcess
from tests.support import wait_for


def test_liveness_and_readiness_are_200_with_triton_up(gateway: GatewayProcess) -> None:
    assert httpx.get(f"{gateway.url}/health/live", timeout=10).json() == {"status": "live"}
    ready = httpx.get(f"{gateway.url}/health/ready", timeout=10).json()
    assert ready["status"] == "ready"
    assert [(u["ready"], u["circuit"]) for u in ready["upstreams"]] == [(True, "closed")]


def test_client_request_id_is_echoed(gateway: GatewayProcess) -> None:
    response = httpx.get(
        f"{gateway.base_url}/models",
        headers={"x-request-id": "abc-123", **gateway.headers},
        timeout=10,
    )
    assert response.headers["x-request-id"] == "abc-123"


def test_request_id_is_generated_when_absent(gateway: GatewayProcess) -> None:
    response = httpx.get(f"{gateway.base_url}/models", headers=gateway.headers, timeout=10)
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


def test_access_log_is_one_structured_line_with_the_request_id(
    gateway: GatewayProcess, model_id: str
) -> None:
    body = {"model": model_id, "prompt": "hi", "max_tokens": 2}
    httpx.post(
        f"{gateway.base_url}/completions",
        json=body,
        headers={"x-request-id": "log-me-1", **gateway.headers},
        timeout=30,
    )

    def logged() -> list[dict]:
        return [r for r in gateway.log_records() if r.get("request_id") == "log-me-1"]

    assert wait_for(lambda: bool(logged()))
    (record,) = logged()
    assert record["logger"] == "localmoe.access" and record["status"] == 200
    assert (record["method"], record["path"], record["model"]) == (
        "POST",
        "/v1/completions",
        model_id,
    )
    assert record["duration_ms"] > 0


def test_stream_is_server_sent_events_ending_with_done(
    gateway: GatewayProcess, model_id: str
) -> None:
    body = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    body["max_tokens"] = 4
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        json=body,
        headers=gateway.headers,
        timeout=30,
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    assert all("choices" in json.loads(e.removeprefix("data: ")) for e in events[:-1])

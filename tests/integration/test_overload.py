"""Backpressure on the real stack: four times the configured capacity at once gets 503
`server_overloaded` with `Retry-After` for what cannot wait, and the admitted requests finish."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx

from tests.gateway_fixtures import start_gateway, stop_gateway
from tests.support import metric_value


def test_four_times_capacity_is_shed_with_retry_after_and_the_rest_served(
    triton: Any, model_id: str, tmp_path: Any
) -> None:
    admission = {"max_in_flight": 2, "max_queue": 2, "queue_timeout_s": 30}
    gateway = start_gateway(
        tmp_path,
        triton_urls=[triton.grpc_url],
        config={"admission": admission, "cache": {"enabled": False}},
    )
    body = {
        "model": model_id, "prompt": "Count to ten:", "max_tokens": 64, "ignore_eos": True,
    }  # fmt: skip

    async def one(http: httpx.AsyncClient) -> tuple[int, str | None, float]:
        started = time.monotonic()
        response = await http.post(f"{gateway.base_url}/completions", json=body)
        code = response.json()["error"]["code"] if response.status_code != 200 else None
        if response.status_code == 503:
            assert int(response.headers["retry-after"]) >= 1
        return response.status_code, code, time.monotonic() - started

    async def flood() -> list[tuple[int, str | None, float]]:
        async with httpx.AsyncClient(headers=gateway.headers, timeout=60) as http:
            return await asyncio.gather(*(one(http) for _ in range(16)))

    try:
        results = asyncio.run(flood())
        outcomes = Counter((status, code) for status, code, _ in results)
        assert set(outcomes) == {(200, None), (503, "server_overloaded")}, outcomes
        assert outcomes[(200, None)] >= 4  # the two places and the two in the queue
        refused = [took for status, _, took in results if status == 503]
        assert max(refused) < 1.0  # shed at the door, not after waiting
        shed = metric_value(f"{gateway.url}/metrics", "localmoe_admission_rejections_total")
        assert shed == outcomes[(503, "server_overloaded")]
        assert metric_value(f"{gateway.url}/metrics", "localmoe_admission_queue_length") == 0
    finally:
        stop_gateway(gateway)

"""A client that goes away cancels its Triton request: the engine's active gauge drops to 0 within
a few decode steps, long before the generation could have finished on its own."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.gateway_fixtures import GatewayProcess
from tests.support import metric_value, wait_for

# Far less than the tens of seconds a CPU needs to generate a whole context's worth of tokens.
CANCEL_WITHIN_S = 3.0


def _active(triton: Any) -> float:
    return metric_value(triton.metrics_url, "nv_trt_llm_request_metrics", request_type="active")


# The default shares gRPC streams and stops requests by id; `triton_streams: 0` cancels RPCs.
GATEWAYS = pytest.mark.parametrize("gateway_kind", ["gateway", "unshared_gateway"])


@pytest.fixture
def any_gateway(request: pytest.FixtureRequest, gateway_kind: str) -> GatewayProcess:
    return request.getfixturevalue(gateway_kind)


@GATEWAYS
def test_disconnect_mid_stream_cancels_the_triton_request(
    any_gateway: GatewayProcess, triton: Any, model_id: str, long_generation: dict[str, Any]
) -> None:
    gateway = any_gateway
    body = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    url = f"{gateway.base_url}/chat/completions"
    with httpx.stream(
        "POST", url, json={**body, **long_generation}, headers=gateway.headers, timeout=30
    ) as response:
        events = (line for line in response.iter_lines() if line)
        for _ in range(4):
            next(events)
        assert wait_for(lambda: _active(triton) >= 1, timeout=2)  # the gauge is sampled
    assert wait_for(lambda: _active(triton) == 0, timeout=CANCEL_WITHIN_S)


@GATEWAYS
def test_disconnect_while_waiting_for_a_whole_answer_cancels_the_triton_request(
    any_gateway: GatewayProcess, triton: Any, model_id: str, long_generation: dict[str, Any]
) -> None:
    gateway = any_gateway
    body = {"model": model_id, "prompt": "Once upon a time", **long_generation}
    timeout = httpx.Timeout(30, read=2)
    with ThreadPoolExecutor(1) as pool:
        request = pool.submit(
            httpx.post,
            f"{gateway.base_url}/completions",
            json=body,
            headers=gateway.headers,
            timeout=timeout,
        )
        assert wait_for(lambda: _active(triton) >= 1, timeout=2)
        with pytest.raises(httpx.ReadTimeout):
            request.result()
    assert wait_for(lambda: _active(triton) == 0, timeout=CANCEL_WITHIN_S)

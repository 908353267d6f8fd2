"""Under load, the engine stops work its clients gave up on (queued or running), and Triton's log
stays clean; measured with the engine's own counters and Triton's own log."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import openai

from gateway.local.triton import TritonProcess
from tests.gateway_fixtures import GatewayProcess
from tests.integration.test_triton import _tensor, infer_stream, text_inputs
from tests.support import metric_value, wait_for

STREAMS = 14  # more than the engine's 8 slots: 6 of them wait in its queue
MAX_TOKENS = 200
EVENTS_BEFORE_HANGING_UP = 3
# The log line of the Python backend's race on async `execute` coroutines that end at once.
FUTURE_ERROR = "Cannot remove future from background"


def _readings(triton: TritonProcess) -> tuple[float, float, float]:
    url = triton.metrics_url
    return (
        metric_value(url, "nv_trt_llm_request_metrics", request_type="active"),
        metric_value(url, "nv_trt_llm_request_metrics", request_type="waiting"),
        metric_value(url, "nv_moe_engine_steps_total", kind="decode_tokens"),
    )


def settled_decode_tokens(triton: TritonProcess, timeout: float = 30.0) -> float:
    """The engine's decode-token counter once the engine is idle and its metrics (published
    every 100 ms) have stayed the same for 250 ms."""
    seen: list[tuple[float, float, float]] = []

    def settled() -> bool:
        now = _readings(triton)
        same = bool(seen) and now == seen[-1] and now[0] == now[1] == 0
        seen.append(now)
        return same

    assert wait_for(settled, timeout=timeout, interval=0.25), seen[-3:]
    return seen[-1][2]


async def _hang_up_after_a_few_events(gateway: GatewayProcess, model_id: str, i: int) -> int:
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=gateway.token, max_retries=0, timeout=60
    ) as client:
        stream = await client.chat.completions.create(
            model=model_id,
            messages=[{"role": "user", "content": f"Tell me a long story, number {i}."}],
            max_tokens=MAX_TOKENS,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        events = 0
        async for _ in stream:
            events += 1
            if events >= EVENTS_BEFORE_HANGING_UP:
                break
        await stream.close()
        return events


def test_streams_dropped_under_load_stop_queued_and_running_requests(
    gateway: GatewayProcess, triton: TritonProcess, model_id: str
) -> None:
    before = settled_decode_tokens(triton)

    async def round_() -> list[int]:
        return await asyncio.gather(
            *(_hang_up_after_a_few_events(gateway, model_id, i) for i in range(STREAMS))
        )

    started = time.monotonic()
    events = asyncio.run(round_())
    elapsed = time.monotonic() - started
    decoded = settled_decode_tokens(triton) - before
    print(f"{STREAMS} streams: {decoded:.0f} decode tokens, round {elapsed:.2f} s")
    assert events == [EVENTS_BEFORE_HANGING_UP] * STREAMS
    # Running to the end would decode STREAMS * MAX_TOKENS (2,800); a stop that works costs a few
    # tokens per stream, whether the request was running or still queued when its client left.
    assert decoded < STREAMS * MAX_TOKENS / 10, decoded


def test_concurrent_load_leaves_no_future_errors_in_the_triton_log(
    triton: TritonProcess,
) -> None:
    """Requests that end at once (stops, engine submissions, tiny generations) are where the
    Python backend's bookkeeping of async `execute` coroutines raced and logged KeyErrors."""

    async def load() -> None:
        generations = [
            infer_stream(
                triton.grpc_url,
                "tensorrt_llm_bls",
                text_inputs(max_tokens=2, stream=True, ignore_eos=True, seed=i),
            )
            for i in range(16)
        ]
        stops = [
            infer_stream(triton.grpc_url, "tensorrt_llm_bls", _stop_inputs()) for _ in range(16)
        ]
        engine = [
            infer_stream(triton.grpc_url, "tensorrt_llm", _engine_inputs(max_tokens=2))
            for _ in range(16)
        ]
        await asyncio.gather(*generations, *stops, *engine)

    asyncio.run(load())
    settled_decode_tokens(triton)
    _wait_for_a_quiet_log(triton)
    bad = [line for line in triton.log_tail if FUTURE_ERROR in line]
    assert not bad, bad[:3]


def _wait_for_a_quiet_log(triton: TritonProcess) -> None:
    """Backend log lines reach the server's log asynchronously: wait until none has come for
    half a second."""
    seen: list[str | None] = []

    def quiet() -> bool:
        newest = triton.log_tail[-1] if triton.log_tail else None
        same = bool(seen) and newest == seen[-1]
        seen.append(newest)
        return same

    assert wait_for(quiet, timeout=10, interval=0.5)


def _stop_inputs() -> list[Any]:
    return [*text_inputs(prompt="", max_tokens=1), _tensor("stop", [True], np.bool_)]


def _engine_inputs(max_tokens: int) -> list[Any]:
    return [
        _tensor("input_ids", [1, 2, 3, 4], np.int32),
        _tensor("input_lengths", [4], np.int32),
        _tensor("request_output_len", [max_tokens], np.int32),
        _tensor("streaming", [True], np.bool_),
        _tensor("ignore_eos", [True], np.bool_),
    ]

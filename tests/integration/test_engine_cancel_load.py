"""Under load, the engine stops work its clients gave up on (queued or running), Triton's log
stays clean, and a flood beyond the models' limits is refused rather than stalling everyone;
measured with the engine's own counters, Triton's own log and the responses themselves."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import openai
import pytest
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.local.repository import fill_repository
from gateway.local.triton import TritonProcess
from tests.gateway_fixtures import GatewayProcess
from tests.integration.test_triton import PROMPT, _raw_request, _tensor, infer_stream, text_inputs
from tests.support import free_port, metric_value, wait_for

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


@pytest.mark.parametrize("gateway_kind", ["gateway", "unshared_gateway"])
def test_streams_dropped_under_load_stop_queued_and_running_requests(
    request: pytest.FixtureRequest, gateway_kind: str, triton: TritonProcess, model_id: str
) -> None:
    gateway = request.getfixturevalue(gateway_kind)
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


# --- a flood beyond the models' limits ---------------------------------------------------------

FLOOD = 200


@pytest.fixture(scope="module")
def small_triton(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Triton of its own whose limits are small, so that a flood is cheap to exceed them."""
    repo = fill_repository(tmp_path_factory.mktemp("small") / "cpu", model_dir=tiny_model_dir)
    for model, key, limit in (
        ("tensorrt_llm_bls", "max_inflight_requests", 32),
        ("tensorrt_llm_bls", "max_pending_engine_requests", 4),
        ("tensorrt_llm", "max_queue_size", 8),
    ):
        config = repo / model / "config.pbtxt"
        pattern = rf'(key: "{key}"\s*value: {{ string_value: )"\d+"'
        text, found = re.subn(pattern, rf'\1"{limit}"', config.read_text())
        assert found == 1, key
        config.write_text(text)
    server = TritonProcess(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    server.start()
    yield server
    server.stop()


async def _flood(url: str, requests: list[Any]) -> tuple[int, list[str]]:
    """Send every request on one shared stream; (finals without error, error messages)."""
    async with grpc.aio.insecure_channel(url) as channel:
        call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
        for request in requests:
            await call.write(request)
        ok, errors = 0, []
        while ok + len(errors) < len(requests):
            response = await call.read()
            if response.error_message:
                errors.append(response.error_message)
            elif response.infer_response.parameters["triton_final_response"].bool_param:
                ok += 1
        call.cancel()
        return ok, errors


def test_a_flood_beyond_the_limits_is_refused_and_the_server_keeps_serving(
    small_triton: TritonProcess,
) -> None:
    bls_requests = [
        _raw_request(f"b{i}", text_input=PROMPT, max_tokens=2, stream=True, ignore_eos=True)
        for i in range(FLOOD)
    ]
    ok, errors = asyncio.run(asyncio.wait_for(_flood(small_triton.grpc_url, bls_requests), 120))
    assert ok >= 32 and errors and all("in flight" in e for e in errors), errors[:3]

    engine_requests = []
    for i in range(FLOOD):
        request = _raw_request(
            f"e{i}", input_ids=5, input_lengths=1, request_output_len=2, streaming=True
        )
        request.model_name = "tensorrt_llm"
        engine_requests.append(request)
    ok, errors = asyncio.run(asyncio.wait_for(_flood(small_triton.grpc_url, engine_requests), 120))
    assert ok >= 16 and errors and all("in flight" in e for e in errors), errors[:3]

    # A prompt batch is one request too many, not a crash; and the server serves the next one.
    batch = [
        grpcclient.InferInput("text_input", [2, 1], "BYTES"),
        grpcclient.InferInput("max_tokens", [2, 1], "INT32"),
    ]
    batch[0].set_data_from_numpy(np.asarray([[b"a"], [b"b"]], dtype=np.object_))
    batch[1].set_data_from_numpy(np.asarray([[2], [2]], dtype=np.int32))
    with pytest.raises(InferenceServerException, match="batch of 2"):
        asyncio.run(infer_stream(small_triton.grpc_url, "tensorrt_llm_bls", batch))
    responses = asyncio.run(
        infer_stream(
            small_triton.grpc_url, "tensorrt_llm_bls", text_inputs(max_tokens=4, ignore_eos=True)
        )
    )
    assert responses and small_triton.is_ready()

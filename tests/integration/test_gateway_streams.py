"""The gateway's shared gRPC streams to Triton: many requests on a few long-lived streams, each
told apart by its own Triton request id and stopped by id when its client leaves, even while it
still waits for an engine slot; the streams come back after Triton restarts; and with
`triton_streams: 0` every request has its own RPC again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from bench.echo_repository import bench_repository
from gateway.local.triton import TritonProcess
from tests.gateway_fixtures import GatewayProcess, start_gateway, stop_gateway
from tests.support import free_port, metric_value, wait_for

# The CPU profile's engine_max_batch_size: requests beyond it wait for a slot.
ENGINE_SLOTS = 8
# Far less than the tens of seconds a CPU needs to generate a whole context's worth of tokens.
CANCEL_WITHIN_S = 3.0
SHARED_ID = "same-client-id-42"


def _gauge(triton: Any, kind: str) -> float:
    return metric_value(triton.metrics_url, "nv_trt_llm_request_metrics", request_type=kind)


@pytest.fixture
def idle_engine(triton: Any) -> None:
    """Nothing left running on the engine by an earlier test."""
    assert wait_for(lambda: _gauge(triton, "active") == 0 and _gauge(triton, "waiting") == 0, 10)


def _raw_post(gateway: GatewayProcess, path: str, body: dict[str, Any]) -> socket.socket:
    """Send a POST on a socket of its own and leave the answer unread: closing the socket is a
    client leaving, whether or not the gateway has answered yet."""
    url = urlsplit(gateway.url)
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {gateway.token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    sock.sendall(head.encode() + payload)
    return sock


def test_client_leaving_while_its_request_waits_for_an_engine_slot_drops_the_request(
    gateway: GatewayProcess,
    triton: Any,
    model_id: str,
    long_generation: dict[str, Any],
    idle_engine: None,
) -> None:
    body = {
        "model": model_id,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "stream": True,
        **long_generation,
    }
    url = f"{gateway.base_url}/chat/completions"
    waiting: socket.socket | None = None
    with contextlib.ExitStack() as streams, httpx.Client(headers=gateway.headers) as http:
        try:
            # Dropping a response's line iterator closes the response: keep them all.
            readers = []
            for _ in range(ENGINE_SLOTS):
                response = streams.enter_context(http.stream("POST", url, json=body, timeout=30))
                assert response.status_code == 200
                readers.append(line for line in response.iter_lines() if line)
                assert next(readers[-1]).startswith("data: ")
            assert wait_for(lambda: _gauge(triton, "active") == ENGINE_SLOTS, timeout=5)

            waiting = _raw_post(gateway, "/v1/chat/completions", body)
            assert wait_for(lambda: _gauge(triton, "waiting") >= 1, timeout=5)
            waiting.close()
            assert wait_for(lambda: _gauge(triton, "waiting") == 0, timeout=2)
            assert _gauge(triton, "active") == ENGINE_SLOTS  # the others are untouched
        finally:
            if waiting is not None:
                waiting.close()
            streams.close()
    assert wait_for(lambda: _gauge(triton, "active") == 0, timeout=CANCEL_WITHIN_S)
    assert _gauge(triton, "waiting") == 0


PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time",
    "import json\n",
    "The quick brown fox",
    "1, 2, 3, 4,",
    "Dear Sir or Madam,",
    "SELECT * FROM",
]


def _complete(client: openai.OpenAI, model_id: str, prompt: str, **kw: Any) -> str:
    kw = {"max_tokens": 10, "temperature": 0, **kw}
    return client.completions.create(model=model_id, prompt=prompt, **kw).choices[0].text


def test_concurrent_requests_with_the_same_request_id_each_get_their_own_answer(
    client: openai.OpenAI, model_id: str
) -> None:
    alone = [_complete(client, model_id, p) for p in PROMPTS]
    assert len(set(alone)) > 1  # different prompts, different answers: a mix-up would show
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(
            pool.map(
                lambda p: _complete(client, model_id, p, extra_headers={"x-request-id": SHARED_ID}),
                PROMPTS,
            )
        )
    assert together == alone


def test_client_leaving_stops_only_its_own_request_when_request_ids_are_shared(
    gateway: GatewayProcess,
    triton: Any,
    model_id: str,
    long_generation: dict[str, Any],
    idle_engine: None,
) -> None:
    url = f"{gateway.base_url}/completions"
    headers = {**gateway.headers, "x-request-id": SHARED_ID}
    long = {"model": model_id, "prompt": "Once upon a time", "stream": True, **long_generation}
    short = {**long, "max_tokens": 600, "stream_options": {"include_usage": True}}
    with httpx.Client(headers=headers, timeout=30) as http:
        with http.stream("POST", url, json=long) as leaving:
            assert leaving.headers["x-request-id"] == SHARED_ID
            leaving_lines = (line for line in leaving.iter_lines() if line)
            next(leaving_lines)  # (dropping the iterator would already close the response)
            with http.stream("POST", url, json=short) as staying:
                assert staying.headers["x-request-id"] == SHARED_ID
                lines = (line for line in staying.iter_lines() if line.startswith("data: {"))
                events = [next(lines)]
                leaving.close()  # leave while the other request still generates
                # The one left is stopped, the other one still runs...
                assert wait_for(lambda: _gauge(triton, "active") == 1, timeout=CANCEL_WITHIN_S)
                events += lines  # ...to its end
        usage = json.loads(events[-1][len("data: ") :])["usage"]
    assert usage["completion_tokens"] == 600
    finishes = [json.loads(e[6:])["choices"] for e in events]
    assert [c[0]["finish_reason"] for c in finishes if c and c[0]["finish_reason"]] == ["length"]
    assert wait_for(lambda: _gauge(triton, "active") == 0, timeout=CANCEL_WITHIN_S)


@pytest.fixture
def echo_repository(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A repository with only the `echo` model: Triton starts in seconds."""
    return bench_repository(tmp_path / "repo", tiny_model_dir, with_moe=False)


def _echo_triton(repository: Path, grpc_port: int) -> TritonProcess:
    server = TritonProcess(
        repository, http_port=free_port(), grpc_port=grpc_port, metrics_port=free_port()
    )
    server.start(timeout=60)
    return server


def test_gateway_serves_again_after_triton_restarts(
    echo_repository: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    grpc_port = free_port()
    servers: list[TritonProcess] = []
    gateway: GatewayProcess | None = None
    try:
        servers.append(_echo_triton(echo_repository, grpc_port))
        gateway = start_gateway(
            tmp_path / "gateway",
            triton_urls=[f"127.0.0.1:{grpc_port}"],
            config={
                "models": [{"id": "echo", "route": "echo", "tokenizer_dir": str(tiny_model_dir)}],
                "discover_models": False,
            },
        )
        with openai.OpenAI(
            base_url=gateway.base_url, api_key=gateway.token, max_retries=0, timeout=10
        ) as client:

            def ask() -> str:
                reply = client.completions.create(model="echo", prompt="ping pong", max_tokens=2)
                return reply.choices[0].text

            def ask_streamed() -> str:
                chunks = client.completions.create(
                    model="echo", prompt="ping pong", max_tokens=2, stream=True
                )
                return "".join(c.choices[0].text for c in chunks if c.choices)

            assert ask() == ask_streamed() == " ping pong"

            servers[0].stop()
            for attempt in (ask, ask_streamed):
                started = time.monotonic()
                with pytest.raises(openai.APIStatusError) as info:
                    attempt()
                assert info.value.status_code == 503
                assert time.monotonic() - started < 5  # an answer, not a hang until the timeout

            servers.append(_echo_triton(echo_repository, grpc_port))
            deadline = time.monotonic() + 10
            answers: list[str] = []
            while time.monotonic() < deadline and len(answers) < 2:
                with contextlib.suppress(openai.APIStatusError):
                    answers = [ask(), ask_streamed()]
                if len(answers) < 2:
                    time.sleep(0.2)
            assert answers == [" ping pong", " ping pong"]
    finally:
        if gateway is not None:
            stop_gateway(gateway)
        for server in servers:
            server.stop()


def test_one_call_per_request_still_serves_completions(
    unshared_gateway: GatewayProcess, client: openai.OpenAI, model_id: str
) -> None:
    with openai.OpenAI(
        base_url=unshared_gateway.base_url, api_key=unshared_gateway.token, max_retries=0
    ) as unshared:
        whole = _complete(unshared, model_id, "Once upon a time", max_tokens=16)
        streamed = unshared.completions.create(
            model=model_id, prompt="Once upon a time", max_tokens=16, temperature=0, stream=True
        )
        chunks = list(streamed)
    assert whole and "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    # The same answer as through the shared streams.
    assert _complete(client, model_id, "Once upon a time", max_tokens=16) == whole


def test_many_concurrent_streams_on_shared_calls_each_get_their_own_answer(
    gateway: GatewayProcess, client: openai.OpenAI, model_id: str
) -> None:
    # Prompts of different lengths and answers of different lengths: a response delivered to the
    # wrong request would show in its text, its chunk count or its usage.
    count = 32

    def request(i: int) -> dict[str, Any]:
        return {
            "model": model_id,
            "messages": [{"role": "user", "content": "Tell me more. " * (i + 1)}],
            "max_tokens": 2 + i % 7,
            "temperature": 0,
            "extra_body": {"ignore_eos": True},
        }

    alone = [client.chat.completions.create(**request(i), logprobs=True) for i in range(count)]
    assert len({a.choices[0].message.content for a in alone}) > 1

    async def stream_all() -> list[list[Any]]:
        async with openai.AsyncOpenAI(
            base_url=gateway.base_url, api_key=gateway.token, max_retries=0, timeout=60
        ) as sdk:

            async def one(i: int) -> list[Any]:
                stream = await sdk.chat.completions.create(
                    **request(i), stream=True, stream_options={"include_usage": True}
                )
                return [chunk async for chunk in stream]

            return await asyncio.gather(*(one(i) for i in range(count)))

    streams = asyncio.run(stream_all())
    for i, (chunks, expected) in enumerate(zip(streams, alone, strict=True)):
        *chunks, last = chunks
        assert last.choices == [] and last.usage == expected.usage
        assert last.usage is not None and last.usage.completion_tokens == request(i)["max_tokens"]
        choices = [c.choices[0] for c in chunks]
        assert choices[0].delta.role == "assistant"
        assert [c.finish_reason for c in choices] == [None] * (len(choices) - 1) + ["length"]
        content = [c.delta.content for c in choices if c.delta.content]
        # One chunk per token that has text (a special token generated past ignore_eos has none).
        tokens = expected.choices[0].logprobs.content  # type: ignore[union-attr]
        assert len(content) == sum(1 for t in tokens if t.token)
        assert "".join(content) == expected.choices[0].message.content


@pytest.fixture(scope="module")
def impatient_gateway(
    triton: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway that gives Triton one second per request."""
    process = start_gateway(
        tmp_path_factory.mktemp("impatient-gateway"),
        triton_urls=[triton.grpc_url],
        config={"cache": {"enabled": False}, "triton": {"timeout_s": 1.0}},
    )
    yield process
    stop_gateway(process)


def test_upstream_timeout_is_a_504_and_stops_the_engine_request(
    impatient_gateway: GatewayProcess,
    triton: Any,
    model_id: str,
    long_generation: dict[str, Any],
    idle_engine: None,
) -> None:
    body = {"model": model_id, "prompt": "Once upon a time", **long_generation}
    started = time.monotonic()
    response = httpx.post(
        f"{impatient_gateway.base_url}/completions",
        json=body,
        headers=impatient_gateway.headers,
        timeout=30,
    )
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 5
    assert wait_for(lambda: _gauge(triton, "active") == 0, timeout=CANCEL_WITHIN_S)

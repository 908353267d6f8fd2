"""Failures of real processes under load, as a client sees them: a Triton replica killed while
requests and streams are in flight, every replica down, a replica coming back, a configuration
reload that adds and removes replicas, affinity, and a storm of clients hanging up."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.local.triton import TritonProcess
from tests.gateway_fixtures import GatewayProcess, start_gateway, stop_gateway
from tests.support import free_port, metric_value, wait_for

OK = "localmoe_upstream_requests_total"


def _replica(model_repository: Path) -> TritonProcess:
    return TritonProcess(
        model_repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )


@pytest.fixture(scope="module")
def replicas(model_repository: Path) -> Iterator[list[TritonProcess]]:
    """Two Triton replicas of this module's own: the tests kill and restart them."""
    servers = [_replica(model_repository), _replica(model_repository)]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def balanced(
    replicas: list[TritonProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway(
        tmp_path_factory.mktemp("resilience"),
        triton_urls=[r.grpc_url for r in replicas],
        config={"cache": {"enabled": False}},
    )
    yield process
    stop_gateway(process)


@pytest.fixture
def both_up(replicas: list[TritonProcess]) -> Iterator[list[TritonProcess]]:
    """Every replica is up when the test starts, and up and idle when it ends: a test that
    failed with work still in an engine must not make the next one time out as well."""
    for replica in replicas:
        if not replica.is_ready():
            replica.start()
    yield replicas
    for replica in replicas:
        if not replica.is_ready():
            replica.kill()
            replica.start()
    if not wait_for(lambda: all(_engine_load(r) == (0, 0) for r in replicas), timeout=120):
        for replica in replicas:  # still generating: start it afresh
            replica.kill()
            replica.start()


def _engine_load(replica: TritonProcess) -> tuple[float, float]:
    """(active, waiting) requests in the replica's engine, from its TensorRT-LLM gauges."""
    name = "nv_trt_llm_request_metrics"
    return (
        metric_value(replica.metrics_url, name, request_type="active"),
        metric_value(replica.metrics_url, name, request_type="waiting"),
    )


def _client(gateway: GatewayProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=gateway.token, max_retries=0, timeout=60
    )


async def _completion(client: openai.AsyncOpenAI, model: str, max_tokens: int) -> Any:
    try:
        return await client.completions.create(
            model=model, prompt="Tell me about", max_tokens=max_tokens,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
    except openai.APIError as exc:
        return exc


async def _burst(gateway: GatewayProcess, model: str, count: int, max_tokens: int) -> list[Any]:
    async with _client(gateway) as client:
        return await asyncio.gather(*(_completion(client, model, max_tokens) for _ in range(count)))


def _errors(results: list[Any]) -> list[str]:
    """The failures among a burst's results (`_completion` returns them instead of raising)."""
    return [repr(r) for r in results if isinstance(r, Exception)]


def _settle(gateway: GatewayProcess, model: str) -> None:
    """Wait until the gateway sees every replica ready with its circuit closed (a restarted
    replica's circuit is half-open: a few short requests close it)."""

    def settled() -> bool:
        upstreams = httpx.get(f"{gateway.url}/health/ready", timeout=5).json().get("upstreams")
        if upstreams and all(u["ready"] and u["circuit"] == "closed" for u in upstreams):
            return True
        asyncio.run(_burst(gateway, model, 2, 1))
        return False

    assert wait_for(settled, timeout=30, interval=0.2), "the replicas did not come back"


def _served_by(gateway: GatewayProcess, replica: TritonProcess) -> float:
    return metric_value(f"{gateway.url}/metrics", OK, upstream=replica.grpc_url, outcome="ok")


def test_killing_a_replica_under_load_fails_no_request_and_ends_its_streams(
    balanced: GatewayProcess, both_up: list[TritonProcess], model_id: str
) -> None:
    victim = both_up[0]
    _settle(balanced, model_id)

    started = asyncio.Semaphore(0)

    async def stream_until_the_end(client: openai.AsyncOpenAI) -> tuple[str, float]:
        ended = "finished"
        try:
            stream = await client.chat.completions.create(
                model=model_id, messages=[{"role": "user", "content": "A long story, please."}],
                max_tokens=1500, stream=True, extra_body={"ignore_eos": True},
            )  # fmt: skip
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    started.release()  # output reached the client: no retry may hide a cut now
                    break
            async for _ in stream:
                pass
        except openai.APIError:
            ended = "error event"
        return ended, time.monotonic()

    async def scenario() -> tuple[list[Any], list[tuple[str, float]], float]:
        async with _client(balanced) as client:
            streams = [asyncio.create_task(stream_until_the_end(client)) for _ in range(4)]
            for _ in streams:  # every stream has output before the replica dies
                await asyncio.wait_for(started.acquire(), timeout=30)
            burst = asyncio.create_task(_burst(balanced, model_id, 16, 48))
            await asyncio.sleep(0.5)  # requests and streams are on both replicas now
            victim.kill()
            killed = time.monotonic()
            return await burst, await asyncio.gather(*streams), killed

    results, streams, killed = asyncio.run(scenario())
    assert _errors(results) == []
    assert all(r.usage.completion_tokens == 48 for r in results)
    cut = [at - killed for how, at in streams if how == "error event"]
    assert cut, "no stream was on the killed replica"
    assert max(cut) < 2.0  # ended with an error event, not hanging


def test_every_replica_down_is_a_fast_503_and_service_returns_within_5_s(
    balanced: GatewayProcess, both_up: list[TritonProcess], model_id: str
) -> None:
    _settle(balanced, model_id)
    for replica in both_up:
        replica.kill()
    ready = f"{balanced.url}/health/ready"
    assert wait_for(lambda: httpx.get(ready, timeout=5).status_code == 503, timeout=10)
    body = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with httpx.Client(headers=balanced.headers, timeout=10) as http:
        http.post(f"{balanced.base_url}/chat/completions", json=body)  # warm the connection
        for _ in range(5):
            started = time.monotonic()
            refused = http.post(f"{balanced.base_url}/chat/completions", json=body)
            took = time.monotonic() - started
            assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["code"] == "upstream_unavailable"
            assert took < 0.1, f"took {took * 1000:.0f} ms"
        both_up[1].start()
        back = time.monotonic()

        def served() -> bool:
            return http.post(f"{balanced.base_url}/chat/completions", json=body).status_code == 200

        assert wait_for(served, timeout=5, interval=0.1), "not back within 5 s"
        assert time.monotonic() - back < 5


def test_a_restarted_replica_is_used_again_within_5_s(
    balanced: GatewayProcess, both_up: list[TritonProcess], model_id: str
) -> None:
    victim = both_up[1]
    _settle(balanced, model_id)
    victim.kill()
    asyncio.run(_burst(balanced, model_id, 4, 2))  # notices it is gone
    time.sleep(3)  # an outage long enough for gRPC's reconnect backoff to have grown
    victim.start()
    back = time.monotonic()
    served = _served_by(balanced, victim)

    def used_again() -> bool:
        asyncio.run(_burst(balanced, model_id, 2, 1))
        return _served_by(balanced, victim) > served

    assert wait_for(used_again, timeout=5, interval=0.1), "replica not used again within 5 s"
    assert time.monotonic() - back < 5


def test_reload_adds_and_removes_a_replica_under_load_and_refuses_a_bad_file(
    both_up: list[TritonProcess], model_id: str, tmp_path: Path
) -> None:
    first, second = both_up
    config = tmp_path / "gateway.yaml"

    def write(urls: list[str]) -> None:
        config.write_text(yaml.safe_dump({"triton": {"urls": urls}, "cache": {"enabled": False}}))

    write([first.grpc_url])
    gateway = start_gateway(tmp_path, triton_urls=[], args=["--config", str(config)])
    failures: list[str] = []
    done = threading.Event()

    def load() -> None:
        with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.token, max_retries=0) as c:
            while not done.is_set():
                try:
                    c.completions.create(model=model_id, prompt="Hi", max_tokens=8)
                except openai.APIError as exc:
                    failures.append(str(exc))

    workers = [threading.Thread(target=load) for _ in range(4)]
    try:
        for worker in workers:
            worker.start()
        time.sleep(0.5)
        assert _served_by(gateway, second) == 0
        write([first.grpc_url, second.grpc_url])
        gateway.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: _served_by(gateway, second) > 0, timeout=10)
        write([second.grpc_url])
        gateway.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: gateway.log().count("configuration reloaded") >= 2, timeout=10)
        time.sleep(0.5)
        before = _served_by(gateway, first)
        time.sleep(1.0)
        assert _served_by(gateway, first) == before  # no new requests on the removed one
        config.write_text("triton: {urls: [not a valid url]}\n")
        gateway.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reload refused" in gateway.log(), timeout=10)
        served = _served_by(gateway, second)
        assert wait_for(lambda: _served_by(gateway, second) > served, timeout=10)
    finally:
        done.set()
        for worker in workers:
            worker.join(timeout=60)
        stop_gateway(gateway)
    assert failures == []


def test_affinity_keeps_each_conversation_on_one_replica(
    both_up: list[TritonProcess], model_id: str, tmp_path: Path
) -> None:
    gateway = start_gateway(
        tmp_path,
        triton_urls=[r.grpc_url for r in both_up],
        config={"cache": {"enabled": False}, "triton": {"affinity": True}},
    )
    try:
        homes: dict[str, set[str]] = {}
        with httpx.Client(headers=gateway.headers, timeout=30) as http:
            for turn in range(3):
                for conversation in range(6):
                    session = f"conversation-{conversation}"
                    before = {r.grpc_url: _served_by(gateway, r) for r in both_up}
                    reply = http.post(
                        f"{gateway.base_url}/chat/completions",
                        headers={"x-session-id": session},
                        json={"model": model_id, "max_tokens": 2,
                              "messages": [{"role": "user", "content": f"turn {turn}"}]},
                    )  # fmt: skip
                    assert reply.status_code == 200
                    grew = [url for url, n in before.items() if _served_by_url(gateway, url) > n]
                    homes.setdefault(session, set()).update(grew)
        assert all(len(replicas) == 1 for replicas in homes.values()), homes
        assert len({next(iter(h)) for h in homes.values()}) == 2  # both replicas have some
    finally:
        stop_gateway(gateway)


def _served_by_url(gateway: GatewayProcess, url: str) -> float:
    return metric_value(f"{gateway.url}/metrics", OK, upstream=url, outcome="ok")


def _long_stream(
    gateway: GatewayProcess, model: str, paused: TritonProcess, pause_s: float
) -> tuple[Any, float, float]:
    """Stream 120 tokens through `gateway`, with `paused` frozen for `pause_s` seconds right
    after the first one; the stream's last chunk, or the error that ended it, and when."""

    async def scenario() -> tuple[Any, float, float]:
        async with _client(gateway) as client:
            stream = await client.completions.create(
                model=model, prompt="Once upon a time", max_tokens=120, stream=True,
                extra_body={"ignore_eos": True},
            )  # fmt: skip
            last: Any = None
            frozen_at = 0.0
            try:
                async for chunk in stream:
                    last = chunk
                    if not frozen_at:
                        paused.freeze()
                        frozen_at = time.monotonic()
                        asyncio.get_running_loop().call_later(pause_s, paused.thaw)
            except openai.APIError as exc:
                last = exc
            return last, frozen_at, time.monotonic()

    try:
        return asyncio.run(scenario())
    finally:
        paused.thaw()


@pytest.fixture
def gateway_on_one(both_up: list[TritonProcess], tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway of its own on the first replica only, so a stream is sure to be on it."""
    gateway = start_gateway(
        tmp_path, triton_urls=[both_up[0].grpc_url], config={"cache": {"enabled": False}}
    )
    yield gateway
    stop_gateway(gateway)


def test_a_replica_that_stalls_for_one_probe_keeps_its_streams(
    gateway_on_one: GatewayProcess, both_up: list[TritonProcess], model_id: str
) -> None:
    last, _, _ = _long_stream(gateway_on_one, model_id, both_up[0], pause_s=2.5)
    assert not isinstance(last, Exception), last
    assert last.choices[0].finish_reason == "length"
    assert "did not answer its readiness probe" in gateway_on_one.log()  # the stall was seen
    assert "stopped answering" not in gateway_on_one.log()


def test_a_replica_that_stops_answering_has_its_streams_ended(
    gateway_on_one: GatewayProcess, both_up: list[TritonProcess], model_id: str
) -> None:
    replica = both_up[0]
    try:
        last, frozen_at, ended_at = _long_stream(gateway_on_one, model_id, replica, pause_s=30)
        assert isinstance(last, openai.APIError), last  # an error event, not a hang
        assert ended_at - frozen_at < 25
        assert "stopped answering" in gateway_on_one.log()
    finally:
        replica.kill()  # its RPCs were cancelled with responses in flight: start it afresh
        replica.start()


def test_a_storm_of_clients_hanging_up_leaves_the_engine_idle_and_serving(
    balanced: GatewayProcess, both_up: list[TritonProcess], model_id: str
) -> None:
    body = {
        "model": model_id, "prompt": "Once upon a time", "max_tokens": 400, "stream": True,
        "ignore_eos": True,
    }  # fmt: skip
    clients = 200
    waited: list[float] = []  # each client's wait for its second event

    async def hang_up_early(http: httpx.AsyncClient) -> None:
        start = time.monotonic()
        async with http.stream("POST", f"{balanced.base_url}/completions", json=body) as reply:
            seen = 0
            async for line in reply.aiter_lines():
                seen += line.startswith("data: ")
                if seen == 2:
                    waited.append(time.monotonic() - start)
                    return

    async def storm() -> None:
        # 200 clients queue for 16 engine slots: the last ones legitimately wait for all the
        # others, so the bound is generous; engines that kept generating for clients that left
        # are what the idle check below catches.
        limits = httpx.Limits(max_connections=300)
        async with httpx.AsyncClient(headers=balanced.headers, timeout=180, limits=limits) as http:
            await asyncio.gather(*(hang_up_early(http) for _ in range(clients)))

    started = time.monotonic()
    try:
        asyncio.run(storm())
    except httpx.TimeoutException:
        pytest.fail(
            f"{clients - len(waited)} of {clients} clients got no second event in 180 s;"
            f" engines (active, waiting): {[_engine_load(r) for r in both_up]}"
        )
    took = time.monotonic() - started
    assert wait_for(lambda: all(_engine_load(r) == (0, 0) for r in both_up), timeout=20), (
        f"the engines kept generating for clients that left: {[_engine_load(r) for r in both_up]}"
        f" after a storm of {took:.0f} s"
    )
    assert wait_for(
        lambda: (
            metric_value(f"{balanced.url}/metrics", "localmoe_upstream_requests_in_flight") == 0
        ),
        timeout=10,
    )
    results = asyncio.run(_burst(balanced, model_id, 2, 4))
    assert _errors(results) == []
    assert all(r.usage.completion_tokens == 4 for r in results)


def test_engine_aware_balancing_reads_each_replica_and_serves(
    both_up: list[TritonProcess], model_id: str, tmp_path: Path
) -> None:
    metrics = {r.grpc_url: r.metrics_url for r in both_up}
    gateway = start_gateway(
        tmp_path,
        triton_urls=[r.grpc_url for r in both_up],
        config={
            "cache": {"enabled": False},
            "triton": {"balancing": "engine_aware", "metrics_urls": metrics,
                       "engine_poll_s": 0.1},
        },
    )  # fmt: skip
    try:
        for _ in range(3):  # readings while both engines have work
            results = asyncio.run(_burst(gateway, model_id, 8, 24))
            assert _errors(results) == []
            assert all(r.usage.completion_tokens == 24 for r in results)
        served = [_served_by(gateway, r) for r in both_up]
        assert sum(served) == 24 and min(served) > 0, served
    finally:
        stop_gateway(gateway)

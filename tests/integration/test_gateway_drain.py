"""SIGTERM while a stream is open: the gateway stops taking connections at once, the open stream
runs to its end (finish reason and `[DONE]`), then the process exits 0 — what a Kubernetes
rollout relies on (helm/localmoe: preStop, then SIGTERM, within the grace period)."""

from __future__ import annotations

import json
import signal
import socket
import time
from typing import Any

import httpx

from tests.gateway_fixtures import start_gateway, stop_gateway


def _refuses_connections(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return False
    except OSError:
        return True


def test_sigterm_lets_an_open_stream_finish_and_refuses_new_connections(
    triton: Any, model_id: str, tmp_path: Any
) -> None:
    gateway = start_gateway(
        tmp_path, triton_urls=[triton.grpc_url], env={"LOCALMOE_DRAIN_TIMEOUT_S": "30"}
    )
    try:
        body = {
            "model": model_id,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 1000,
            "n": 3,
            "stream": True,
            "ignore_eos": True,
            "cache": False,
        }
        events: list[str] = []
        refused_during_drain = False
        with httpx.stream(
            "POST",
            f"{gateway.base_url}/chat/completions",
            json=body,
            headers=gateway.headers,
            timeout=60,
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            for line in lines:  # the first content chunk, then the signal
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                    if len(events) == 3:
                        break
            gateway.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            for line in lines:
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                if not refused_during_drain and time.monotonic() - signalled > 0.3:
                    refused_during_drain = _refuses_connections(gateway.url)
        drained_for = time.monotonic() - signalled
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert finishes.count("length") == 3
        assert drained_for > 1.5, "the stream was too short to show a drain"
        assert refused_during_drain, "a new connection was accepted during the drain"
        assert gateway.process.wait(timeout=30) == 0
    finally:
        stop_gateway(gateway)


def _open_stream(gateway: Any, model_id: str, max_tokens: int) -> Any:
    body = {
        "model": model_id,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
        "cache": False,
    }
    return httpx.stream(
        "POST", f"{gateway.base_url}/chat/completions", json=body, headers=gateway.headers,
        timeout=60,
    )  # fmt: skip


def test_sigterm_during_8_streams_finishes_all_8(triton: Any, model_id: str, tmp_path: Any) -> None:
    import threading

    gateway = start_gateway(
        tmp_path, triton_urls=[triton.grpc_url], env={"LOCALMOE_DRAIN_TIMEOUT_S": "60"}
    )
    endings: list[str] = []
    started = threading.Barrier(9)

    def read_one() -> None:
        with _open_stream(gateway, model_id, 300) as response:
            lines = response.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            started.wait()
            last = ""
            for line in lines:
                if line.startswith("data: "):
                    last = line
            endings.append(last)

    readers = [threading.Thread(target=read_one) for _ in range(8)]
    try:
        for reader in readers:
            reader.start()
        started.wait(timeout=60)
        gateway.process.send_signal(signal.SIGTERM)
        for reader in readers:
            reader.join(timeout=60)
        assert endings == ["data: [DONE]"] * 8
        assert gateway.process.wait(timeout=30) == 0
    finally:
        stop_gateway(gateway)


def test_a_stream_outliving_the_drain_ends_with_an_error_event_not_a_cut(
    triton: Any, model_id: str, tmp_path: Any
) -> None:
    gateway = start_gateway(
        tmp_path, triton_urls=[triton.grpc_url], env={"LOCALMOE_DRAIN_TIMEOUT_S": "2"}
    )
    try:
        events: list[str] = []
        with _open_stream(gateway, model_id, 1900) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                    if len(events) == 2:
                        gateway.process.send_signal(signal.SIGTERM)
                        assert _not_ready(gateway.url)  # from the signal on
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "server_shutting_down" and error["message"]
        assert gateway.process.wait(timeout=30) == 0
    finally:
        stop_gateway(gateway)


def _not_ready(url: str) -> bool:
    """A readiness probe fails: refused (the listener is closed) or 503."""
    try:
        return httpx.get(f"{url}/health/ready", timeout=5).status_code == 503
    except httpx.ConnectError:
        return True

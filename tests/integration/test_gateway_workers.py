"""`localmoe serve --workers 2`: two worker processes serve the same port, share their rate limits
through Redis, and all stop on SIGTERM."""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.gateway_fixtures import (
    GatewayProcess,
    auth,
    mint_test_token,
    start_gateway,
    stop_gateway,
)
from tests.support import wait_for, worker_pids

RPM = 12


def test_two_workers_serve_chat_completions(workers_gateway: GatewayProcess) -> None:
    assert len(worker_pids(workers_gateway)) == 2
    headers = auth(mint_test_token("workers-chat"))
    models = httpx.get(f"{workers_gateway.base_url}/models", headers=headers, timeout=10).json()
    body = {
        "model": models["data"][0]["id"],
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 2,
    }
    for _ in range(4):  # new connections each time, so both workers can take some
        response = httpx.post(
            f"{workers_gateway.base_url}/chat/completions", json=body, headers=headers, timeout=60
        )
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] >= 1


def test_workers_share_the_request_limit_through_redis(workers_gateway: GatewayProcess) -> None:
    headers = auth(mint_test_token(f"workers-{uuid.uuid4().hex}", rpm=RPM))
    url = f"{workers_gateway.base_url}/chat/completions"

    def attempt(_: int) -> int:
        # An invalid body is refused only after the request has been counted: cheap to send.
        return httpx.post(url, json={"model": 1}, headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = Counter(pool.map(attempt, range(3 * RPM)))
    assert statuses == {400: RPM, 429: 2 * RPM}


def test_sigterm_stops_every_worker_and_removes_their_folder(
    triton: Any, redis_server: Any, tmp_path: Path
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    gateway = start_gateway(
        tmp_path,
        triton_urls=[triton.grpc_url],
        env={"LOCALMOE_REDIS_URL": redis_server.url, "TMPDIR": str(temp)},
        args=["--workers", "2"],
    )
    assert [p.name[:15] for p in temp.iterdir()] == ["localmoe-serve-"]
    workers = worker_pids(gateway)
    assert len(workers) == 2
    assert stop_gateway(gateway) == 0
    assert wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), timeout=5)
    assert gateway.log().count("Finished server process") == 2
    assert not list(temp.iterdir())

"""`python -m bench.balancing`: what the balancing strategies cost and what they buy.

1. Cost: microseconds per pick for each strategy (and affinity), over 3 and 16 upstreams.
2. A slow replica: two Tritons, one made slow on purpose (a 20 ms pause after every engine step,
   `bench_step_delay_ms`: what a replica on a slower or busier machine looks like);
   three gateways in front of both — round robin, least outstanding, engine-aware — driven in
   interleaved rounds by the same async client (c=8, 16 completion tokens each); latency
   percentiles per strategy.
3. Affinity: a multi-turn chat workload (sessions by `x-session-id`, turns one after another)
   over three replicas, with affinity on and off: the share of turns that land on the replica
   that served the conversation's previous turn.

Results: `bench/results/balancing-<time>/balancing.json` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.local import paths
from gateway.local.repository import fill_repository
from gateway.local.triton import TritonProcess
from gateway.policy.tokens import mint_token
from gateway.triton.balancer import Balancer, EngineLoad

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "results"
MODEL = "tiny-moe"


@dataclass(eq=False)
class _Fake:
    url: str
    in_flight: int = 0
    engine: EngineLoad | None = None


def pick_costs(rounds: int = 100_000) -> dict[str, float]:
    """Microseconds per `Balancer.pick`, by strategy and number of upstreams."""
    costs: dict[str, float] = {}
    for count in (3, 16):
        ups = [
            _Fake(f"10.0.0.{i}:8001", i % 3, EngineLoad(i, i % 2, 8, 0.1 * (i % 5)))
            for i in range(count)
        ]
        for strategy in ("round_robin", "least_outstanding", "engine_aware"):
            balancer = Balancer(strategy)  # type: ignore[arg-type]
            seconds = timeit.timeit(lambda b=balancer, u=ups: b.pick(u), number=rounds)
            costs[f"{strategy} ×{count}"] = seconds / rounds * 1e6
        balancer = Balancer("least_outstanding")
        keys = [f"session-{i}" for i in range(1000)]
        seconds = timeit.timeit(
            lambda b=balancer, u=ups, k=keys: b.pick(u, key=k[time.perf_counter_ns() % 1000]),
            number=rounds,
        )
        costs[f"affinity ×{count}"] = seconds / rounds * 1e6
    return costs


class _Gateway:
    def __init__(self, workdir: Path, name: str, urls: list[str], triton: dict[str, Any]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.secret = secrets.token_urlsafe(32)
        config = {
            "cache": {"enabled": False},
            "log_level": "warning",
            "access_log": False,
            "triton": {"urls": urls, **triton},
        }
        path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALMOE_")}
        env["LOCALMOE_AUTH__JWT_SECRET"] = self.secret
        command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port)]
        self.log = (workdir / f"{name}.log").open("wb")
        self.process = subprocess.Popen(
            [*command, "--config", str(path)], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.headers = {"authorization": f"Bearer {mint_token(self.secret, sub='bench')}"}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway {name} exited")
            time.sleep(0.2)
        raise RuntimeError(f"gateway {name} not ready")

    def served(self, upstream: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        needle = f'localmoe_upstream_requests_total{{outcome="ok",upstream="{upstream}"}}'
        for line in text.splitlines():
            if line.startswith(needle):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@contextlib.contextmanager
def _tritons(workdir: Path, step_delays_ms: list[int]) -> Iterator[list[TritonProcess]]:
    started: list[TritonProcess] = []
    try:
        for i, delay in enumerate(step_delays_ms):
            repo = fill_repository(
                workdir / f"repo-{i}",
                model_dir=paths.default_model_dir(),
                overrides={"bench_step_delay_ms": str(delay)},
            )
            server = TritonProcess(
                repo, http_port=_free_port(), grpc_port=_free_port(), metrics_port=_free_port()
            )
            print(f"  starting Triton {i + 1}/{len(step_delays_ms)} (+{delay} ms/step)", flush=True)
            server.start()
            started.append(server)
        yield started
    finally:
        for server in started:
            server.stop()


async def _latencies(gateway: _Gateway, concurrency: int, requests: int) -> list[float]:
    body = {"model": MODEL, "prompt": "The weather", "max_tokens": 16, "ignore_eos": True}
    out: list[float] = []
    async with httpx.AsyncClient(headers=gateway.headers, timeout=120) as http:
        queue = list(range(requests))

        async def worker() -> None:
            while queue:
                queue.pop()
                started = time.perf_counter()
                response = await http.post(f"{gateway.url}/v1/completions", json=body)
                response.raise_for_status()
                out.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def slow_replica(workdir: Path, rounds: int, requests: int) -> dict[str, dict[str, float]]:
    """Latency per strategy with a slow replica beside a normal one."""
    strategies = ("round_robin", "least_outstanding", "engine_aware")
    with _tritons(workdir, [0, 20]) as (fast, slow):
        urls = [fast.grpc_url, slow.grpc_url]
        metrics = {fast.grpc_url: fast.metrics_url, slow.grpc_url: slow.metrics_url}
        gateways = {
            s: _Gateway(
                workdir, s, urls, {"balancing": s, "metrics_urls": metrics, "engine_poll_s": 0.2}
            )
            for s in strategies
        }
        try:
            samples: dict[str, list[float]] = {s: [] for s in strategies}
            for r in range(rounds):
                order = strategies if r % 2 == 0 else tuple(reversed(strategies))
                for s in order:
                    print(f"  round {r + 1}/{rounds}: {s}", flush=True)
                    samples[s] += asyncio.run(_latencies(gateways[s], 8, requests))
            return {s: _percentiles(v) for s, v in samples.items()}
        finally:
            for gateway in gateways.values():
                gateway.stop()


def affinity_share(workdir: Path, sessions: int, turns: int) -> dict[str, float]:
    """Share of turns served by the replica of the conversation's previous turn."""
    out: dict[str, float] = {}
    with _tritons(workdir, [0, 0, 0]) as servers:
        urls = [s.grpc_url for s in servers]
        for affinity in (False, True):
            name = "affinity" if affinity else "no-affinity"
            gateway = _Gateway(workdir, name, urls, {"affinity": affinity})
            try:
                last: dict[int, str] = {}
                same = total = 0
                with httpx.Client(headers=gateway.headers, timeout=60) as http:
                    for turn in range(turns):
                        # A new order each turn, as users reply at their own pace.
                        for session in random.Random(turn).sample(range(sessions), sessions):
                            before = {u: gateway.served(u) for u in urls}
                            http.post(
                                f"{gateway.url}/v1/chat/completions",
                                headers={"x-session-id": f"s{session}"},
                                json={"model": MODEL, "max_tokens": 2, "messages": [
                                    {"role": "user", "content": f"turn {turn}"}]},
                            ).raise_for_status()  # fmt: skip
                            home = next(u for u in urls if gateway.served(u) > before[u])
                            if turn:
                                total += 1
                                same += last[session] == home
                            last[session] = home
                out[name] = same / total
                print(f"  {name}: {same}/{total} turns on the previous turn's replica", flush=True)
            finally:
                gateway.stop()
    return out


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "n": len(ordered), "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99),
        "mean_ms": statistics.fmean(ordered) * 1000,
    }  # fmt: skip


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.balancing", description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=48, help="per strategy and round")
    parser.add_argument("--sessions", type=int, default=11)
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print("pick cost (µs):", flush=True)
    results["pick_us"] = pick_costs()
    for name, us in results["pick_us"].items():
        print(f"  {name}: {us:.2f}")
    with tempfile.TemporaryDirectory(prefix="localmoe-balancing-") as tmp:
        print("slow replica (+20 ms per engine step) beside a normal one, c=8:", flush=True)
        results["slow_replica"] = slow_replica(Path(tmp), args.rounds, args.requests)
        print("affinity over 3 replicas:", flush=True)
        results["affinity"] = affinity_share(Path(tmp), args.sessions, args.turns)
    out = RESULTS / f"balancing-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "balancing.json").write_text(json.dumps(results, indent=2))
    print("\n| strategy | p50 ms | p90 ms | p99 ms | mean ms |\n|---|---|---|---|---|")
    for s, p in results["slow_replica"].items():
        print(f"| {s} | {p['p50_ms']:.0f} | {p['p90_ms']:.0f} | {p['p99_ms']:.0f} "
              f"| {p['mean_ms']:.0f} |")  # fmt: skip
    print(f"\naffinity: {results['affinity']}\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m bench.embeddings`: `/v1/embeddings` requests per second at concurrency 1 and 16.

One short text per request (a sentence of ~10 tokens) through the real gateway and Triton, and
whether Triton's dynamic batcher packed concurrent requests: the `embeddings` model's executions
(`nv_inference_exec_count`) against its requests (`nv_inference_request_success`) over the run.
Also one request of 16 texts, which the gateway sends to Triton as 16 requests at once.

Results: `bench/results/embeddings-<time>/embeddings.json` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.balancing import _percentiles
from bench.images import RESULTS, _Gateway, _stack, model_counts
from gateway.local.triton import TritonProcess

MODEL = "tiny-moe"


def _texts(n: int) -> list[str]:
    return [f"Sentence number {i} is about the json module and a red circle." for i in range(n)]


def throughput(
    gateway: _Gateway, triton: TritonProcess, concurrency: int, requests: int, per_request: int
) -> dict[str, float]:
    """Requests per second at `concurrency` with `per_request` inputs each, latency
    percentiles, and Triton's requests per execution of the `embeddings` model."""
    texts = _texts(requests * per_request)
    latencies: list[float] = []
    before = model_counts(triton, "embeddings")

    async def run() -> float:
        queue = list(range(requests))
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(headers=gateway.headers, timeout=120, limits=limits) as http:

            async def worker() -> None:
                while queue:
                    i = queue.pop()
                    chunk = texts[i * per_request : (i + 1) * per_request]
                    body = {"model": MODEL, "input": chunk if per_request > 1 else chunk[0]}
                    started = time.perf_counter()
                    response = await http.post(f"{gateway.url}/v1/embeddings", json=body)
                    response.raise_for_status()
                    latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - started

    elapsed = asyncio.run(run())
    after = model_counts(triton, "embeddings")
    executions, served = after[0] - before[0], after[1] - before[1]
    return {
        "requests_per_s": requests / elapsed,
        "inputs_per_s": requests * per_request / elapsed,
        **_percentiles(latencies),
        "triton_requests": served,
        "triton_executions": executions,
        "triton_batch_mean": served / executions if executions else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.embeddings", description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="per concurrency level")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": {}}
    with (
        tempfile.TemporaryDirectory(prefix="localmoe-embeddings-") as tmp,
        _stack(Path(tmp)) as (triton, gateway),
    ):
        throughput(gateway, triton, 4, 20, 1)  # warm up
        for concurrency, per_request in ((1, 1), (16, 1), (1, 16)):
            name = f"c={concurrency}, {per_request} input(s)"
            print(f"{name}:", flush=True)
            requests = args.requests if per_request == 1 else max(1, args.requests // 8)
            results["runs"][name] = throughput(gateway, triton, concurrency, requests, per_request)
    out = RESULTS / f"embeddings-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "embeddings.json").write_text(json.dumps(results, indent=2))
    print(
        "\n| run | requests/s | inputs/s | p50 ms | p90 ms | Triton requests per execution |"
        "\n|---|---|---|---|---|---|"
    )
    for name, r in results["runs"].items():
        print(
            f"| {name} | {r['requests_per_s']:.1f} | {r['inputs_per_s']:.1f} "
            f"| {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['triton_batch_mean']:.2f} |"
        )
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

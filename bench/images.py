"""`python -m bench.images`: what an image costs, in the gateway and end to end.

1. Gateway cost per image, fetch excluded: `load_image` on a `data:` URL (strict base64 decode,
   header checks, full decode to verify, SHA-256), per format and size, in-process.
2. Time to first token with one image against the same prompt without (the prompt text is equal;
   the image adds its feature tokens to the prefill and an encoder call), interleaved in rounds,
   streamed through one async client.
3. Image-request throughput at concurrency 1 and 8, and whether the encoder batched: Triton's
   `multimodal_encoders` executions against its requests over the run.

Results: `bench/results/images-<time>/images.json` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.balancing import _free_port, _Gateway, _percentiles
from gateway.local import paths
from gateway.local.repository import fill_repository
from gateway.local.triton import TritonProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "results"
MODEL = "tiny-moe"
QUESTION = "What is in this image?"


def drawn_image(size: tuple[int, int], fmt: str = "PNG", seed: int = 0) -> bytes:
    """One of the tiny model's drawn shapes, encoded as `fmt`."""
    from moe_build.shapes import COLOURS, SHAPES, draw_shape

    colour = list(COLOURS)[seed % len(COLOURS)]
    image = draw_shape(colour, SHAPES[seed % len(SHAPES)], size=size, seed=seed)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def data_url(data: bytes, fmt: str = "png") -> str:
    return f"data:image/{fmt};base64,{base64.b64encode(data).decode()}"


def gateway_cost(rounds: int = 200) -> dict[str, float]:
    """Microseconds per image in the gateway's `load_image` (data URL: no fetch), by case."""
    from gateway.images.decode import ImageLimits
    from gateway.images.fetch import FetchPolicy
    from gateway.images.load import load_image

    limits, policy = ImageLimits(), FetchPolicy()
    cases = {
        "png 64x64": data_url(drawn_image((64, 64))),
        "png 256x256": data_url(drawn_image((256, 256))),
        "jpeg 256x256": data_url(drawn_image((256, 256), "JPEG"), "jpeg"),
        "png 1024x768": data_url(drawn_image((1024, 768))),
    }

    async def measure(url: str) -> float:
        for _ in range(5):
            await load_image(url, limits, policy)
        started = time.perf_counter()
        for _ in range(rounds):
            await load_image(url, limits, policy)
        return (time.perf_counter() - started) / rounds * 1e6

    return {name: asyncio.run(measure(url)) for name, url in cases.items()}


@contextlib.contextmanager
def _stack(workdir: Path) -> Iterator[tuple[TritonProcess, _Gateway]]:
    repo = fill_repository(workdir / "repo", model_dir=paths.default_model_dir())
    triton = TritonProcess(
        repo, http_port=_free_port(), grpc_port=_free_port(), metrics_port=_free_port()
    )
    print("  starting Triton and the gateway", flush=True)
    triton.start()
    try:
        gateway = _Gateway(workdir, "gateway", [triton.grpc_url], {})
        try:
            yield triton, gateway
        finally:
            gateway.stop()
    finally:
        triton.stop()


def _body(image: str | None, max_tokens: int) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": QUESTION}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": image}})
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }


async def _ttft(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    first = None
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():  # read to the end: the next request is alone
            if first is None and line.startswith("data: ") and '"content":"' in line:
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("stream ended without content")
    return first


def first_token(gateway: _Gateway, rounds: int, per_round: int) -> dict[str, dict[str, float]]:
    """TTFT percentiles with one image and without, same prompt text, interleaved."""
    image = data_url(drawn_image((128, 128)))
    samples: dict[str, list[float]] = {"text only": [], "one image": []}

    async def run() -> None:
        async with httpx.AsyncClient(headers=gateway.headers, timeout=120) as http:
            for r in range(rounds):
                for _ in range(per_round):
                    order = ("text only", "one image") if r % 2 == 0 else ("one image", "text only")
                    for name in order:
                        body = _body(image if name == "one image" else None, 4)
                        samples[name].append(await _ttft(http, gateway.url, body))

    asyncio.run(run())
    return {name: _percentiles(values) for name, values in samples.items()}


def throughput(
    gateway: _Gateway, triton: TritonProcess, concurrency: int, requests: int
) -> dict[str, float]:
    """Image requests per second at `concurrency`, and the encoder's requests per execution."""
    images = [data_url(drawn_image((96, 96), seed=i)) for i in range(16)]
    before = model_counts(triton, "multimodal_encoders")

    async def run() -> float:
        queue = list(range(requests))
        async with httpx.AsyncClient(headers=gateway.headers, timeout=120) as http:

            async def worker() -> None:
                while queue:
                    i = queue.pop()
                    body = {**_body(images[i % len(images)], 8), "stream": False}
                    response = await http.post(f"{gateway.url}/v1/chat/completions", json=body)
                    response.raise_for_status()

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - started

    elapsed = asyncio.run(run())
    after = model_counts(triton, "multimodal_encoders")
    executions = after[0] - before[0]
    served = after[1] - before[1]
    return {
        "requests_per_s": requests / elapsed,
        "encoder_requests": served,
        "encoder_executions": executions,
        "encoder_batch_mean": served / executions if executions else 0.0,
    }


def model_counts(triton: TritonProcess, model: str) -> tuple[float, float]:
    """Triton's executions and successful requests of `model` so far (its batching, by their
    ratio)."""
    text = httpx.get(triton.metrics_url, timeout=5).text
    executions = requests = 0.0
    for line in text.splitlines():
        if f'model="{model}"' not in line:
            continue
        if line.startswith("nv_inference_exec_count"):
            executions += float(line.rsplit(" ", 1)[1])
        elif line.startswith("nv_inference_request_success"):
            requests += float(line.rsplit(" ", 1)[1])
    return executions, requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.images", description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-round", type=int, default=5, help="TTFT samples per kind and round")
    parser.add_argument("--requests", type=int, default=48, help="per concurrency level")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print("gateway cost per image (µs, data URL, no fetch):", flush=True)
    results["gateway_us"] = gateway_cost()
    for name, us in results["gateway_us"].items():
        print(f"  {name}: {us:.0f}")
    with (
        tempfile.TemporaryDirectory(prefix="localmoe-images-") as tmp,
        _stack(Path(tmp)) as (
            triton,
            gateway,
        ),
    ):
        print("time to first token, one image vs none:", flush=True)
        results["ttft"] = first_token(gateway, args.rounds, args.per_round)
        results["throughput"] = {}
        for c in (1, 8):
            print(f"image requests at concurrency {c}:", flush=True)
            results["throughput"][str(c)] = throughput(gateway, triton, c, args.requests)
    out = RESULTS / f"images-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "images.json").write_text(json.dumps(results, indent=2))
    print("\n| TTFT | p50 ms | p90 ms | mean ms |\n|---|---|---|---|")
    for name, p in results["ttft"].items():
        print(f"| {name} | {p['p50_ms']:.1f} | {p['p90_ms']:.1f} | {p['mean_ms']:.1f} |")
    print("\n| concurrency | requests/s | encoder requests per execution |\n|---|---|---|")
    for c, t in results["throughput"].items():
        print(f"| {c} | {t['requests_per_s']:.2f} | {t['encoder_batch_mean']:.2f} |")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Decode tokens/s through Triton's BLS route for several `engine_num_threads` settings.

    python -m bench.engine_threads                       # 1 and 2 threads; 1, 8, 16 streams
    python -m bench.engine_threads --threads 1 2 4 --streams 1 8 --rounds 3 --tokens 128

For each setting it fills a CPU repository for the tiny MoE with that thread count, starts
Triton, and runs every stream count `rounds` times (each stream generates `tokens` tokens,
`ignore_eos`, greedy), printing tokens/s as it goes and a summary at the end: the mean per
stream count, and the ratio to the single stream.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

_PROMPT = "<|im_start|>user\nWhat does the json module do?<|im_end|>\n<|im_start|>assistant\n"


async def _one(stub: object, number: int, tokens: int) -> int:
    from gateway.core.backend import GenerationRequest, SamplingParams
    from gateway.triton import adapter

    params = SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0.0)
    request = GenerationRequest(_PROMPT, params, f"bench-{number}", True)
    call = stub.ModelStreamInfer()  # type: ignore[attr-defined]
    await call.write(adapter.build_request("tensorrt_llm_bls", request))
    generated = 0
    while True:
        response = await call.read()
        delta, final = adapter.parse(response.infer_response)
        generated = delta.num_output_tokens or generated
        if final:
            await call.done_writing()
            return generated


async def tokens_per_second(url: str, streams: int, tokens: int) -> float:
    """Aggregate decode rate of `streams` concurrent generations of `tokens` tokens."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    async with grpc.aio.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await asyncio.gather(*(_one(stub, i, 4) for i in range(streams)))  # warm-up
        start = time.perf_counter()
        counts = await asyncio.gather(*(_one(stub, i, tokens) for i in range(streams)))
        return sum(counts) / (time.perf_counter() - start)


def measure(threads: int, streams: Sequence[int], rounds: int, tokens: int) -> dict[int, float]:
    """Mean tokens/s per stream count with `engine_num_threads=threads`."""
    from bench.stack import free_port
    from gateway.local import paths
    from gateway.local.repository import fill_repository
    from gateway.local.triton import TritonProcess

    results: dict[int, list[float]] = {n: [] for n in streams}
    with tempfile.TemporaryDirectory(prefix="engine-threads-") as tmp:
        repository = fill_repository(
            Path(tmp) / "repo",
            model_dir=paths.default_model_dir(),
            overrides={"engine_num_threads": str(threads)},
        )
        triton = TritonProcess(
            repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
        )
        triton.start()
        try:
            for number in range(rounds):
                for n in streams:
                    rate = asyncio.run(tokens_per_second(triton.grpc_url, n, tokens))
                    results[n].append(rate)
                    print(f"threads={threads} round {number} streams={n}: {rate:,.0f} tokens/s")
        finally:
            triton.stop()
    return {n: statistics.mean(rates) for n, rates in results.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Run every setting and print the summary."""
    parser = argparse.ArgumentParser(prog="python -m bench.engine_threads", description=__doc__)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args(argv)
    summary = {t: measure(t, args.streams, args.rounds, args.tokens) for t in args.threads}
    print("\n| threads | " + " | ".join(f"{n} streams" for n in args.streams) + " |")
    print("|---" * (len(args.streams) + 1) + "|")
    for threads, rates in summary.items():
        single = rates.get(1)
        cells = []
        for n in args.streams:
            ratio = f" ({rates[n] / single:.2f}×)" if single and n != 1 else ""
            cells.append(f"{rates[n]:,.0f}{ratio}")
        print(f"| {threads} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

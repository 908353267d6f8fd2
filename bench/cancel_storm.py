"""Reproduce Triton hanging when clients cancel many decoupled streams mid-response.

    python -m bench.cancel_storm                  # 64 streams of `echo`, cancelled after 5 tokens
    python -m bench.cancel_storm --rounds 100 --streams 64 --cancel-after 20

Each round opens `streams` gRPC streams to the `echo` model (256 tokens each) and cancels every
one after `cancel_after` responses, which is what a gateway does when its HTTP clients go away.
With tritonserver 2.51 (the nvidia-pytriton 0.7.0 wheel) on this machine the server, within a few
to a few dozen rounds, either stops answering (and aborts with `ASSERTION FAILED: prior > 0` in
gRPC's sync.cc when it is stopped) or dies with signal 11. Reading every stream to its end never
did either in the same runs. Exit status 1 when Triton hung or died.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from bench.loadgen import infer_request
from bench.repository import bench_repository
from bench.stack import free_port

_PROMPT = "<|im_start|>user\nHello there, how are you?<|im_end|>\n<|im_start|>assistant\n"


async def storm(url: str, rounds: int, streams: int, cancel_after: int, timeout: float) -> bool:
    """Run the rounds against the Triton gRPC `url`; False as soon as a round hangs."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    request = infer_request("echo", {"text_input": _PROMPT, "max_tokens": 256, "stream": True})
    channel = grpc.aio.insecure_channel(url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        for number in range(rounds):
            start = time.monotonic()
            calls = [_one(stub, request, cancel_after) for _ in range(streams)]
            try:
                counts = await asyncio.wait_for(asyncio.gather(*calls), timeout)
            except (TimeoutError, grpc.aio.AioRpcError) as exc:
                print(f"round {number}: Triton stopped answering ({type(exc).__name__})")
                return False
            took = time.monotonic() - start
            print(f"round {number}: {sum(counts)} responses in {took:.2f} s", flush=True)
    finally:
        await channel.close(grace=None)
    return True


async def _one(stub: Any, request: Any, cancel_after: int) -> int:
    async def requests() -> AsyncIterator[Any]:
        yield request
        await asyncio.sleep(3600)

    call = stub.ModelStreamInfer(requests())
    count = 0
    try:
        async for _ in call:
            count += 1
            if count >= cancel_after:
                break
    finally:
        call.cancel()
    return count


def main(argv: Sequence[str] | None = None) -> int:
    """Start an echo-only Triton, run the storm, stop Triton; 1 if Triton hung."""
    from gateway import paths
    from gateway.launcher import TritonProcess

    parser = argparse.ArgumentParser(prog="python -m bench.cancel_storm", description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--cancel-after", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds a round may take")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cancel-storm-") as tmp:
        repository = bench_repository(Path(tmp) / "repo", paths.default_model_dir(), with_moe=False)
        triton = TritonProcess(
            repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
        )
        triton.start()
        try:
            ok = asyncio.run(
                storm(triton.grpc_url, args.rounds, args.streams, args.cancel_after, args.timeout)
            )
        finally:
            triton.stop()
        if not ok:
            errors = [line for line in triton.log_tail if line.startswith("E") or "Signal" in line]
            print("\n".join(errors[-5:]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Reproduce Triton hanging when clients cancel many decoupled streams mid-response.

    python -m bench.cancel_storm                  # 64 streams of `echo`, cancelled after 5 tokens
    python -m bench.cancel_storm --rounds 100 --streams 64 --cancel-after 20
    python -m bench.cancel_storm --gateway        # the same storm of HTTP clients, via the gateway

Each round opens `streams` gRPC streams to the `echo` model (256 tokens each) and cancels every
one after `cancel_after` responses, which is what a gateway does when its HTTP clients go away.
With tritonserver 2.51 (the nvidia-pytriton 0.7.0 wheel) on this machine the server, within a few
to a few dozen rounds, either stops answering (and aborts with `ASSERTION FAILED: prior > 0` in
gRPC's sync.cc when it is stopped) or dies with signal 11. Reading every stream to its end never
did either in the same runs. Exit status 1 when Triton hung or died.

With `--gateway` the clients are HTTP streams through the gateway that hang up after
`cancel_after` chunks. The gateway shares long-lived gRPC streams and ends abandoned requests with
TensorRT-LLM's `stop` message instead of cancelling RPCs, so Triton should survive every round.
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
from bench.stack import Stack

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


async def storm_gateway(
    base_url: str,
    headers: dict[str, str],
    rounds: int,
    streams: int,
    cancel_after: int,
    timeout: float,
) -> bool:
    """The storm as HTTP clients of the gateway at `base_url`; False when a round hangs or
    a fresh request fails after it."""
    import httpx

    body = {
        "model": "echo",
        "messages": [{"role": "user", "content": "Hello there, how are you?"}],
        "max_tokens": 256,
        "stream": True,
    }
    limits = httpx.Limits(max_connections=streams * 2)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=timeout, limits=limits
    ) as client:

        async def one() -> int:
            count = 0
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    count += line.startswith("data:")
                    if count >= cancel_after:
                        break
            return count

        for number in range(rounds):
            start = time.monotonic()
            try:
                counts = await asyncio.wait_for(
                    asyncio.gather(*(one() for _ in range(streams))), timeout
                )
                check = await client.post("/v1/chat/completions", json={**body, "stream": False})
                check.raise_for_status()
            except (TimeoutError, httpx.HTTPError) as exc:
                print(f"round {number}: the stack stopped answering ({exc!r})")
                return False
            took = time.monotonic() - start
            print(f"round {number}: {sum(counts)} chunks in {took:.2f} s", flush=True)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Start an echo-only Triton (and the gateway), run the storm, stop them; 1 if Triton hung."""
    from gateway.local import paths

    parser = argparse.ArgumentParser(prog="python -m bench.cancel_storm", description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--cancel-after", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds a round may take")
    parser.add_argument("--gateway", action="store_true", help="HTTP clients via the gateway")
    args = parser.parse_args(argv)
    storm_args = (args.rounds, args.streams, args.cancel_after, args.timeout)
    with tempfile.TemporaryDirectory(prefix="cancel-storm-") as tmp:
        stack = Stack(Path(tmp), model_dir=paths.default_model_dir())
        try:
            triton = stack.start_triton(with_moe=False)
            if args.gateway:
                gateway = stack.start_gateway()
                run = storm_gateway(gateway.url, stack.gateway_headers(), *storm_args)
            else:
                run = storm(triton.grpc_url, *storm_args)
            ok = asyncio.run(run)
        finally:
            stack.close()
        if not ok:
            errors = [line for line in triton.log_tail if line.startswith("E") or "Signal" in line]
            print("\n".join(errors[-5:]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

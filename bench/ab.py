"""`python -m bench.ab --baseline REV`: the gateway of another revision against this checkout's,
in one run, behind one Triton, driven by the same clients, rounds interleaved (A B, B A, …).

Both gateways get the same configuration through environment variables (the flat names of
older revisions and the sectioned ones of newer, since each ignores the names it does not
declare): auth on, limits on but never reached, cache off, so every request does real work.
Measured per gateway: the echo route's throughput (wrk, c=16); Python clients (aiohttp, one
process) on the echo route (c=1, c=16), on the MoE route (`/v1/completions`, a raw prompt,
1 token, c=1 and c=16) and streaming 64 echo tokens (c=1); the same raw prompt sent to the
BLS over gRPC by the same load generator gives the "direct" reference for the added latency.
Results: `bench/results/ab-<time>/ab.json` and `ab.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.loadgen import LoadGenerator
from bench.procs import signals_raise_interrupt
from bench.stack import (
    ECHO_MODEL,
    MOE_MODEL,
    MOE_ROUTE,
    REPO_ROOT,
    Service,
    Stack,
    chat_body,
    free_port,
    http_json,
)
from bench.stats import median
from bench.wrk import run_wrk, wrk_binary

_UNLIMITED = "1000000000"
RAW_PROMPT = "The json module"
COMPLETIONS = "/v1/completions"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; the exit status."""
    args = _parser().parse_args(argv)
    out = args.out or REPO_ROOT / "bench" / "results" / time.strftime("ab-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    from gateway.local import paths

    model_dir = args.model_dir or paths.default_model_dir()
    try:
        with signals_raise_interrupt(), _worktree(args.baseline) as baseline:
            results = _run(args, baseline, model_dir, out)
    except KeyboardInterrupt:
        return 130
    (out / "ab.json").write_text(json.dumps(results, indent=2))
    (out / "ab.md").write_text(_markdown(results))
    print(_markdown(results))
    print(f"results in {out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("--baseline", required=True, help="git revision of the A gateway")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument(
        "--only", nargs="+", default=None, metavar="WORD", help="measurements whose name has WORD"
    )
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    return parser


@contextlib.contextmanager
def _worktree(revision: str) -> Iterator[Path]:
    """A detached checkout of `revision` outside this one, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="localmoe-ab-")) / "baseline"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(path), revision],
        cwd=REPO_ROOT, check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)], cwd=REPO_ROOT, check=False
        )


def _run(args: argparse.Namespace, baseline: Path, model_dir: Path, out: Path) -> dict[str, Any]:
    stack = Stack(out / "work", model_dir=model_dir)
    loadgen = LoadGenerator(out / "loadgen.log")
    try:
        print("starting Triton ...", flush=True)
        stack.start_triton(with_moe=True)
        gateways = {
            "A": _start_gateway(stack, "gateway-a", baseline),
            "B": _start_gateway(stack, "gateway-b", REPO_ROOT),
        }
        plan = _plan(stack, gateways)
        if args.only:
            plan = [(n, t) for n, t in plan if any(word in n for word in args.only)]
        measurements: list[dict[str, Any]] = []
        for r in range(args.rounds):
            for name, target in plan:
                order = ("A", "B") if r % 2 == 0 else ("B", "A")
                for side in order if target.get("both") else ("direct",):
                    print(f"round {r + 1}/{args.rounds}: {name} {side} ...", flush=True)
                    result = _measure(loadgen, target, side, gateways, stack, args.duration)
                    measurements.append({"round": r, "name": name, "side": side, **result})
        return {
            "baseline": _describe(baseline),
            "candidate": _describe(REPO_ROOT),
            "rounds": args.rounds,
            "duration_s": args.duration,
            "measurements": measurements,
        }
    finally:
        loadgen.close()
        stack.close()


def _start_gateway(stack: Stack, name: str, source: Path) -> Service:
    """`gateway.cli serve` from `source` (its own cwd and PYTHONPATH), configured by env."""
    port = free_port()
    models = [
        {"id": MOE_MODEL, "route": MOE_ROUTE, "tokenizer_dir": str(stack.model_dir)},
        {"id": ECHO_MODEL, "route": ECHO_MODEL, "tokenizer_dir": str(stack.model_dir)},
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALMOE_")}
    env.update(
        PYTHONPATH=str(source),
        LOCALMOE_MODELS=json.dumps(models),
        LOCALMOE_DISCOVER_MODELS="false",
        LOCALMOE_JWT_SECRET=stack.jwt_secret,
        LOCALMOE_AUTH__JWT_SECRET=stack.jwt_secret,
        LOCALMOE_RPM=_UNLIMITED,
        LOCALMOE_TPM=_UNLIMITED,
        LOCALMOE_RATELIMIT__RPM=_UNLIMITED,
        LOCALMOE_RATELIMIT__TPM=_UNLIMITED,
        LOCALMOE_CACHE_ENABLED="false",
        LOCALMOE_CACHE__ENABLED="false",
    )
    command = [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--triton-url", stack.triton.grpc_url]
    service = stack.start_service(name, command, port, env, cwd=source)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        stack.check_alive(service)
        with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
            listed = http_json(f"{service.url}/v1/models", headers=stack.gateway_headers())
            if {MOE_MODEL, ECHO_MODEL} <= {m["id"] for m in listed.get("data", [])}:
                return service
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not come up:\n{service.log_tail()}")


def _plan(stack: Stack, gateways: dict[str, Service]) -> list[tuple[str, dict[str, Any]]]:
    echo = chat_body(ECHO_MODEL, max_tokens=1)
    moe = {"model": MOE_MODEL, "prompt": RAW_PROMPT, "max_tokens": 1, "temperature": 0}
    stream = chat_body(ECHO_MODEL, max_tokens=64, stream=True)
    direct = {"text_input": RAW_PROMPT, "max_tokens": 1, "temperature": 0.0}
    plan: list[tuple[str, dict[str, Any]]] = []
    if wrk_binary():
        plan.append(("echo wrk c=16", {"both": True, "wrk": True, "body": echo, "c": 16}))
    plan += [
        ("echo python c=1", {"both": True, "body": echo, "c": 1}),
        ("echo python c=16", {"both": True, "body": echo, "c": 16}),
        ("moe completion python c=1", {"both": True, "path": COMPLETIONS, "body": moe, "c": 1}),
        ("moe completion python c=16", {"both": True, "path": COMPLETIONS, "body": moe, "c": 16}),
        ("moe direct grpc c=1", {"grpc": direct, "c": 1}),
        ("moe direct grpc c=16", {"grpc": direct, "c": 16}),
        ("echo stream 64 python c=1", {"both": True, "body": stream, "c": 1, "stream": True}),
    ]  # fmt: skip
    return plan


def _measure(
    loadgen: LoadGenerator,
    target: dict[str, Any],
    side: str,
    gateways: dict[str, Service],
    stack: Stack,
    duration: float,
) -> dict[str, Any]:
    c = target["c"]
    if "grpc" in target:
        job = {"kind": "grpc", "url": stack.triton.grpc_url, "model": MOE_ROUTE}
        job.update(inputs=target["grpc"], concurrency=c, duration=duration, warmup=0.5)
        return _summary(loadgen.run(job))
    url = gateways[side].url + target.get("path", "/v1/chat/completions")
    headers = stack.gateway_headers()
    if target.get("wrk"):
        body = json.dumps(target["body"])
        return _summary(run_wrk(url, body=body, headers=headers, concurrency=c, duration=duration))
    job = {"kind": "http", "url": url, "body": target["body"], "headers": headers}
    job.update(stream=bool(target.get("stream")), concurrency=c, duration=duration, warmup=0.5)
    return _summary(loadgen.run(job))


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    latency = result.get("latency_ms") or {}
    keep = {
        "requests": result.get("requests"),
        "errors": result.get("errors"),
        "rps": result.get("rps"),
        "p50_ms": latency.get("p50"),
        "p99_ms": latency.get("p99"),
    }
    for key in ("ttft_ms", "tokens_per_s"):
        if key in result:
            value = result[key]
            keep[key] = value.get("p50") if isinstance(value, dict) else value
    return keep


def _describe(source: Path) -> str:
    run = subprocess.run(
        ["git", "log", "-1", "--format=%h %s"], cwd=source, capture_output=True, text=True
    )
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=source, capture_output=True)
    return run.stdout.strip()[:100] + (" (+ uncommitted changes)" if dirty.stdout else "")


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        f"A (baseline): {results['baseline']}",
        f"B (candidate): {results['candidate']}",
        f"{results['rounds']} interleaved rounds of {results['duration_s']} s; medians.",
        "",
        "| measurement | side | rps | p50 ms | p99 ms | TTFT ms | tokens/s | B/A rps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for m in results["measurements"]:
        by.setdefault((m["name"], m["side"]), []).append(m)

    def med(rows: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return median(values) if values else None

    for (name, side), rows in by.items():
        cells = [med(rows, k) for k in ("rps", "p50_ms", "p99_ms", "ttft_ms", "tokens_per_s")]
        ratio = ""
        if side == "B" and (name, "A") in by:
            a, b = med(by[(name, "A")], "rps"), cells[0]
            ratio = f"{b / a:.2f}×" if a and b else ""
        text = " | ".join("" if v is None else f"{v:,.2f}" for v in cells)
        errors = sum(r.get("errors") or 0 for r in rows)
        label = f"{side} (errors {errors})" if errors else side
        lines.append(f"| {name} | {label} | {text} | {ratio} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

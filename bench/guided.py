"""`python -m bench.guided`: what guided decoding costs in the CPU engine.

1. The token mask per decode step, µs per guided request: the engine's own `GuidedRows.apply`
   (llguidance's mask into a bitmask, unpacked, applied to the logits) timed inside real decode
   steps of N constrained streams, divided by N.
2. Tokens/s of N constrained streams (a JSON schema whose string field runs to max_tokens, so
   both sides generate the same number of tokens) against N free ones, on the same engine,
   greedy, alternating rounds. Also the compile time of a schema, cold and from the cache.

In-process on the engine (no Triton): the mask is the engine's cost, not the transport's.
Results: a Markdown table on stdout and `bench/results/guided-<time>.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

from gateway.local import paths
from moe_engine import Engine, EngineConfig, SamplingParams
from moe_engine.python_backend.text import encode, load_tokenizer

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
    "required": ["title", "year"],
    "additionalProperties": False,
}
PROMPT = "<|im_start|>user\nDescribe a book as JSON.<|im_end|>\n<|im_start|>assistant\n"


def run_round(engine: Engine, prompt: list[int], streams: int, tokens: int, guided: bool):
    """N streams submitted together; (generated tokens, wall seconds)."""
    done = threading.Event()
    counts = [0] * streams
    finished = [0]

    def collector(i: int):
        def on_output(out) -> None:  # on the engine thread: must not block
            counts[i] += len(out.token_ids)
            if out.finished:
                finished[0] += 1
                if finished[0] == streams:
                    done.set()

        return on_output

    guide = ("json_schema", json.dumps(SCHEMA)) if guided else None
    start = time.perf_counter()
    for i in range(streams):
        params = SamplingParams(max_new_tokens=tokens, temperature=0, ignore_eos=True, guide=guide)
        engine.submit(f"{guided}-{i}-{time.monotonic_ns()}", prompt, params, collector(i))
    done.wait(600)
    return sum(counts), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    model_dir = args.model_dir or paths.default_model_dir()
    engine = Engine.from_pretrained(
        model_dir, EngineConfig(max_batch_size=args.streams, num_threads=args.threads)
    )
    prompt = encode(load_tokenizer(str(model_dir)), PROMPT)

    start = time.perf_counter()
    engine.grammars.matcher("json_schema", json.dumps(SCHEMA))
    cold_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    engine.grammars.matcher("json_schema", json.dumps(SCHEMA))
    cached_us = (time.perf_counter() - start) * 1e6

    engine.start()
    run_round(engine, prompt, args.streams, 8, guided=True)  # warm-up (and GuidedRows built)
    mask_s: list[tuple[int, float]] = []
    guided_rows = engine._guided
    apply = guided_rows.apply

    def timed(logits, rows) -> None:
        start = time.perf_counter()
        apply(logits, rows)
        mask_s.append((len(rows), time.perf_counter() - start))

    guided_rows.apply = timed
    free_tps, guided_tps = [], []
    for _ in range(args.rounds):
        n, s = run_round(engine, prompt, args.streams, args.tokens, guided=False)
        free_tps.append(n / s)
        n, s = run_round(engine, prompt, args.streams, args.tokens, guided=True)
        guided_tps.append(n / s)
    engine.shutdown()

    full = [s / rows * 1e6 for rows, s in mask_s if rows == args.streams]
    single = [s * 1e6 for rows, s in mask_s if rows == 1]
    result = {
        "streams": args.streams,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "schema_compile_cold_ms": round(cold_ms, 2),
        "schema_from_cache_us": round(cached_us, 1),
        "mask_us_per_request_batch": _summary(full),
        "mask_us_single_request": _summary(single),
        "free_tokens_per_s": round(statistics.median(free_tps), 1),
        "guided_tokens_per_s": round(statistics.median(guided_tps), 1),
    }
    result["guided_over_free"] = round(
        result["guided_tokens_per_s"] / result["free_tokens_per_s"], 3
    )
    out = Path("bench/results") / f"guided-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("| measure | value |\n|---|---|")
    for key, value in result.items():
        print(f"| {key} | {value} |")
    print(f"\n{out}")


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    values = sorted(values)
    return {
        "median": round(statistics.median(values), 1),
        "p90": round(values[int(0.9 * (len(values) - 1))], 1),
        "steps": len(values),
    }


if __name__ == "__main__":
    main()

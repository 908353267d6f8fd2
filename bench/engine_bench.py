"""Decode throughput of the CPU MoE engine: one request alone vs. N concurrent requests.

python bench/engine_bench.py                    # random tiny Qwen3-MoE (the default size)
python bench/engine_bench.py --model DIR --concurrency 1 4 8
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import torch
from tqdm import tqdm

from moe_engine import Engine, EngineConfig, SamplingParams, StepOutput


def make_tiny_model(path: Path) -> None:
    """The default model's shape (Qwen3-MoE, hidden 256, 4 layers, 8 experts top-2), random."""
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    config = Qwen3MoeConfig(
        vocab_size=4096,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=256,
        intermediate_size=512,
        max_position_embeddings=2048,
        norm_topk_prob=True,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)


def run(
    engine: Engine, concurrency: int, prompt_len: int, new_tokens: int, desc: str
) -> tuple[float, float]:
    """Generate `new_tokens` for each of `concurrency` requests at once.

    Returns tokens per wall-clock second and per process CPU-second; the latter is steadier
    on a shared machine (with one torch thread the engine thread does all the work).
    """
    done = threading.Event()
    remaining = [concurrency]
    lock = threading.Lock()
    bar = tqdm(total=concurrency * new_tokens, desc=desc, unit="tok", leave=True)

    def on_output(out: StepOutput) -> None:
        bar.update(len(out.token_ids))
        if out.finished:
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()

    generator = torch.Generator().manual_seed(concurrency)
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(concurrency):
        prompt = torch.randint(0, engine.vocab_size, (prompt_len,), generator=generator).tolist()
        params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=i)
        engine.submit(f"bench-{concurrency}-{i}-{start}", prompt, params, on_output)
    done.wait()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    bar.close()
    tokens = concurrency * new_tokens
    return tokens / elapsed, tokens / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: random tiny)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = Path(tmp)
            make_tiny_model(model_dir)
        config = EngineConfig(
            max_batch_size=max(args.concurrency), dtype=args.dtype, num_threads=args.threads
        )
        engine = Engine.from_pretrained(model_dir, config)
    engine.start()
    try:
        run(engine, max(args.concurrency), args.prompt_len, 16, "warm-up")
        results = {
            c: run(engine, c, args.prompt_len, args.new_tokens, f"concurrency {c}")
            for c in args.concurrency
        }
    finally:
        engine.shutdown()

    base, cpu_base = results[args.concurrency[0]]
    print(f"\ntorch threads: {torch.get_num_threads()}, dtype {args.dtype}")
    for c, (tps, per_cpu) in results.items():
        print(
            f"concurrency {c:>3}: {tps:8.1f} tokens/s ({tps / base:4.2f}x)   "
            f"{per_cpu:8.1f} tokens/CPU-s ({per_cpu / cpu_base:4.2f}x)"
        )
    stats = engine.stats()
    print(f"decode steps {stats.decode_steps_total}, peak batch {stats.peak_active}")


if __name__ == "__main__":
    main()

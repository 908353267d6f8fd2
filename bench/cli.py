"""`python -m bench`: run the benchmarks of issue 5 against real processes, from a checkout.

    python -m bench                      # every scenario, concurrency 1/16/64 (~5 minutes)
    python -m bench --quick              # seconds: the end-to-end check the tests run
    python -m bench --scenarios gateway_cost streaming --concurrency 1 16 --duration 5
    python -m bench --profile            # also sample the gateway with py-spy under load
    python -m bench --echo-only --no-litellm --scenarios gateway_cost streaming   # fast loop

Results go to `bench/results/<timestamp>/`: results.json, results.md and PNG charts.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.harness import SCENARIOS, BenchConfig

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m bench`."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _arguments(parser)
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed arguments describe; the exit status."""
    from gateway.local import paths

    if args.report is not None:
        from bench.report import rewrite

        print(f"rewrote {rewrite(args.report)['markdown']}")
        return 0
    out_dir = args.out or RESULTS_DIR / time.strftime("%Y%m%d-%H%M%S")
    config = BenchConfig(out_dir=out_dir, model_dir=args.model_dir or paths.default_model_dir())
    if args.quick:
        config = config.quick_variant()
    given = {
        "concurrency": tuple(args.concurrency) if args.concurrency else None,
        "duration": args.duration,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "stream_tokens": tuple(args.stream_tokens) if args.stream_tokens else None,
        "engine_concurrency": tuple(args.engine_concurrency) if args.engine_concurrency else None,
        "scenarios": tuple(args.scenarios) if args.scenarios else None,
        "echo_instances": args.echo_instances,
        "gateway_settings": tuple(_setting(item) for item in args.gateway_setting) or None,
    }
    config = replace(config, **{k: v for k, v in given.items() if v is not None})
    config = replace(
        config, litellm=not args.no_litellm, moe=not args.echo_only, profile=args.profile
    )
    try:
        paths = run(config)
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started has been stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    goals = paths["markdown"].read_text().split("## Goals", 1)[-1].split("\n## ", 1)[0]
    print(f"## Goals{goals}\nresults: {paths['markdown']}")
    return 0


def run(config: BenchConfig) -> dict[str, Path]:
    """Start the stack, run every planned measurement, write the results; their paths."""
    from bench.harness import running
    from bench.procs import signals_raise_interrupt
    from bench.report import machine_info, write_results

    config.out_dir.mkdir(parents=True, exist_ok=True)
    if not config.model_dir.joinpath("config.json").is_file():
        from moe_build.tiny import build_tiny_model

        print(f"building the tiny MoE model into {config.model_dir} (first run only)")
        build_tiny_model(config.model_dir)
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": machine_info(),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "settings_line": (
            f"concurrency {', '.join(map(str, config.concurrency))}; {config.duration:g} s "
            f"windows after {config.warmup:g} s warm-up; {config.rounds} interleaved round(s)"
        ),
    }
    start = time.monotonic()
    print("bench: starting Triton, the gateway and the LiteLLM proxy ...", file=sys.stderr)
    with signals_raise_interrupt(), running(config) as harness:
        print(f"bench: stack ready in {time.monotonic() - start:.0f} s", file=sys.stderr)
        runs = harness.plan()
        harness.run(runs)
        if config.profile:
            harness.profile_gateway()
        if harness.failures:
            harness.notes.extend(f"Failed: {failure}" for failure in harness.failures)
        errored = [m for m in harness.measurements if m["errors"]]
        if errored:
            harness.notes.append(
                f"{len(errored)} run(s) had errors, e.g. "
                + "; ".join(f"{_label(m)}: {m['error_sample'][:120]}" for m in errored[:3])
            )
        if harness.drains:
            harness.notes.append(
                "Cancelled requests kept Triton busy after some runs (the harness waited for "
                "it to be idle before the next run): " + "; ".join(harness.drains)
            )
        meta["gateway_features"] = vars(harness.features)
        meta["litellm"] = harness.stack.litellm_info
        meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
        return write_results(
            config.out_dir,
            meta=meta,
            measurements=harness.measurements,
            notes=harness.notes,
            profiles=harness.profiles,
            concurrency=config.concurrency,
        )


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="seconds, not minutes (for tests)")
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=SCENARIOS,
        metavar="NAME",
        help=f"which to run (default: all): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--concurrency",
        nargs="+",
        type=int,
        metavar="N",
        help="concurrency levels (default 1 16 64)",
    )
    parser.add_argument("--duration", type=float, help="seconds measured per run (default 2)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per run (default 0.5)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per comparison (default 2)")
    parser.add_argument(
        "--stream-tokens",
        nargs="+",
        type=int,
        metavar="N",
        help="streamed output lengths (default 64 256)",
    )
    parser.add_argument(
        "--engine-concurrency",
        nargs="+",
        type=int,
        metavar="N",
        help="streams for the engine scenario (default 1 2 4 8 16)",
    )
    parser.add_argument("--echo-instances", type=int, help="Triton instances of `echo` (default 1)")
    parser.add_argument(
        "--gateway-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a gateway setting for this run, e.g. access_log=false (repeatable; YAML values)",
    )
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM proxy")
    parser.add_argument(
        "--echo-only",
        action="store_true",
        help="serve only the echo route (Triton starts in seconds; for gateway work)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway under load")
    parser.add_argument("--model-dir", type=Path, help="checkpoint (default: the tiny MoE)")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results/<time>)")
    parser.add_argument(
        "--report", type=Path, metavar="DIR", help="only re-render DIR/results.json"
    )


def _label(m: dict[str, Any]) -> str:
    from bench.harness import run_label

    return f"{run_label(m)} ({m['errors']} errors)"


def _setting(item: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SystemExit(f"--gateway-setting wants KEY=VALUE, got {item!r}")
    return key.strip(), yaml.safe_load(value)

"""`python -m monitoring generate|check|render` (with `PYTHONPATH=build`, from the checkout)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from monitoring import checks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("generate", help="write the dashboards' JSON into the chart")
    commands.add_parser(
        "check", help="committed JSON equals a fresh generation; every PromQL expression parses"
    )
    render = commands.add_parser(
        "render",
        help="start Triton, the gateway and Prometheus, drive a short load, plot every panel",
    )
    render.add_argument("--out", type=Path, default=checks.REPO / "docs" / "img")
    render.add_argument("--load-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.command == "generate":
        for path in checks.write():
            print(f"wrote {path.relative_to(checks.REPO)}")
        return 0
    if args.command == "check":
        return _check()
    from monitoring import live

    return live.render_command(args.out, args.load_seconds)


def _check() -> int:
    failures = [f"stale: {path} (run `python -m monitoring generate`)" for path in checks.stale()]
    expressions = checks.all_expressions()
    failures += checks.unparsable(expressions)
    for failure in failures:
        print(failure, file=sys.stderr)
    if failures:
        return 1
    print(
        f"ok: {len(checks.generated())} dashboards up to date, "
        f"{len(expressions)} expressions parse "
        f"({len(checks.rule_expressions())} from {checks.RULES_FILE.relative_to(checks.REPO)}), "
        f"{len(checks.named_metrics(expressions))} metrics named"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

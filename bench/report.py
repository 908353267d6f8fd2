"""Results of a run: `results.json` (every measurement and the summary), `results.md` (the
tables and the goals of issue 5, each as measured) and PNG charts, all in one folder."""

from __future__ import annotations

import json
import math
import platform
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.stats import median

SUMMARY_KEYS = ("scenario", "route", "target", "variant", "concurrency", "max_tokens", "stream")


def summarize_runs(measurements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (scenario, route, target, variant, concurrency, tokens): medians of rounds."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for m in measurements:
        groups[tuple(m[k] for k in SUMMARY_KEYS)].append(m)
    rows = []
    for key, ms in groups.items():
        row: dict[str, Any] = dict(zip(SUMMARY_KEYS, key, strict=True))
        row["rounds"] = len(ms)
        row["tool"] = ms[0]["tool"]
        row["requests"] = sum(m["requests"] for m in ms)
        row["errors"] = sum(m["errors"] for m in ms)
        row["rps"] = median(m["rps"] for m in ms)
        row["tokens_per_s"] = median(m.get("tokens_per_s", math.nan) for m in ms)
        for metric in ("latency_ms", "ttft_ms", "itl_ms"):
            for stat in ("p50", "p90", "p99", "mean"):
                row[f"{metric[:-3]}_{stat}_ms"] = median(m.get(metric, {}).get(stat) for m in ms)
        for per in ("cpu_ms_per_request", "cpu_us_per_token", "cpu_cores"):
            names = {n for m in ms for n in m.get(per, {})}
            row[per] = {n: median(m.get(per, {}).get(n) for m in ms) for n in sorted(names)}
        row["client_bound"] = any(m.get("client_bound") for m in ms)
        lookups = [m["cache_lookups"] for m in ms if "cache_lookups" in m]
        if lookups:
            row["cache_lookups"] = {k: sum(x.get(k, 0) for x in lookups) for k in lookups[0]}
        # The distribution of the round with the median throughput, for the CDF charts.
        middle = sorted(ms, key=lambda m: m["rps"])[len(ms) // 2]
        row["latency_cdf"] = middle.get("latency_ms", {}).get("cdf", [])
        rows.append(row)
    return rows


def find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    """The first summary row whose fields equal `match`."""
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def evaluate_goals(rows: list[dict[str, Any]], concurrency: Iterable[int]) -> list[dict[str, Any]]:
    """Issue 5's goals, each with the measured value and whether it is met (None: not measured)."""
    levels = sorted(concurrency)
    mid = 16 if 16 in levels else levels[len(levels) // 2] if levels else 16
    low = min(levels) if levels else 1
    goals: list[dict[str, Any]] = []

    def goal(name: str, target: str, value: float | None, met: bool | None, unit: str = "") -> None:
        shown = "not measured" if value is None or _nan(value) else f"{value:,.2f}{unit}"
        goals.append(
            {
                "goal": name,
                "target": target,
                "measured": shown,
                "value": value,
                "met": None if value is None or _nan(value) else met,
            }
        )

    s1 = dict(scenario="gateway_cost", route="echo")
    gw = find(rows, **s1, target="gateway", concurrency=mid)
    ll = find(rows, **s1, target="litellm", concurrency=mid)
    gw_rps = gw["rps"] if gw else None
    goal(
        f"echo route through the gateway, c={mid}",
        ">= 2,500 rps",
        gw_rps,
        gw_rps is not None and gw_rps >= 2500,
        " rps",
    )
    cpu = gw["cpu_ms_per_request"].get("gateway") if gw else None
    goal("gateway CPU per request (echo)", "<= 0.4 ms", cpu, cpu is not None and cpu <= 0.4, " ms")
    ratio = _ratio(gw_rps, ll and ll["rps"])
    goal(
        f"gateway vs LiteLLM proxy throughput, c={mid}",
        ">= 15x",
        ratio,
        ratio is not None and ratio >= 15,
        "x",
    )
    if gw and ll:
        lower = gw["latency_p50_ms"] < ll["latency_p50_ms"] and (
            gw["latency_p99_ms"] < ll["latency_p99_ms"]
        )
        goal(
            f"gateway p50 / p99 below LiteLLM's, c={mid}",
            "lower",
            gw["latency_p99_ms"] - ll["latency_p99_ms"],
            lower,
            " ms (p99 difference)",
        )
    else:
        goal(f"gateway p50 / p99 below LiteLLM's, c={mid}", "lower", None, None)

    s2 = dict(scenario="real_route", route="tiny-moe")
    gw = find(rows, **s2, target="gateway", concurrency=mid)
    direct = find(rows, **s2, target="triton-grpc", concurrency=mid)
    ratio = _ratio(gw and gw["rps"], direct and direct["rps"])
    goal(
        f"MoE 1 token: gateway / direct gRPC throughput, c={mid}",
        ">= 0.9",
        ratio,
        ratio is not None and ratio >= 0.9,
        "x",
    )
    gw = find(rows, **s2, target="gateway", concurrency=low)
    direct = find(rows, **s2, target="triton-grpc", concurrency=low)
    added = gw["latency_p50_ms"] - direct["latency_p50_ms"] if gw and direct else None
    goal(
        f"MoE 1 token: added p50, c={low}",
        "<= 1 ms",
        added,
        added is not None and added <= 1.0,
        " ms",
    )

    stream_rows = [r for r in rows if r["scenario"] == "streaming"]
    lengths = sorted({r["max_tokens"] for r in stream_rows})
    for tokens in lengths:
        s4 = dict(scenario="streaming", route="echo", max_tokens=tokens)
        gw = find(rows, **s4, target="gateway", concurrency=mid)
        direct = find(rows, **s4, target="triton-grpc-stream", concurrency=mid)
        ratio = _ratio(gw and gw["tokens_per_s"], direct and direct["tokens_per_s"])
        goal(
            f"echo stream {tokens} tokens: gateway / direct tokens/s, c={mid}",
            ">= 0.8",
            ratio,
            ratio is not None and ratio >= 0.8,
            "x",
        )
        gw = find(rows, **s4, target="gateway", concurrency=low)
        direct = find(rows, **s4, target="triton-grpc-stream", concurrency=low)
        added = gw["ttft_p50_ms"] - direct["ttft_p50_ms"] if gw and direct else None
        goal(
            f"echo stream {tokens} tokens: added TTFT p50, c={low}",
            "<= 5 ms",
            added,
            added is not None and added <= 5.0,
            " ms",
        )
        for c in (low, mid):
            m4 = dict(scenario="streaming", route="tiny-moe", max_tokens=tokens, concurrency=c)
            gw = find(rows, **m4, target="gateway")
            direct = find(rows, **m4, target="triton-grpc-stream")
            ratio = _ratio(gw and gw["itl_p50_ms"], direct and direct["itl_p50_ms"])
            goal(
                f"MoE stream {tokens} tokens: ITL p50 gateway / direct, c={c}",
                "<= 1.10",
                ratio,
                ratio is not None and ratio <= 1.10,
                "x",
            )
    if len(lengths) >= 2:
        short, long_ = lengths[0], lengths[-1]
        a = find(
            rows,
            scenario="streaming",
            route="echo",
            max_tokens=short,
            target="gateway",
            concurrency=low,
        )
        b = find(
            rows,
            scenario="streaming",
            route="echo",
            max_tokens=long_,
            target="gateway",
            concurrency=low,
        )
        growth = None
        if a and b:
            growth = _ratio(
                b["cpu_us_per_token"].get("gateway"), a["cpu_us_per_token"].get("gateway")
            )
        goal(
            f"gateway CPU per token, {long_}- vs {short}-token streams (no growth with length)",
            "<= 1.2x",
            growth,
            growth is not None and growth <= 1.2,
            "x",
        )

    cache_low = min((r["concurrency"] for r in rows if r["scenario"] == "cache"), default=low)
    for variant, limit in (("in-process hit", 1.0), ("redis hit", 2.0)):
        row = find(rows, scenario="cache", variant=variant, concurrency=cache_low)
        p50 = row["latency_p50_ms"] if row else None
        goal(
            f"cache {variant} p50, c={cache_low}",
            f"<= {limit:g} ms",
            p50,
            p50 is not None and p50 <= limit,
            " ms",
        )

    engine = [r for r in rows if r["scenario"] == "engine"]
    one = find(engine, concurrency=1)
    eight = find(engine, concurrency=8) or (
        max(engine, key=lambda r: r["concurrency"]) if engine else None
    )
    ratio = (
        _ratio(eight["tokens_per_s"], one["tokens_per_s"])
        if one and eight and one is not eight
        else None
    )
    name = f"engine: {eight['concurrency'] if eight else 8}-stream aggregate / single stream"
    goal(name, ">= 3x (4x stretch)", ratio, ratio is not None and ratio >= 3.0, "x")

    workers = [r for r in rows if r["scenario"] == "workers"]
    if workers:
        top = max(r["concurrency"] for r in workers)
        for hits in (True, False):
            part = [r for r in workers if r["target"].endswith(", cache hit") == hits]
            counts = sorted({r["target"] for r in part})
            if len(counts) < 2:
                continue
            first = find(part, target=counts[0], concurrency=top)
            last = find(part, target=counts[-1], concurrency=top)
            ratio = _ratio(last and last["rps"], first and first["rps"])
            goal(
                f"{counts[-1]} vs {counts[0]} throughput, c={top}",
                ">= 1.2x (scales beyond noise)",
                ratio,
                ratio is not None and ratio >= 1.2,
                "x",
            )
    else:
        goal("`--workers N` scales", ">= 1.2x", None, None)
    return goals


def write_results(
    out_dir: Path,
    *,
    meta: dict[str, Any],
    measurements: list[dict[str, Any]],
    notes: list[str],
    profiles: list[dict[str, Any]],
    concurrency: Iterable[int],
) -> dict[str, Path]:
    """Write results.json, results.md and the charts; their paths by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md"}
    data: dict[str, Any] = {
        "meta": meta,
        "notes": notes,
        "goals": [],
        "summary": [],
        "measurements": measurements,
        "profiles": profiles,
    }
    # The raw measurements first: whatever goes wrong below, `--report` can start from them.
    paths["json"].write_text(json.dumps(_finite(data), indent=1, default=_jsonable))
    rows = summarize_runs(measurements)
    goals = evaluate_goals(rows, concurrency)
    data.update(goals=goals, summary=rows)
    paths["json"].write_text(json.dumps(_finite(data), indent=1, default=_jsonable))
    charts = write_charts(out_dir, rows)
    paths["markdown"].write_text(markdown(meta, rows, goals, notes, profiles, charts))
    paths.update({f"chart:{p.stem}": p for p in charts})
    return paths


def rewrite(out_dir: Path) -> dict[str, Path]:
    """Render results.md and the charts again from an existing results.json."""
    data = json.loads((out_dir / "results.json").read_text())
    return write_results(
        out_dir,
        meta=data["meta"],
        measurements=data["measurements"],
        notes=data["notes"],
        profiles=data["profiles"],
        concurrency=data["meta"]["config"]["concurrency"],
    )


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import os

    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        info["load_avg_at_start"] = list(os.getloadavg())
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gib"] = round(int(mem) / 2**20, 1)
    except OSError:
        pass
    return info


# --- Markdown -------------------------------------------------------------------------------


def markdown(
    meta: dict[str, Any],
    rows: list[dict[str, Any]],
    goals: list[dict[str, Any]],
    notes: list[str],
    profiles: list[dict[str, Any]],
    charts: list[Path],
) -> str:
    """The human-readable report of one run."""
    out = [f"# LocalMoE benchmark — {meta.get('started', '')}", ""]
    machine = meta.get("machine", {})
    out.append(
        f"Machine: {machine.get('cpus')} CPUs ({machine.get('cpu_model', '?')}), "
        f"{machine.get('memory_gib', '?')} GiB, load average at start "
        f"{', '.join(f'{x:.1f}' for x in machine.get('load_avg_at_start', []))}. "
        f"Settings: {meta.get('settings_line', '')}."
    )
    features = meta.get("gateway_features", {})
    if features:
        on = [k for k in ("auth", "rate_limit_headers", "cache") if features.get(k)]
        out.append(f"Gateway request path: {', '.join(on) or 'no auth, limits or cache yet'}.")
    if meta.get("litellm"):
        out.append(f"LiteLLM proxy {meta['litellm'].get('version')} (config in results.json).")
    out.append("")
    if notes:
        out += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    out += ["## Goals (issue 5)", "", "| goal | target | measured | met |", "|---|---|---|---|"]
    for g in goals:
        met = {True: "yes", False: "**no**", None: "–"}[g["met"]]
        out.append(f"| {g['goal']} | {g['target']} | {g['measured']} | {met} |")
    out.append("")
    titles = {
        "gateway_cost": "1. Gateway cost: echo route, 1 token (+ 3. the LiteLLM peer)",
        "real_route": "2. Real route: MoE chat, 1 output token (+ 3. the LiteLLM peer)",
        "workers": "Gateway workers: echo route and cache hits, 1 token",
    }
    for scenario, title in titles.items():
        part = [r for r in rows if r["scenario"] == scenario]
        if part:
            out += [f"## {title}", "", *_request_table(part), ""]
    part = [r for r in rows if r["scenario"] == "streaming"]
    if part:
        out += ["## 4. Streaming", "", *_stream_table(part), ""]
    part = [r for r in rows if r["scenario"] == "cache"]
    if part:
        out += ["## 5. Cache: hit vs miss (echo route, 16 tokens)", "", *_request_table(part), ""]
    part = [r for r in rows if r["scenario"] == "engine"]
    if part:
        out += ["## 6. Engine: decode tokens/s vs concurrent streams (direct gRPC)", ""]
        out += [*_engine_table(part), ""]
    if charts:
        out += ["## Charts", ""] + [f"![{p.stem}]({p.name})" for p in charts] + [""]
    for profile in profiles:
        if "error" in profile:
            out += [f"## Profile: {profile.get('load')}", "", profile["error"], ""]
            continue
        out += [f"## Profile of the gateway: {profile['load']} ({profile['samples']} samples)", ""]
        out += ["| library (leaf) | % | top own frames | % |", "|---|---|---|---|"]
        libs, frames = profile["library_pct"][:12], profile["self_pct"][:12]
        for i in range(max(len(libs), len(frames))):
            lib = libs[i] if i < len(libs) else ["", ""]
            frame = frames[i] if i < len(frames) else ["", ""]
            out.append(f"| {lib[0]} | {lib[1]} | `{frame[0]}` | {frame[1]} |")
        out += ["", f"Stacks: `{profile.get('stacks')}` (open in speedscope).", ""]
    out += [
        "Columns: throughput is the median of the rounds; latencies in ms; CPU is "
        "milliseconds of CPU per request (per token for streams, in µs) of each process, "
        "read from /proc; `client*` marks a run where the load generator used most of a core "
        "and so may be the limit.",
        "",
    ]
    return "\n".join(out)


def _request_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| target | c | rps | p50 | p90 | p99 | CPU ms/req (front · triton · client) | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["concurrency"], r["variant"], r["target"])):
        cpu = r["cpu_ms_per_request"]
        front = cpu.get("gateway", cpu.get("litellm"))
        name = r["variant"] or r["target"]
        if r.get("cache_lookups"):
            name += " (" + ", ".join(f"{k} {v:.0f}" for k, v in r["cache_lookups"].items()) + ")"
        out.append(
            f"| {name}{'*' if r['client_bound'] else ''} | {r['concurrency']} | "
            f"{r['rps']:,.0f} | {_ms(r['latency_p50_ms'])} | {_ms(r['latency_p90_ms'])} | "
            f"{_ms(r['latency_p99_ms'])} | {_ms(front)} · {_ms(cpu.get('triton'))} · "
            f"{_ms(cpu.get('client'))} | {r['errors']} |"
        )
    return out


def _stream_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| route | tokens | target | c | tokens/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 "
        "| CPU µs/token (front · triton · client) | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(rows, key=lambda r: (r["route"], r["max_tokens"], r["concurrency"], r["target"]))
    for r in order:
        cpu = r["cpu_us_per_token"]
        front = cpu.get("gateway", cpu.get("litellm"))
        out.append(
            f"| {r['route']} | {r['max_tokens']} | {r['target']}{'*' if r['client_bound'] else ''}"
            f" | {r['concurrency']} | {r['tokens_per_s']:,.0f} | {_ms(r['ttft_p50_ms'])} | "
            f"{_ms(r['ttft_p99_ms'])} | {_ms(r['itl_p50_ms'])} | {_ms(r['itl_p99_ms'])} | "
            f"{_ms(front, 0)} · {_ms(cpu.get('triton'), 0)} · {_ms(cpu.get('client'), 0)} | "
            f"{r['errors']} |"
        )
    return out


def _engine_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| streams | tokens/s | × single | ITL p50 | TTFT p50 | Triton CPU µs/token |",
        "|---|---|---|---|---|---|",
    ]
    rows = sorted(rows, key=lambda r: r["concurrency"])
    base = rows[0]["tokens_per_s"] if rows else math.nan
    for r in rows:
        out.append(
            f"| {r['concurrency']} | {r['tokens_per_s']:,.0f} | "
            f"{_ms(_ratio(r['tokens_per_s'], base))} | "
            f"{_ms(r['itl_p50_ms'])} | {_ms(r['ttft_p50_ms'])} | "
            f"{_ms(r['cpu_us_per_token'].get('triton'), 0)} |"
        )
    return out


# --- charts ---------------------------------------------------------------------------------


def write_charts(out_dir: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """Throughput vs concurrency, latency CDFs, streaming, cache and engine charts (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib comes with the bench extra
        return []
    paths = []
    for scenario, title in (
        ("gateway_cost", "Echo route, 1 token"),
        ("real_route", "MoE chat, 1 output token"),
    ):
        part = [r for r in rows if r["scenario"] == scenario]
        if part:
            paths.append(_throughput_chart(plt, part, title, out_dir / f"{scenario}_rps.png"))
            paths.append(_cdf_chart(plt, part, title, out_dir / f"{scenario}_latency.png"))
    part = [r for r in rows if r["scenario"] == "streaming"]
    if part:
        paths.append(_stream_chart(plt, part, out_dir / "streaming.png"))
    part = [r for r in rows if r["scenario"] == "cache"]
    if part:
        paths.append(_cache_chart(plt, part, out_dir / "cache.png"))
    part = [r for r in rows if r["scenario"] == "engine"]
    if part:
        paths.append(_engine_chart(plt, part, out_dir / "engine.png"))
    return paths


_COLORS = {
    "gateway": "tab:blue",
    "litellm": "tab:orange",
    "triton-grpc": "tab:green",
    "triton-grpc-stream": "tab:green",
    "triton-grpc-stream-per-request": "tab:olive",
    "triton-http": "tab:red",
}


def _color(target: str) -> str | None:
    return _COLORS.get(target)


def _concurrency_axis(ax: Any, levels: Iterable[int]) -> None:
    levels = sorted(set(levels))
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels)
    ax.set_xticklabels([str(c) for c in levels])
    ax.minorticks_off()


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _throughput_chart(plt: Any, rows: list[dict[str, Any]], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for target in sorted({r["target"] for r in rows}):
        points = sorted((r["concurrency"], r["rps"]) for r in rows if r["target"] == target)
        ax.plot(*zip(*points, strict=True), marker="o", label=target, color=_color(target))
    ax.set(title=f"{title}: throughput", xlabel="concurrency", ylabel="requests/s")
    _concurrency_axis(ax, (r["concurrency"] for r in rows))
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _cdf_chart(plt: Any, rows: list[dict[str, Any]], title: str, path: Path) -> Path:
    levels = sorted({r["concurrency"] for r in rows})
    fig, axes = plt.subplots(1, len(levels), figsize=(3.2 * len(levels), 3.4), squeeze=False)
    for ax, c in zip(axes[0], levels, strict=True):
        for r in sorted((r for r in rows if r["concurrency"] == c), key=lambda r: r["target"]):
            if r["latency_cdf"]:
                xs, ys = zip(*r["latency_cdf"], strict=True)
                ax.plot(xs, ys, label=r["target"], color=_color(r["target"]))
        ax.set(title=f"c={c}", xlabel="latency (ms)", ylabel="% of requests")
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{title}: latency distribution", fontsize=10)
    return _save(plt, fig, path)


def _stream_chart(plt: Any, rows: list[dict[str, Any]], path: Path) -> Path:
    series = sorted({(r["route"], r["max_tokens"]) for r in rows})
    fig, axes = plt.subplots(1, len(series), figsize=(3.2 * len(series), 3.4), squeeze=False)
    for ax, (route, tokens) in zip(axes[0], series, strict=True):
        part = [r for r in rows if r["route"] == route and r["max_tokens"] == tokens]
        for target in sorted({r["target"] for r in part}):
            points = sorted(
                (r["concurrency"], r["tokens_per_s"]) for r in part if r["target"] == target
            )
            ax.plot(*zip(*points, strict=True), marker="o", label=target, color=_color(target))
        ax.set(title=f"{route}, {tokens} tokens", xlabel="concurrent streams", ylabel="tokens/s")
        _concurrency_axis(ax, (r["concurrency"] for r in part))
        ax.set_ylim(bottom=0)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Streaming throughput", fontsize=10)
    return _save(plt, fig, path)


def _cache_chart(plt: Any, rows: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    rows = sorted(rows, key=lambda r: (r["concurrency"], r["variant"]))
    labels = [f"{r['variant']}\nc={r['concurrency']}" for r in rows]
    ax.bar(labels, [r["latency_p50_ms"] for r in rows], label="p50")
    ax.scatter(labels, [r["latency_p99_ms"] for r in rows], color="black", label="p99", zorder=3)
    ax.set(title="Response cache latency", ylabel="ms")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _engine_chart(plt: Any, rows: list[dict[str, Any]], path: Path) -> Path:
    rows = sorted(rows, key=lambda r: r["concurrency"])
    fig, ax = plt.subplots(figsize=(6, 3.4))
    xs = [r["concurrency"] for r in rows]
    ax.plot(xs, [r["tokens_per_s"] for r in rows], marker="o", label="aggregate tokens/s")
    base = rows[0]["tokens_per_s"]
    ax.plot(xs, [base * x for x in xs], linestyle=":", color="grey", label="linear")
    ax.set(
        title="MoE engine decode throughput (direct gRPC)",
        xlabel="concurrent streams",
        ylabel="tokens/s",
    )
    _concurrency_axis(ax, xs)
    ax.set_ylim(0, max(r["tokens_per_s"] for r in rows) * 1.3)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing, NaN or b is zero."""
    if a is None or b is None or _nan(a) or _nan(b) or b == 0:
        return None
    return a / b


def _ms(value: float | None, digits: int = 2) -> str:
    if value is None or _nan(value):
        return "–"
    return f"{value:,.{digits}f}"


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _finite(value: Any) -> Any:
    # JSON has no NaN: a value that could not be measured is null.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    return repr(value)

"""The dashboards against the real stack: a real Prometheus (Debian's `prometheus`) scraping the
gateway and Triton every second, a short load that gives every panel something to show, each
panel's queries through Prometheus' HTTP API, and one PNG per dashboard (matplotlib).

`python -m monitoring render` starts everything itself (Redis, Triton, the gateway); the live test
in tests/ops/test_dashboards.py brings its own Triton and gateway and uses the same `Prometheus`,
`exercise`, `query_dashboard` and `plot_dashboard`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from monitoring import checks, promql
from monitoring.dashboards import DASHBOARDS
from monitoring.grafana import Dashboard, Panel

__all__ = [
    "LiveRun",
    "Prometheus",
    "exercise",
    "plot_dashboard",
    "query_dashboard",
    "render_command",
    "scraped_metric_names",
]

SCRAPE_INTERVAL_S = 1
RATE_INTERVAL_S = 10
"""What `$__rate_interval` becomes in the live queries (Grafana's is at least four scrapes)."""

PROMETHEUS_PREFIX = "localmoe-prometheus-"
"""How the temporary directories of Prometheus' config and storage begin."""

Mint = Callable[..., str]
"""`mint(subject, **claims)` -> a bearer token the gateway accepts."""


def prometheus_binary() -> str:
    """`.tools/bin/prometheus` (`make tools`), else `prometheus` on PATH."""
    local = checks.REPO / ".tools" / "bin" / "prometheus"
    if local.is_file():
        return str(local)
    found = shutil.which("prometheus")
    if found is None:
        raise RuntimeError("prometheus not found: run `make tools` (build/tools/install.sh)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Prometheus:
    """A real Prometheus scraping `targets` (job -> metrics URL) every second, with its storage in
    a temporary directory; a context manager that stops it with SIGTERM."""

    def __init__(self, targets: dict[str, str], binary: str | None = None) -> None:
        self.targets = targets
        self.binary = binary or prometheus_binary()
        self.workdir = Path(tempfile.mkdtemp(prefix=PROMETHEUS_PREFIX))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def config(self) -> dict[str, Any]:
        scrape_configs = []
        for job, url in self.targets.items():
            parsed = urllib.parse.urlsplit(url)
            scrape_configs.append(
                {
                    "job_name": job,
                    "metrics_path": parsed.path or "/metrics",
                    "static_configs": [{"targets": [parsed.netloc]}],
                }
            )
        interval = f"{SCRAPE_INTERVAL_S}s"
        return {
            "global": {"scrape_interval": interval, "scrape_timeout": interval},
            "scrape_configs": scrape_configs,
        }

    def start(self, timeout: float = 30.0) -> None:
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        command = [
            self.binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        log = (self.workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                message = f"prometheus exited with {self.process.returncode}:\n{self.log()}"
                self.stop()
                raise RuntimeError(message)
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"prometheus not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def wait_for_targets(self, timeout: float = 30.0) -> None:
        """Until every target has been scraped successfully once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            targets = self.api("targets")["activeTargets"]
            if len(targets) == len(self.targets) and all(t["health"] == "up" for t in targets):
                return
            time.sleep(0.2)
        raise TimeoutError(f"prometheus targets not up: {self.api('targets')['activeTargets']}")

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path} {params}: {body}")
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[Any]:
        """The `matrix` result of a range query (one entry per series)."""
        data = self.api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}"
        )
        return data["result"]

    def query(self, expr: str, at: float) -> list[Any]:
        """The `vector` result of an instant query at `at`."""
        return self.api("query", query=expr, time=f"{at:.3f}")["result"]

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Prometheus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- load --------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What `exercise` sent and what came back, by kind of request and status."""

    started: float = 0.0
    ended: float = 0.0
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    """Kind of request -> status -> how many (status 0: no response, see `errors`)."""
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, kind: str, status: int) -> None:
        with self.lock:
            by_status = self.statuses.setdefault(kind, {})
            by_status[status] = by_status.get(status, 0) + 1

    def note(self, error: str) -> None:
        with self.lock:
            self.errors.append(error)


_PROMPTS = [
    "Tell me about the experts of a mixture-of-experts model.",
    "Write a short poem about routing tokens.",
    "What is a KV cache?",
    "Summarise the idea of in-flight batching.",
]
_CACHED_PROMPT = "The answer the cache keeps: what is two plus two?"


def exercise(
    gateway_url: str, model: str, mint: Mint, seconds: float, concurrency: int = 4
) -> LoadReport:
    """Drive the gateway for `seconds` with what every panel is about: chat and text completions
    streamed and not, repeats the cache answers, a bad and a missing token (auth failures),
    callers over their request and token limits (rate-limit refusals)."""
    report = LoadReport(started=time.time())
    token = mint("dashboards-load", rpm=1_000_000, tpm=1_000_000_000)
    deadline = time.monotonic() + seconds
    base = gateway_url.rstrip("/") + "/v1"

    def generations(worker: int) -> None:
        rng = random.Random(worker)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            step = 0
            while time.monotonic() < deadline:
                kind = ("chat-stream", "chat", "cached", "completion-stream")[step % 4]
                step += 1
                try:
                    _generate(client, kind, model, rng, report)
                except httpx.HTTPError as exc:  # counted, and the load goes on
                    report.count(kind, 0)
                    report.note(f"{kind}: {exc!r}")

    def policy() -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            while time.monotonic() < deadline:
                try:
                    _refusals(client, model, mint, report)
                except httpx.HTTPError as exc:
                    report.count("policy", 0)
                    report.note(f"policy: {exc!r}")
                time.sleep(0.5)

    threads = [threading.Thread(target=generations, args=(n,)) for n in range(concurrency)]
    threads.append(threading.Thread(target=policy))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.ended = time.time()
    return report


def _generate(
    client: httpx.Client, kind: str, model: str, rng: random.Random, report: LoadReport
) -> None:
    prompt = rng.choice(_PROMPTS)
    sampling = {"max_tokens": rng.randint(8, 24), "temperature": 1.0}
    if kind == "cached":
        # A new cacheable prompt every few seconds: a miss in both tiers, then hits (in Redis
        # for the other worker, then in each worker's own tier).
        prompt = f"{_CACHED_PROMPT} (#{int(time.time() // 4)})"
        body = {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0}
        response = client.post("/completions", json=body)
    elif kind == "chat":
        messages = [{"role": "user", "content": prompt}]
        response = client.post(
            "/chat/completions", json={"model": model, "messages": messages, **sampling}
        )
    else:
        if kind == "chat-stream":
            path = "/chat/completions"
            body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        else:
            path, body = "/completions", {"model": model, "prompt": prompt}
        with client.stream("POST", path, json={**body, **sampling, "stream": True}) as response:
            for _ in response.iter_lines():
                pass
    report.count(kind, response.status_code)


def _refusals(client: httpx.Client, model: str, mint: Mint, report: LoadReport) -> None:
    body = {"model": model, "prompt": "Hello there, how are you?", "max_tokens": 2}
    bad = {"Authorization": "Bearer not-a-token"}
    report.count("bad-token", client.post("/completions", json=body, headers=bad).status_code)
    report.count("no-token", client.post("/completions", json=body).status_code)
    limited = {"Authorization": f"Bearer {mint(f'dash-rpm-{uuid.uuid4().hex[:8]}', rpm=1)}"}
    for _ in range(2):  # the second is over one request per minute
        report.count("rpm-1", client.post("/completions", json=body, headers=limited).status_code)
    tiny = {"Authorization": f"Bearer {mint(f'dash-tpm-{uuid.uuid4().hex[:8]}', tpm=3)}"}
    report.count("tpm-3", client.post("/completions", json=body, headers=tiny).status_code)


# --- queries -----------------------------------------------------------------------------


@dataclass
class TargetResult:
    """One panel query's result: the expression as sent and the series that came back."""

    expr: str
    legend: str
    series: list[tuple[str, list[float], list[float]]]
    """(legend, timestamps, values) per series; NaN dropped."""

    @property
    def has_data(self) -> bool:
        return any(values for _, _, values in self.series)


def _legend(template: str, labels: dict[str, str]) -> str:
    if not template or template == "__auto":
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def query_values(
    dashboard: Dashboard, start: float, end: float, rate_interval_s: int
) -> dict[str, str]:
    """Grafana's variables as the live queries get them: the SLO choices at their defaults, any
    other (such as `$model`) `.*`, every instance and model."""
    return {
        **dashboard.defaults,
        "__rate_interval": f"{rate_interval_s}s",
        "__range": f"{max(1, round(end - start))}s",
    }


def query_dashboard(
    prometheus: Prometheus,
    dashboard: Dashboard,
    start: float,
    end: float,
    rate_interval_s: int = RATE_INTERVAL_S,
) -> dict[str, list[TargetResult]]:
    """Panel title -> the results of its queries over [start, end] (instant ones at `end`)."""
    values = query_values(dashboard, start, end, rate_interval_s)
    results: dict[str, list[TargetResult]] = {}
    for panel in dashboard.panels:
        found = []
        for target in panel.targets:
            expr = promql.substitute(target.expr, values)
            series = []
            if target.instant:
                for item in prometheus.query(expr, end):
                    value = float(item["value"][1])
                    if not math.isnan(value):
                        series.append((_legend(target.legend, item["metric"]), [end], [value]))
            else:
                for item in prometheus.query_range(expr, start, end):
                    points = [(float(t), float(v)) for t, v in item["values"]]
                    points = [(t, v) for t, v in points if not math.isnan(v)]
                    series.append(
                        (
                            _legend(target.legend, item["metric"]),
                            [t for t, _ in points],
                            [v for _, v in points],
                        )
                    )
            found.append(TargetResult(expr, target.legend, series))
        results[panel.title] = found
    return results


def scraped_metric_names(*urls: str) -> set[str]:
    """The metric names in the Prometheus text exposition of each URL (`_bucket`, `_count`,
    `_sum` of histograms as they appear)."""
    names = set()
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for line in text.splitlines():
            if line and not line.startswith("#"):
                names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


# --- pictures ----------------------------------------------------------------------------


def plot_dashboard(
    dashboard: Dashboard,
    results: dict[str, list[TargetResult]],
    path: Path,
    columns: int = 4,
    title_note: str = "",
) -> Path:
    """A grid of small plots, one per panel, titled as in Grafana: lines for time series, the last
    value for stats, a rows-over-time image for heat maps, a layer × expert matrix for tables."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = dashboard.panels
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.9 * rows), squeeze=False)
    start = min(
        (t[0] for found in results.values() for r in found for _, t, _ in r.series if t),
        default=0.0,
    )
    for index, panel in enumerate(panels):
        ax = axes[index // columns][index % columns]
        ax.set_title(promql.substitute(panel.title, dashboard.defaults), fontsize=9)
        ax.tick_params(labelsize=6)
        found = results.get(panel.title, [])
        if not any(r.has_data for r in found):
            ax.text(0.5, 0.5, "no data", ha="center", va="center", color="grey")
            ax.set_xticks([])
            ax.set_yticks([])
        elif panel.kind == "stat":
            _stat(ax, panel, found)
        elif panel.kind == "heatmap":
            _heatmap(ax, found, start)
        elif panel.kind == "table":
            _matrix(ax, found)
        else:
            _lines(ax, panel, found, start)
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.suptitle(
        f"{dashboard.title}: {title_note}" if title_note else dashboard.title, fontsize=12
    )
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=66)
    plt.close(figure)
    return path


def _unit_scale(unit: str) -> tuple[float, str]:
    return {"percentunit": (100.0, "%"), "s": (1.0, "s")}.get(unit, (1.0, unit))


def _lines(ax: Any, panel: Panel, found: list[TargetResult], start: float) -> None:
    scale, unit = _unit_scale(panel.unit)
    for result in found:
        for legend, times, values in result.series:
            if values:
                ax.plot(
                    [t - start for t in times], [v * scale for v in values], label=legend[:28], lw=1
                )
    ax.set_xlabel("s", fontsize=6)
    ax.set_ylabel(unit, fontsize=6)
    handles = ax.get_legend_handles_labels()[0]
    if handles:
        ax.legend(fontsize=5, loc="upper left", ncol=2 if len(handles) > 4 else 1)


def _stat(ax: Any, panel: Panel, found: list[TargetResult]) -> None:
    scale, unit = _unit_scale(panel.unit)
    last = [(legend, values[-1]) for r in found for legend, _, values in r.series if values]
    legend, value = last[-1]
    colour = "grey"
    for threshold in panel.thresholds:
        if threshold.value is None or value >= threshold.value:
            colour = threshold.color
    for pattern, fixed in panel.series_colors:
        if re.fullmatch(pattern, legend):
            colour = fixed
            break
    text = f"{value * scale:.{panel.decimals or 0}f}{unit if unit != 'short' else ''}"
    if panel.text_mode == "name":
        text = legend
    ax.text(0.5, 0.5, text, ha="center", va="center", color="white",
            fontsize=22 if len(text) < 12 else 11,
            bbox={"facecolor": colour, "boxstyle": "round", "alpha": 0.85})  # fmt: skip
    ax.set_xticks([])
    ax.set_yticks([])


def _heatmap(ax: Any, found: list[TargetResult], start: float) -> None:
    series = sorted((s for r in found for s in r.series if s[2]), key=lambda s: _natural(s[0]))
    times = sorted({t for _, ts, _ in series for t in ts})
    column = {t: i for i, t in enumerate(times)}
    grid = [[0.0] * len(times) for _ in series]
    for row, (_, ts, values) in enumerate(series):
        for t, v in zip(ts, values, strict=True):
            grid[row][column[t]] = v
    image = ax.imshow(grid, aspect="auto", cmap="Oranges", interpolation="nearest",
                      extent=(times[0] - start, times[-1] - start, len(series), 0))  # fmt: skip
    step = max(1, len(series) // 16)
    ax.set_yticks([i + 0.5 for i in range(0, len(series), step)])
    ax.set_yticklabels([series[i][0] for i in range(0, len(series), step)], fontsize=5)
    ax.set_xlabel("s", fontsize=6)
    ax.figure.colorbar(image, ax=ax, fraction=0.04)


def _matrix(ax: Any, found: list[TargetResult]) -> None:
    cells: dict[tuple[str, str], float] = {}
    for result in found:
        for legend, _, values in result.series:
            labels = dict(part.split("=", 1) for part in legend.split(",") if "=" in part)
            cells[(labels.get("layer", "?"), labels.get("expert", "?"))] = values[-1]
    layers = sorted({layer for layer, _ in cells}, key=_natural)
    experts = sorted({expert for _, expert in cells}, key=_natural)
    grid = [[cells.get((layer, expert), 0.0) for expert in experts] for layer in layers]
    image = ax.imshow(grid, aspect="auto", cmap="Oranges", interpolation="nearest")
    ax.set_xticks(range(len(experts)))
    ax.set_xticklabels(experts, fontsize=5)
    ax.set_yticks(range(len(layers)))
    ax.set_yticklabels(layers, fontsize=5)
    ax.set_xlabel("expert", fontsize=6)
    ax.set_ylabel("layer", fontsize=6)
    ax.figure.colorbar(image, ax=ax, fraction=0.04)


def _natural(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


# --- the render command ------------------------------------------------------------------


@contextlib.contextmanager
def _stack(workdir: Path) -> Iterator[tuple[str, str, str, Mint]]:
    """Redis, Triton (CPU, the tiny model) and the gateway (two workers) with its cache on and
    its limits in Redis: (gateway URL, Triton metrics URL, model id, mint)."""
    from gateway.local import paths
    from gateway.local.redis import RedisServer
    from gateway.local.repository import fill_repository
    from gateway.local.triton import TritonProcess
    from gateway.policy.tokens import mint_token

    model_dir = paths.default_model_dir()
    if not (model_dir / "config.json").is_file():
        from moe_build.tiny import build_tiny_model

        print("building the tiny model", flush=True)
        build_tiny_model(model_dir, progress=False)
    secret = uuid.uuid4().hex * 2
    repository = fill_repository(workdir / "repository", model_dir=model_dir, profile="cpu")
    with contextlib.ExitStack() as stack:
        redis_server = stack.enter_context(RedisServer())
        print("starting tritonserver", flush=True)
        triton = TritonProcess(
            repository, http_port=_free_port(), grpc_port=_free_port(), metrics_port=_free_port()
        )
        triton.start()
        stack.callback(triton.stop)
        print("starting the gateway", flush=True)
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALMOE_")}
        env.update(
            LOCALMOE_AUTH__JWT_SECRET=secret,
            LOCALMOE_REDIS_URL=redis_server.url,
            LOCALMOE_TRITON__HEALTH_INTERVAL_S="0.5",
        )
        command = [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--triton-url", triton.grpc_url, "--workers", "2"]
        log = (workdir / "gateway.log").open("wb")
        gateway = subprocess.Popen(
            command, cwd=checks.REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        stack.callback(_stop, gateway)
        url = f"http://127.0.0.1:{port}"
        model = _wait_for_model(url, gateway, mint_token(secret, sub="render"))

        def mint(subject: str, **claims: Any) -> str:
            return mint_token(secret, sub=subject, ttl_seconds=3600, **claims)

        yield url, triton.metrics_url, model, mint


def _wait_for_model(url: str, process: subprocess.Popen[bytes], token: str) -> str:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError, KeyError, IndexError, ValueError):
            listed = httpx.get(
                f"{url}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=2
            )
            return listed.json()["data"][0]["id"]
        time.sleep(0.2)
    raise TimeoutError("the gateway did not list a model within 90 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@dataclass
class LiveRun:
    """One `run_dashboards`: every panel's results, the load sent, and the Prometheus that
    served the queries (stopped by now)."""

    results: dict[str, dict[str, list[TargetResult]]]
    """Dashboard name -> panel title -> the results of its queries."""
    report: LoadReport
    prometheus_pid: int
    prometheus_dir: Path


def run_dashboards(
    gateway_url: str,
    triton_metrics_url: str,
    model: str,
    mint: Mint,
    load_seconds: float,
    rate_interval_s: int = RATE_INTERVAL_S,
    warmup: bool = False,
) -> LiveRun:
    """Prometheus on both targets, `exercise` for `load_seconds`, every dashboard's queries over
    the load (from one rate window into it with `warmup`, so rates are not seen ramping up)."""
    targets = {"gateway": f"{gateway_url}/metrics", "triton": triton_metrics_url}
    with Prometheus(targets) as prometheus:
        assert prometheus.process is not None
        prometheus.wait_for_targets()
        print(f"prometheus on {prometheus.url}; load for {load_seconds:g} s", flush=True)
        report = exercise(gateway_url, model, mint, load_seconds)
        time.sleep(2 * SCRAPE_INTERVAL_S)  # the last scrape after the load
        start = report.started + (rate_interval_s if warmup else 0)
        results = {
            name: query_dashboard(prometheus, build(), start, time.time(), rate_interval_s)
            for name, build in DASHBOARDS.items()
        }
    return LiveRun(results, report, prometheus.process.pid, prometheus.workdir)


def empty_panels(results: dict[str, dict[str, list[TargetResult]]]) -> list[str]:
    """`dashboard: panel [query]` for every query that returned no data."""
    return [
        f"{name}: {title} [{index}] {result.expr}"
        for name, panels in results.items()
        for title, found in panels.items()
        for index, result in enumerate(found)
        if not result.has_data
    ]


def render_command(out: Path, load_seconds: float) -> int:
    """`python -m monitoring render`: the whole stack, the load, one PNG per dashboard."""
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="localmoe-render-") as workdir,
        _stack(Path(workdir)) as (gateway_url, triton_metrics, model, mint),
    ):
        run = run_dashboards(gateway_url, triton_metrics, model, mint, load_seconds, warmup=True)
    results = run.results
    print(f"load: {run.report.statuses}")
    for error in run.report.errors[:5]:
        print(f"no response: {error}", file=sys.stderr)
    note = (
        f"a real Prometheus over {load_seconds:g} s of `python -m monitoring render` load, "
        f"$__rate_interval = {RATE_INTERVAL_S} s"
    )
    for name, panels in results.items():
        path = plot_dashboard(
            DASHBOARDS[name](), panels, out / f"dashboard-{name}.png", title_note=note
        )
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    empty = empty_panels(results)
    for line in empty:
        print(f"no data: {line}", file=sys.stderr)
    print(f"done in {time.monotonic() - started:.0f} s")
    return 1 if empty else 0

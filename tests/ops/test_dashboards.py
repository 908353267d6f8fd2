"""The Grafana dashboards (build/monitoring): the committed JSON is the generator's, every PromQL
expression parses and follows the conventions (the `$datasource` variable, `$__rate_interval`
windows, model and instance variables, ratios and quantiles that vanish when idle), and against
the real stack (real Triton, a real gateway with its cache and limits in a real Redis, a real
Prometheus scraping both every second) every panel's query returns data and every metric the
dashboards and the alert rules name is in a live scrape."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from monitoring import checks, live, promql
from monitoring.__main__ import main as monitoring_main
from monitoring.dashboards import DASHBOARDS, SLO_CHOICES

from tests.gateway_fixtures import GatewayProcess, mint_test_token, start_gateway, stop_gateway
from tests.support import processes_mentioning, tool

# The live run: long enough for a rate window full of every kind of request.
LOAD_SECONDS = 12
RATE_INTERVAL_S = 8


def _json(name: str) -> dict[str, Any]:
    return json.loads(checks.dashboard_path(name).read_text())


def _queries(name: str) -> list[dict[str, Any]]:
    return [t for p in _json(name)["panels"] if p["type"] != "row" for t in p["targets"]]


# --- the files and the conventions (nothing started) ---------------------------------------


def test_committed_dashboards_equal_the_generator_output() -> None:
    assert checks.stale() == [], "run: PYTHONPATH=build python -m monitoring generate"


def test_check_command_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert monitoring_main(["check"]) == 0
    assert "dashboards up to date" in capsys.readouterr().out


def test_check_command_fails_on_a_stale_dashboard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks.write(tmp_path)
    path = checks.dashboard_path("engine", tmp_path)
    path.write_text(path.read_text().replace("Achieved batch size", "Batch size"))
    monkeypatch.setattr(checks, "DASHBOARD_DIR", tmp_path)
    assert checks.stale() == [str(path)]
    assert monitoring_main(["check"]) == 1


def test_every_expression_of_dashboards_and_rules_parses() -> None:
    expressions = checks.all_expressions()
    assert len(expressions) > 60
    assert checks.rule_expressions() or not checks.RULES_FILE.exists()
    assert checks.unparsable(expressions) == []


def test_a_broken_expression_is_reported() -> None:
    broken = [promql.Expression("broken", "sum(rate(x[$__rate_interval])")]
    assert checks.unparsable(broken)[0].startswith("broken: ")


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_and_query_uses_the_datasource_variable(name: str) -> None:
    dashboard = _json(name)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    expected = {"type": "prometheus", "uid": "${datasource}"}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == expected, panel["title"]
            assert all(t["datasource"] == expected for t in panel["targets"]), panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == expected


@pytest.mark.parametrize("name", DASHBOARDS)
def test_windows_are_the_rate_interval_never_fixed(name: str) -> None:
    for query in _queries(name):
        assert not re.search(r"\[\s*\d+[smhdwy]", query["expr"]), query["expr"]
        windows = promql.range_windows(query["expr"])
        allowed = {promql.RATE_INTERVAL_PARSED, promql.RANGE_PARSED}
        assert set(windows) <= allowed, query["expr"]
    assert any("$__rate_interval" in q["expr"] for q in _queries(name))


@pytest.mark.parametrize("name", DASHBOARDS)
def test_model_and_instance_variables_exist_and_are_used(name: str) -> None:
    dashboard = _json(name)
    variables = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert {"model", "instance"} <= {v["name"] for v in variables}
    for variable in variables:
        assert variable["includeAll"] and variable["allValue"] == ".*"
        assert re.fullmatch(r"label_values\(\w+, \w+\)", variable["definition"])
        used = f'=~"${variable["name"]}"'
        assert any(used in q["expr"] for q in _queries(name)), variable["name"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_ratios_and_quantiles_vanish_when_idle(name: str) -> None:
    for query in _queries(name):
        assert promql.unguarded_divisions(query["expr"]) == [], query["expr"]
        assert promql.unguarded_quantiles(query["expr"]) == [], query["expr"]


def test_the_idle_checks_catch_nan_ratios_and_quantiles() -> None:
    assert promql.unguarded_divisions("sum(rate(a[1m])) / sum(rate(b[1m]))")
    assert promql.unguarded_divisions("a / (b > bool 0)")
    assert not promql.unguarded_divisions("a / (b > 0)")
    assert not promql.unguarded_divisions("a / 1e6")
    quantile = "histogram_quantile(0.9, sum by (le) (rate(h_bucket[1m])))"
    assert promql.unguarded_quantiles(quantile)
    assert not promql.unguarded_quantiles(f"{quantile} and (sum(rate(h_count[1m])) > 0)")


def test_gateway_dashboard_has_slo_attainment_tiles_on_slo_variables() -> None:
    dashboard = _json("gateway")
    choices = {v["name"]: v for v in dashboard["templating"]["list"] if v["type"] == "custom"}
    assert set(choices) == set(SLO_CHOICES)
    tiles = {p["title"]: p for p in dashboard["panels"] if p["type"] == "stat"}
    for name in SLO_CHOICES:
        tile = next(t for title, t in tiles.items() if f"${{{name}}}" in title)
        assert f'le="${name}"' in tile["targets"][0]["expr"]
        assert tile["fieldConfig"]["defaults"]["unit"] == "percentunit"
        assert choices[name]["current"]["value"] == SLO_CHOICES[name][1][0]


def test_dashboards_name_no_kubernetes_only_metrics() -> None:
    names = {m for n in DASHBOARDS for e in checks.dashboard_expressions(n) for m in
             promql.metric_names(e.expr)}  # fmt: skip
    assert not [m for m in names if checks.is_external(m)]


def test_docs_describe_every_panel_and_show_every_dashboard() -> None:
    docs = (checks.REPO / "docs" / "dashboards.md").read_text()
    for name, build in DASHBOARDS.items():
        assert f"img/dashboard-{name}.png" in docs
        assert (checks.REPO / "docs" / "img" / f"dashboard-{name}.png").stat().st_size < 300_000
        for panel in build().panels:
            assert f"`{panel.title}`" in docs, panel.title


@pytest.mark.parametrize("name", DASHBOARDS)
def test_panels_tile_the_grid_without_overlap(name: str) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in _json(name)["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells


# --- the live stack ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard_gateway(
    triton: Any, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Two workers with the response cache on, limits and cache in the session's Redis (so the
    Redis tier of the cache answers too)."""
    process = start_gateway(
        tmp_path_factory.mktemp("dashboards-gateway"),
        triton_urls=[triton.grpc_url],
        config={"cache": {"enabled": True}},
        env={"LOCALMOE_REDIS_URL": redis_server.url},
        args=["--workers", "2"],
    )
    yield process
    stop_gateway(process)


@pytest.fixture(scope="module")
def live_run(dashboard_gateway: GatewayProcess, triton: Any) -> dict[str, Any]:
    """Prometheus scraping the gateway and Triton, a short load, every dashboard's queries."""
    tool("prometheus")
    models = httpx.get(
        f"{dashboard_gateway.base_url}/models", headers=dashboard_gateway.headers, timeout=10
    )
    model = models.json()["data"][0]["id"]
    started = time.monotonic()
    run = live.run_dashboards(
        dashboard_gateway.url,
        triton.metrics_url,
        model,
        mint_test_token,
        LOAD_SECONDS,
        rate_interval_s=RATE_INTERVAL_S,
    )
    elapsed = time.monotonic() - started
    scraped = live.scraped_metric_names(f"{dashboard_gateway.url}/metrics", triton.metrics_url)
    print(f"live dashboards run: {elapsed:.1f} s (load {LOAD_SECONDS} s)")
    return {"run": run, "scraped": scraped, "seconds": elapsed}


def test_the_load_exercises_every_panel_subject(live_run: dict[str, Any]) -> None:
    statuses = live_run["run"].report.statuses
    assert live_run["run"].report.errors == []
    for kind in ("chat-stream", "chat", "cached", "completion-stream"):
        assert statuses[kind].get(200, 0) > 0, kind
    assert set(statuses["bad-token"]) == {401}
    assert set(statuses["no-token"]) == {401}
    assert statuses["rpm-1"].get(429, 0) > 0
    assert set(statuses["tpm-3"]) == {429}


def test_every_panel_query_returns_data_from_a_real_prometheus(live_run: dict[str, Any]) -> None:
    results = live_run["run"].results
    assert set(results) == set(DASHBOARDS)
    for name, panels in results.items():
        assert set(panels) == {panel.title for panel in DASHBOARDS[name]().panels}
    assert live.empty_panels(results) == []


def test_every_metric_of_dashboards_and_rules_is_in_a_live_scrape(
    live_run: dict[str, Any],
) -> None:
    named = checks.named_metrics(checks.all_expressions())
    assert "nv_moe_expert_tokens_total" in named
    assert sorted(named - live_run["scraped"]) == []


def test_slo_choices_are_bucket_boundaries_of_the_live_histograms(
    dashboard_gateway: GatewayProcess, live_run: dict[str, Any]
) -> None:
    text = httpx.get(f"{dashboard_gateway.url}/metrics", timeout=10).text
    histograms = {
        "ttft_slo": "localmoe_time_to_first_token_seconds",
        "itl_slo": "localmoe_inter_token_latency_seconds",
        "e2e_slo": "localmoe_generation_duration_seconds",
    }
    for name, (_, options) in SLO_CHOICES.items():
        bounds = set(re.findall(rf'^{histograms[name]}_bucket{{.*le="([^"]+)"', text, re.M))
        assert set(options) <= bounds, name


def test_render_draws_the_experts_dashboard(live_run: dict[str, Any], tmp_path: Path) -> None:
    # The experts dashboard has every kind of panel (heat map, matrix, lines, stat) and is the
    # quickest to draw; `python -m monitoring render` draws all three the same way.
    panels = live_run["run"].results["experts"]
    path = live.plot_dashboard(DASHBOARDS["experts"](), panels, tmp_path / "dashboard-experts.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 10_000 < path.stat().st_size < 300_000


def test_prometheus_is_stopped_and_its_directory_removed(live_run: dict[str, Any]) -> None:
    run = live_run["run"]
    assert not Path(f"/proc/{run.prometheus_pid}").exists()
    assert processes_mentioning(run.prometheus_dir) == []
    assert not run.prometheus_dir.exists()
    assert live_run["seconds"] < 60

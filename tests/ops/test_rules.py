"""The alert rules: the committed rule file is the generator's output, Prometheus accepts it
(`promtool check rules`), every alert fires and stays quiet where it should (`promtool test rules`
over tests/ops/localmoe.rules.test.yaml), and every alert carries what an on-call needs: a
severity, a summary, a description and a runbook section that exists."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from monitoring import rules

from tests.gateway_fixtures import GatewayProcess, start_gateway, stop_gateway
from tests.support import REPO, answers_200, free_port, tool, wait_for

RULE_FILE = REPO / "helm/localmoe/files/rules/localmoe.rules.yaml"
TEST_FILE = REPO / "tests/ops/localmoe.rules.test.yaml"
RUNBOOKS = REPO / "docs/runbooks.md"


def _alerts() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULE_FILE.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *map(str, args)], capture_output=True, text=True, timeout=60
    )


def _github_anchor(heading: str) -> str:
    # GitHub's heading ids: lower case, punctuation other than - and _ dropped, spaces to -.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_committed_rule_file_is_the_generator_output() -> None:
    assert RULE_FILE.read_text() == rules.render(), (
        "stale rule file: run PYTHONPATH=build .venv/bin/python -m monitoring.rules"
    )


def test_generator_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "rules.yaml"
    stale.write_text(rules.render().replace("for: 5m", "for: 1m"))
    assert rules.main(["--check", "--output", str(stale)]) == 1
    assert rules.main(["--output", str(stale)]) == 0
    assert rules.main(["--check", "--output", str(stale)]) == 0


def test_thresholds_change_the_rules() -> None:
    text = rules.render(rules.Thresholds(ttft_p99_slo_seconds=1.5, expert_imbalance_for="30m"))
    assert ") > 1.5\n" in text
    assert "(SLO 1.5s)" in text
    assert "for: 30m" in text


def test_promtool_accepts_the_rule_file() -> None:
    result = _promtool("check", "rules", RULE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout


def test_every_alert_fires_and_stays_quiet_in_promtool() -> None:
    result = _promtool("test", "rules", TEST_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = [
        case
        for test in yaml.safe_load(TEST_FILE.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    names = {alert["alert"] for alert in _alerts()}
    assert names - firing == set(), "alerts without a case where they fire"
    assert names - quiet == set(), "alerts without a case where they stay quiet"
    assert (firing | quiet) - names == set(), "test cases for alerts that do not exist"


@pytest.mark.parametrize("alert", _alerts(), ids=lambda alert: alert["alert"])
def test_alert_has_severity_summary_description_and_runbook(alert: dict[str, Any]) -> None:
    assert alert["labels"]["severity"] in {"critical", "warning", "info"}
    annotations = alert["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    assert annotations["runbook_url"] == f"docs/runbooks.md#{alert['alert'].lower()}"


def test_every_runbook_url_names_a_section_of_the_runbooks() -> None:
    headings = re.findall(r"^#{1,6} (.+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    anchors = {_github_anchor(heading) for heading in headings}
    missing = [
        alert["annotations"]["runbook_url"]
        for alert in _alerts()
        if alert["annotations"]["runbook_url"].partition("#")[2] not in anchors
    ]
    assert missing == []


# --- the rules against the real stack ------------------------------------------------------------
# A real Prometheus, evaluating the generated rules every second (every `for:` at 0 s), scrapes a
# real Triton and two real gateways: `degraded` has a second upstream that never answers and a
# Redis URL where nothing listens (rate limits and cache fall back in process); `offline` has no
# ready upstream at all (its requests get 503). Exactly the alerts their faults explain fire (and
# the expert imbalance, at a threshold of 1); the rest stay quiet on real traffic.


class _Prometheus:
    """`prometheus` scraping `targets` (job -> host:port) and evaluating `rule_file`, every 1 s."""

    def __init__(self, workdir: Path, targets: dict[str, str], rule_file: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rule_file)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if not wait_for(lambda: answers_200(f"{self.url}/-/ready"), timeout=30):
            self.stop()
            raise TimeoutError(f"prometheus not ready:\n{self.log_path.read_text()}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{params}", timeout=10) as response:
            return json.load(response)["data"]["result"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _immediate_rules(path: Path) -> Path:
    # Every `for:` at 0 s, so that a few seconds of real traffic show what would fire; and any
    # real routing is more than 1x imbalanced, so the imbalance alert fires on real tokens.
    durations = {
        f.name: "0s" for f in dataclasses.fields(rules.Thresholds) if f.name.endswith("_for")
    }
    path.write_text(rules.render(rules.Thresholds(**durations, expert_imbalance_ratio=1.0)))
    return path


def _firing(prometheus: _Prometheus) -> set[tuple[str, str, str]]:
    """(alert, job, its upstream or layer) of every firing alert."""
    found = set()
    for alert in prometheus.query('ALERTS{alertstate="firing"}'):
        labels = alert["metric"]
        detail = labels.get("upstream") or labels.get("layer") or ""
        found.add((labels["alertname"], labels.get("job", ""), detail))
    return found


def _label_values(prometheus: _Prometheus, selector: str, label: str) -> list[str]:
    found: list[dict[str, Any]] = []

    def scraped() -> bool:
        found[:] = prometheus.query(selector)
        return bool(found)

    assert wait_for(scraped, timeout=30), prometheus.query("up")
    return sorted(series["metric"][label] for series in found)


def _model_id(gateway: GatewayProcess) -> str:
    response = httpx.get(f"{gateway.base_url}/models", headers=gateway.headers, timeout=10)
    return response.json()["data"][0]["id"]


def test_on_the_real_stack_exactly_the_faults_fire(
    triton: Any, offline_gateway: GatewayProcess, tmp_path: Path
) -> None:
    dead_upstream = f"127.0.0.1:{free_port()}"
    degraded = start_gateway(
        tmp_path / "degraded",
        triton_urls=[triton.grpc_url, dead_upstream],
        config={
            "redis_url": f"redis://127.0.0.1:{free_port()}/0",
            "ratelimit": {"rpm": 100_000, "redis_retry_s": 0.1},
            "cache": {"redis_retry_s": 0.1},
        },
    )
    prometheus = None
    try:
        targets = {
            "degraded": degraded.url.removeprefix("http://"),
            "offline": offline_gateway.url.removeprefix("http://"),
            "triton": triton.metrics_url.removeprefix("http://").removesuffix("/metrics"),
        }
        prometheus = _Prometheus(tmp_path, targets, _immediate_rules(tmp_path / "rules.yaml"))
        [offline_upstream] = _label_values(
            prometheus, 'localmoe_upstream_up{job="offline"}', "upstream"
        )
        layers = _label_values(prometheus, "nv_moe_expert_imbalance_ratio", "layer")
        assert layers, "no MoE layer exports its imbalance"
        expected = {
            ("LocalMoEUpstreamDown", "degraded", dead_upstream),
            ("LocalMoERateLimitRedisErrors", "degraded", ""),
            ("LocalMoECacheRedisErrors", "degraded", ""),
            ("LocalMoEUpstreamDown", "offline", offline_upstream),
            ("LocalMoETritonNotReady", "offline", ""),
            ("LocalMoEGatewayErrorRatioHigh", "offline", ""),
            *(("LocalMoEExpertImbalance", "triton", layer) for layer in layers),
        }
        model = _model_id(degraded)
        sent = itertools.count()
        with httpx.Client(timeout=30) as http:

            def traffic_until_the_faults_fire() -> bool:
                # Deterministic and each one new, so the cache looks each up in Redis.
                body = {
                    "messages": [{"role": "user", "content": f"hi {next(sent)}"}],
                    "max_tokens": 4,
                    "temperature": 0,
                }
                for gateway, name in ((degraded, model), (offline_gateway, "tiny-moe")):
                    http.post(
                        f"{gateway.base_url}/chat/completions",
                        headers=gateway.headers,
                        json={**body, "model": name},
                    )
                return expected <= _firing(prometheus)

            fired = wait_for(traffic_until_the_faults_fire, timeout=60, interval=0.2)
            # A few more evaluations on traffic, for anything that fires later than the faults.
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                traffic_until_the_faults_fire()
        firing = _firing(prometheus)
        assert fired, f"expected alerts did not fire: {expected - firing}"
        assert firing == expected
    finally:
        if prometheus is not None:
            prometheus.stop()
        stop_gateway(degraded)

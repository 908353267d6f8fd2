"""The alert rules: the committed rule file is the generator's output, Prometheus accepts it
(`promtool check rules`), every alert fires and stays quiet where it should (`promtool test rules`
over tests/ops/localmoe.rules.test.yaml), and every alert carries what an on-call needs: a
severity, a summary, a description and a runbook section that exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from monitoring import rules

from tests.support import REPO, tool

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

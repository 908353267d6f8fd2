"""The generated files and the checks on them: committed JSON equals a fresh generation, every
PromQL expression of the dashboards and of the chart's rule file parses, and the metric names
they use."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from monitoring import promql
from monitoring.dashboards import DASHBOARDS

REPO = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO / "helm" / "localmoe" / "files" / "dashboards"
RULES_FILE = REPO / "helm" / "localmoe" / "files" / "rules" / "localmoe.rules.yaml"

EXTERNAL_METRICS = frozenset({"up"})
"""Metrics that are no process of ours' to export: Prometheus' own `up`."""
EXTERNAL_PREFIXES = ("kube_",)
"""Families from kube-state-metrics, which only a Kubernetes deployment has (rules may use them,
dashboards do not)."""


def dashboard_path(name: str, directory: Path | None = None) -> Path:
    return (directory or DASHBOARD_DIR) / f"localmoe-{name}.json"


def render_json(dashboard: dict[str, Any]) -> str:
    """The committed form: two-space indent, keys in the builder's order, a final newline."""
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def generated() -> dict[str, str]:
    """Dashboard name -> its JSON text, freshly generated."""
    return {name: render_json(build().to_json()) for name, build in DASHBOARDS.items()}


def write(directory: Path | None = None) -> list[Path]:
    """Write every dashboard's JSON (into the chart by default); the paths written."""
    directory = directory or DASHBOARD_DIR
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in generated().items():
        path = dashboard_path(name, directory)
        path.write_text(text)
        paths.append(path)
    return paths


def stale(directory: Path | None = None) -> list[str]:
    """The dashboards whose committed JSON differs from (or lacks) a fresh generation."""
    found = []
    for name, text in generated().items():
        path = dashboard_path(name, directory)
        if not path.is_file() or path.read_text() != text:
            found.append(str(path.relative_to(REPO) if path.is_relative_to(REPO) else path))
    return found


def dashboard_expressions(name: str) -> list[promql.Expression]:
    """Every panel's queries (and the variables' label_values metrics) of one dashboard."""
    dashboard = DASHBOARDS[name]()
    found = []
    for variable in dashboard.variables:
        metric = re.fullmatch(r"label_values\((\w+), \w+\)", variable.query)
        if metric:
            found.append(promql.Expression(f"{name}: variable {variable.name}", metric.group(1)))
    for panel in dashboard.panels:
        for index, target in enumerate(panel.targets):
            found.append(promql.Expression(f"{name}: {panel.title} [{index}]", target.expr))
    return found


def rules() -> list[dict[str, Any]]:
    """The rules of the chart's rule file (none while it does not exist)."""
    if not RULES_FILE.is_file():
        return []
    document = yaml.safe_load(RULES_FILE.read_text()) or {}
    return [rule for group in document.get("groups", []) for rule in group.get("rules", [])]


def rule_expressions() -> list[promql.Expression]:
    found = []
    for rule in rules():
        name = rule.get("record") or rule.get("alert") or "?"
        found.append(promql.Expression(f"rule {name}", str(rule["expr"])))
    return found


def recorded_metrics() -> set[str]:
    """The series the rule file's recording rules define."""
    return {rule["record"] for rule in rules() if "record" in rule}


def all_expressions() -> list[promql.Expression]:
    found = [expr for name in DASHBOARDS for expr in dashboard_expressions(name)]
    return found + rule_expressions()


def unparsable(expressions: list[promql.Expression]) -> list[str]:
    """`source: error` for every expression promql-parser refuses."""
    errors = []
    for expression in expressions:
        try:
            promql.parse(expression.expr)
        except (ValueError, TypeError) as exc:
            errors.append(f"{expression.source}: {exc}")
    return errors


def is_external(metric: str) -> bool:
    return metric in EXTERNAL_METRICS or metric.startswith(EXTERNAL_PREFIXES)


def named_metrics(expressions: list[promql.Expression]) -> set[str]:
    """The metrics the expressions select that our processes must export (recording-rule
    outputs and external metrics left out)."""
    names = set()
    for expression in expressions:
        names |= promql.metric_names(expression.expr)
    return {name for name in names - recorded_metrics() if not is_external(name)}

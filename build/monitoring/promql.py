"""PromQL of dashboards and rule files: Grafana variables substituted, parsed with `promql-parser`,
walked for the metric names, range windows, divisions and quantiles it holds."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import promql_parser

__all__ = [
    "PARSE_VALUES",
    "Expression",
    "metric_names",
    "parse",
    "substitute",
    "unguarded_divisions",
    "unguarded_quantiles",
]

# What Grafana would put in for its variables, for parsing only: windows of unusual lengths so a
# walk can tell `$__rate_interval` (17 s) and `$__range` (19 s) from a window written by hand.
PARSE_VALUES = {
    "__rate_interval": "17s",
    "__range": "19s",
    "__interval": "13s",
    "datasource": "prometheus",
}
RATE_INTERVAL_PARSED = timedelta(seconds=17)
RANGE_PARSED = timedelta(seconds=19)
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """`expr` with `$name` / `${name}` replaced from `values`; any other variable becomes `.*`
    (Grafana's "All" for our regex-matched variables)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, ".*")

    return _VARIABLE.sub(replace, expr)


def parse(expr: str, values: Mapping[str, str] = PARSE_VALUES) -> Any:
    """The promql-parser AST of `expr` after substitution; ValueError if it does not parse."""
    return promql_parser.parse(substitute(expr, values))


@dataclass(frozen=True)
class Expression:
    """One PromQL expression and where it came from (a dashboard panel, a rule)."""

    source: str
    expr: str


def _nodes(ast: Any) -> Iterator[Any]:
    found: list[Any] = []
    promql_parser.walk(ast, lambda node: found.append(node))
    yield from found


def metric_names(expr: str) -> set[str]:
    """Every metric a PromQL expression selects."""
    names = set()
    for node in _nodes(parse(expr)):
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    names.add(matcher.value)
    return names


def range_windows(expr: str) -> list[timedelta]:
    """The windows of every range selector (`rate(x[...])`, subqueries) in `expr`, as parsed."""
    windows = []
    for node in _nodes(parse(expr)):
        if isinstance(node, promql_parser.MatrixSelector | promql_parser.SubqueryExpr):
            windows.append(node.range)
    return windows


def _unparen(node: Any) -> Any:
    while isinstance(node, promql_parser.ParenExpr):
        node = node.expr
    return node


def _is_positive_filter(node: Any) -> bool:
    """`x > 0` without `bool`: drops the samples where x is 0 instead of dividing by them."""
    node = _unparen(node)
    if not isinstance(node, promql_parser.BinaryExpr) or str(node.op) != ">":
        return False
    if node.modifier is not None and node.modifier.return_bool:
        return False
    threshold = _unparen(node.rhs)
    return isinstance(threshold, promql_parser.NumberLiteral) and threshold.val == 0


def _is_vector(node: Any) -> bool:
    node = _unparen(node)
    return not isinstance(node, promql_parser.NumberLiteral | promql_parser.StringLiteral)


def unguarded_divisions(expr: str) -> list[str]:
    """Divisions of `expr` by a vector that is not filtered to be positive: they give NaN or Inf,
    not an empty result, when the divisor is 0 (idle)."""
    found = []
    for node in _nodes(parse(expr)):
        if (
            isinstance(node, promql_parser.BinaryExpr)
            and str(node.op) == "/"
            and _is_vector(node.rhs)
            and not _is_positive_filter(node.rhs)
        ):
            found.append(str(node))
    return found


def unguarded_quantiles(expr: str) -> list[str]:
    """`histogram_quantile` calls not joined by `and` with a positive count: NaN when idle."""
    guarded: set[int] = set()
    calls = []
    for node in _nodes(parse(expr)):
        if isinstance(node, promql_parser.BinaryExpr) and str(node.op) == "and":
            lhs = _unparen(node.lhs)
            if _is_call(lhs, "histogram_quantile") and _is_positive_filter(node.rhs):
                guarded.add(_key(lhs))
        elif _is_call(node, "histogram_quantile"):
            calls.append(node)
    return [str(call) for call in calls if _key(call) not in guarded]


def _is_call(node: Any, name: str) -> bool:
    return isinstance(node, promql_parser.Call) and node.func.name == name


def _key(node: Any) -> int:
    # The walk hands out fresh Python wrappers; the printed expression identifies the node.
    return hash(str(node))

"""A small typed builder for Grafana dashboards (schema 39) and the PromQL pieces they are made of.

Panels are dataclasses turned into Grafana's JSON model by `Dashboard.to_json()`; the layout (grid
positions, ids) is computed, never written by hand. The PromQL helpers keep the conventions in one
place: `$__rate_interval` windows, ratios that vanish when the divisor is zero, quantiles that
vanish when nothing was observed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE_INTERVAL = "$__rate_interval"
RANGE = "$__range"
SCHEMA_VERSION = 39
GRID_WIDTH = 24

PanelKind = Literal["timeseries", "stat", "heatmap", "table", "bargauge"]


# --- PromQL --------------------------------------------------------------------------------


def selector(metric: str, **labels: str) -> str:
    """`metric{label="value", ...}`; a value starting with `~` is a regex match (`=~`)."""
    matchers = []
    for name, value in labels.items():
        if value.startswith("~"):
            matchers.append(f'{name}=~"{value[1:]}"')
        else:
            matchers.append(f'{name}="{value}"')
    return f"{metric}{{{', '.join(matchers)}}}" if matchers else metric


def rate(series: str, window: str = RATE_INTERVAL) -> str:
    return f"rate({series}[{window}])"


def increase(series: str, window: str = RANGE) -> str:
    return f"increase({series}[{window}])"


def deriv(series: str, window: str = RATE_INTERVAL) -> str:
    return f"deriv({series}[{window}])"


def sum_by(labels: Sequence[str], expr: str, op: str = "sum") -> str:
    """`sum by (labels) (expr)`; `sum (expr)` without labels."""
    by = f" by ({', '.join(labels)})" if labels else ""
    return f"{op}{by} ({expr})"


def ratio(numerator: str, denominator: str) -> str:
    """numerator / denominator, with no sample (not NaN) where the denominator is 0."""
    return f"{numerator} / ({denominator} > 0)"


def quantile(q: float, histogram: str, by: Sequence[str] = (), **labels: str) -> str:
    """The q-quantile of a histogram's recent observations, with no sample (not NaN) where there
    were none."""
    buckets = sum_by(["le", *by], rate(selector(f"{histogram}_bucket", **labels)))
    count = sum_by(by, rate(selector(f"{histogram}_count", **labels)))
    return f"histogram_quantile({q}, {buckets}) and ({count} > 0)"


def attainment(histogram: str, le: str, **labels: str) -> str:
    """The fraction of recent observations at or under `le` (an SLO's attainment): a bucket
    boundary as the exporter writes it (`0.5`, `10.0`) or a variable holding one."""
    under = sum_by([], rate(selector(f"{histogram}_bucket", **labels, le=le)))
    return ratio(under, sum_by([], rate(selector(f"{histogram}_count", **labels))))


# --- panels --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One PromQL query of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False
    format: Literal["time_series", "table", "heatmap"] = "time_series"


@dataclass(frozen=True)
class Threshold:
    color: str
    value: float | None = None


@dataclass(frozen=True)
class Panel:
    """A Grafana panel: what it shows (`targets`), how (`kind`, `unit`) and how wide it is."""

    title: str
    description: str
    targets: tuple[Target, ...]
    kind: PanelKind = "timeseries"
    unit: str = "short"
    width: int = 8
    height: int = 8
    min: float | None = None
    max: float | None = None
    decimals: int | None = None
    thresholds: tuple[Threshold, ...] = ()
    stack: bool = False
    right_axis: tuple[str, ...] = ()
    """Legends of the series drawn against a right-hand axis (with `right_unit`)."""
    right_unit: str = "short"
    transformations: tuple[dict[str, Any], ...] = ()
    series_colors: tuple[tuple[str, str], ...] = ()
    """(regex on the series name, colour): a stat that names a state colours it."""
    text_mode: Literal["auto", "name", "value_and_name"] = "auto"

    def to_json(self, panel_id: int, x: int, y: int) -> dict[str, Any]:
        targets = [
            {
                "datasource": DATASOURCE,
                "expr": target.expr,
                "legendFormat": target.legend or "__auto",
                "range": not target.instant,
                "instant": target.instant,
                "format": target.format,
                "refId": chr(ord("A") + index),
            }
            for index, target in enumerate(self.targets)
        ]
        defaults: dict[str, Any] = {"unit": self.unit}
        if self.min is not None:
            defaults["min"] = self.min
        if self.max is not None:
            defaults["max"] = self.max
        if self.decimals is not None:
            defaults["decimals"] = self.decimals
        if self.thresholds:
            defaults["thresholds"] = {
                "mode": "absolute",
                "steps": [{"color": t.color, "value": t.value} for t in self.thresholds],
            }
            defaults["color"] = {"mode": "thresholds"}
        if self.kind == "timeseries":
            defaults["custom"] = {
                "drawStyle": "line",
                "lineWidth": 1,
                "fillOpacity": 20 if self.stack else 0,
                "showPoints": "never",
                "spanNulls": False,
                "stacking": {"mode": "normal" if self.stack else "none", "group": "A"},
            }
        elif self.kind == "table":
            # Cells coloured by value: a layer x expert matrix reads as a heat map.
            defaults["custom"] = {"cellOptions": {"type": "color-background"}, "align": "center"}
            defaults["color"] = {"mode": "continuous-YlRd"}
        overrides = [
            {
                "matcher": {"id": "byName", "options": legend},
                "properties": [
                    {"id": "custom.axisPlacement", "value": "right"},
                    {"id": "unit", "value": self.right_unit},
                ],
            }
            for legend in self.right_axis
        ]
        overrides += [
            {
                "matcher": {"id": "byRegexp", "options": pattern},
                "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": colour}}],
            }
            for pattern, colour in self.series_colors
        ]
        options = _options(self.kind)
        if self.kind == "stat":
            options["textMode"] = self.text_mode
        panel: dict[str, Any] = {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "datasource": DATASOURCE,
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": overrides},
            "options": options,
        }
        if self.transformations:
            panel["transformations"] = list(self.transformations)
        return panel


def _options(kind: PanelKind) -> dict[str, Any]:
    if kind == "timeseries":
        return {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    if kind == "stat":
        return {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "area",
            "textMode": "auto",
        }
    if kind == "heatmap":
        return {
            "calculate": False,
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
            "yAxis": {"axisPlacement": "left"},
            "rowsFrame": {"layout": "auto"},
            "cellGap": 1,
            "tooltip": {"mode": "single", "yHistogram": False},
        }
    if kind == "bargauge":
        return {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
        }
    return {"showHeader": True, "cellHeight": "sm"}


@dataclass(frozen=True)
class Row:
    """A collapsible row header and the panels under it, laid out left to right."""

    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Variable:
    """A dashboard variable: the datasource, label values of a metric (`query`), or a choice
    among fixed `options` (an SLO target) with its `default`."""

    name: str
    label: str
    query: str = ""
    """`label_values(metric, label)`; empty for the datasource and custom variables."""
    multi: bool = True
    options: tuple[str, ...] = ()
    default: str = ""

    def to_json(self) -> dict[str, Any]:
        if self.options:
            return {
                "name": self.name,
                "label": self.label,
                "type": "custom",
                "query": ",".join(self.options),
                "current": {"selected": True, "text": self.default, "value": self.default},
                "options": [
                    {"selected": option == self.default, "text": option, "value": option}
                    for option in self.options
                ],
                "multi": False,
                "includeAll": False,
                "hide": 0,
            }
        if not self.query:
            return {
                "name": self.name,
                "label": self.label,
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "refresh": 1,
                "regex": "",
            }
        return {
            "name": self.name,
            "label": self.label,
            "type": "query",
            "datasource": DATASOURCE,
            "definition": self.query,
            "query": {"query": self.query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "includeAll": True,
            "allValue": ".*",
            "multi": self.multi,
            "refresh": 2,
            "sort": 1,
            "hide": 0,
            "regex": "",
        }


@dataclass(frozen=True)
class Dashboard:
    """One dashboard: its identity, variables and rows of panels."""

    uid: str
    title: str
    description: str
    tags: tuple[str, ...]
    variables: tuple[Variable, ...]
    rows: tuple[Row, ...]
    refresh: str = "30s"
    time_from: str = "now-1h"

    @property
    def panels(self) -> list[Panel]:
        return [panel for row in self.rows for panel in row.panels]

    @property
    def defaults(self) -> dict[str, str]:
        """The values the fixed-choice variables start with."""
        return {v.name: v.default for v in self.variables if v.options}

    def to_json(self) -> dict[str, Any]:
        panels: list[dict[str, Any]] = []
        y = 0
        panel_id = 1
        for row in self.rows:
            panels.append(
                {
                    "id": panel_id,
                    "type": "row",
                    "title": row.title,
                    "collapsed": False,
                    "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                    "panels": [],
                }
            )
            panel_id += 1
            y += 1
            x = 0
            line_height = 0
            for panel in row.panels:
                if x + panel.width > GRID_WIDTH:
                    y += line_height
                    x, line_height = 0, 0
                panels.append(panel.to_json(panel_id, x, y))
                panel_id += 1
                x += panel.width
                line_height = max(line_height, panel.height)
            y += line_height
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": list(self.tags),
            "editable": True,
            "graphTooltip": 1,
            "timezone": "browser",
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "refresh": self.refresh,
            "time": {"from": self.time_from, "to": "now"},
            "annotations": {"list": []},
            "links": [
                {
                    "title": "LocalMoE dashboards",
                    "type": "dashboards",
                    "tags": ["localmoe"],
                    "asDropdown": True,
                    "includeVars": False,
                    "keepTime": True,
                }
            ],
            "templating": {"list": [variable.to_json() for variable in self.variables]},
            "panels": panels,
        }

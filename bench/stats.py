"""Summaries of latency samples: percentiles, and a small CDF for the charts."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

PERCENTILES = (50.0, 90.0, 99.0)
# Points of the cumulative distribution kept for the charts (percent of requests).
CDF_POINTS = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97.5, 99, 99.5, 99.9, 100)


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """The `pct` percentile of already sorted values (nearest rank); NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def summarize(values: Iterable[float]) -> dict[str, float]:
    """count, mean, p50/p90/p99, max and a CDF of the samples (milliseconds in, out)."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0}
    out: dict = {
        "count": len(ordered),
        "mean": statistics.fmean(ordered),
        "max": ordered[-1],
        **{f"p{pct:g}": percentile(ordered, pct) for pct in PERCENTILES},
    }
    out["cdf"] = [[percentile(ordered, p), p] for p in CDF_POINTS]
    return out


def median(values: Iterable[float]) -> float:
    """Median of the finite values; NaN when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan

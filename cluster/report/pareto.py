"""Accuracy x cost Pareto frontiers per model family: which (model, format) points are dominated.

A point is dominated when another has at least its recovery and at least as good a cost (more
queries per dollar, or less latency), and is strictly better in one. Cost is the mean over the use
cases every point of the family was measured on (so points are comparable), asynchronous queries per
dollar at the highest rate meeting the report's SLO, synchronous ones from single-stream latency.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from cluster.config.schema import ReportConfig
from cluster.report.data import RunData
from cluster.report.guideline import accuracy, baseline_of

Row = dict[str, Any]


@dataclass(frozen=True)
class Point:
    """One checkpoint on one hardware target in one mode."""

    model: str
    fmt: str
    recovery: float
    queries_per_dollar: float | None
    latency_s: float | None  # single-stream end-to-end latency (sync only)
    dominated: bool = False


def dominated(values: list[tuple[float, float]]) -> list[bool]:
    """Flags for (higher-is-better, higher-is-better) pairs: True where another pair dominates."""
    out = []
    for i, (a, b) in enumerate(values):
        out.append(any(j != i and c >= a and d >= b and (c > a or d > b) for j, (c, d) in enumerate(values)))
    return out


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def points(
    data: RunData, cfg: ReportConfig, sweep: str, family: str, hw: str, mode: str
) -> tuple[list[Point], list[str]]:
    """The family's points (cost from the report's SLO) and a note per checkpoint left out."""
    rows = [
        r
        for r in data.judged(cfg.slo)
        if (r["sweep"], r["hardware"], r["mode"]) == (sweep, hw, mode)
        and data.family(r["model"]) == family
        and r["status"] == "measured"
    ]
    key = "queries_per_dollar" if mode == "sync" else "slo_queries_per_dollar"
    cells: dict[tuple[str, str], dict[str, Row]] = {}
    for r in rows:
        if r[key] is not None:
            cells.setdefault((r["model"], r["format"]), {})[r["use_case"]] = r
    shared = set.intersection(*(set(v) for v in cells.values())) if cells else set()
    out, left = [], []
    for (model, fmt), by_uc in sorted(cells.items()):
        acc = accuracy(data, sweep, model, fmt, cfg, baseline_of(data, sweep))
        if acc.recovery is None:
            left.append(f"{model} {data.format_label(fmt)}: {acc.why}")
            continue
        use = [by_uc[uc] for uc in sorted(shared)]
        lat = [r["mean_e2el_ms"] / 1000 for r in use if r["mode"] == "sync" and r["mean_e2el_ms"] is not None]
        out.append(Point(model, fmt, acc.recovery, _mean([r[key] for r in use]), _mean(lat)))
    return out, left


def mark(pts: list[Point], by: str) -> list[Point]:
    """The points with `dominated` set for recovery vs `by` (queries_per_dollar: more is better; latency_s:
    less is); points without that number are left out."""
    usable = [p for p in pts if getattr(p, by) is not None]
    sign = 1.0 if by == "queries_per_dollar" else -1.0
    flags = dominated([(p.recovery, sign * getattr(p, by)) for p in usable])
    return [replace(p, dominated=f) for p, f in zip(usable, flags, strict=True)]

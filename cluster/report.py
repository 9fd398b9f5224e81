"""Print what a run measured: the plan, a recovery table and a performance table (rich).

Tables are computed from the rows the stages produced (the same rows written to Parquet), so
what a person reads is what a reader of the datasets gets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table

from cluster.plan import Cell


def _num(x: Any, fmt: str = "{:.2f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return fmt.format(x)


def plan_table(cells: Iterable[Cell], title: str) -> Table:
    """One line per cell."""
    t = Table(title=title)
    for col in ("stage", "model", "format", "detail", "key", "status"):
        t.add_column(col)
    for c in cells:
        t.add_row(c.stage, c.model, c.format, c.detail, c.key, c.status)
    return t


def recovery_table(rows: list[dict]) -> Table:
    """Suite score and recovery vs the baseline per model x format x suite."""
    t = Table(title="Accuracy recovery (ratio of suite averages vs baseline)")
    for col in ("model", "suite", "format", "score", "baseline", "recovery %", "95% CI", "flips -/+"):
        t.add_column(col, justify="left" if col in ("model", "suite", "format") else "right")
    for r in rows:
        ci = f"{_num(r['recovery_ci_low'])}-{_num(r['recovery_ci_high'])}"
        flips = f"{r['flips_right_to_wrong']}/{r['flips_wrong_to_right']}"
        t.add_row(
            r["model"],
            r["suite"],
            r["format"],
            _num(r["score"]),
            _num(r["baseline_score"]),
            _num(r["recovery_pct"]),
            ci,
            flips,
        )
    return t


def perf_table(rows: list[dict]) -> Table:
    """Latency, throughput and queries per dollar per cell (skipped cells say why)."""
    t = Table(title="Serving performance (Ray Serve + vLLM)")
    cols = (
        "model",
        "format",
        "hardware",
        "use case",
        "mode",
        "done/failed",
        "TTFT ms",
        "TPOT ms",
        "e2e ms",
        "req/s",
        "queries/$",
        "note",
    )
    for col in cols:
        t.add_column(col)
    for r in rows:
        done = f"{r['completed']}/{r['failed']}" if r["status"] == "measured" else "-"
        t.add_row(
            r["model"],
            r["format"],
            f"{r['device_count']}x{r['hardware']}",
            r["use_case"],
            r["mode"],
            done,
            _num(r["mean_ttft_ms"], "{:.1f}"),
            _num(r["mean_tpot_ms"], "{:.2f}"),
            _num(r["mean_e2el_ms"], "{:.0f}"),
            _num(r["request_throughput"]),
            _num(r["queries_per_dollar"], "{:.0f}"),
            r["skip_reason"]
            or ("CLIENT-BOUND: offered load near the generator's capacity" if r["client_bound"] else ""),
        )
    return t


def trials_table(rows: list[dict]) -> Table:
    """One line per tuning trial."""
    t = Table(title="Tuning trials (objective: recovery %)")
    for col in ("trial", "params", "docs", "score", "recovery %", "per rung", "status", "fallback", "best"):
        t.add_column(col)
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"])
        status = "stopped early" if r["stopped_early"] else r["status"]
        best = ""
        if r["is_best"]:
            best = "best"
            if r["validation_recovery_pct"] is not None:
                best += f"; {r['validation_suite']} {r['validation_recovery_pct']:.2f}%"
        t.add_row(
            r["trial_id"],
            params,
            str(r["budget"]),
            _num(r["score"]),
            _num(r["recovery_pct"]),
            " ".join(f"{x:.1f}" for x in r["rung_recovery_pct"]),
            status,
            str(len(r["rtn_fallback_modules"])),
            best,
        )
    return t


def similarity_table(rows: list[dict]) -> Table:
    """Mean similarity of each format's greedy answers to the baseline's."""
    from cluster.similarity import METRICS

    t = Table(title="Generation similarity vs baseline (mean over prompts, 0-1)")
    for col in ("model", "format", "prompts", *METRICS):
        t.add_column(col)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["format"]), []).append(r)
    for (m, f), rs in groups.items():
        t.add_row(m, f, str(len(rs)), *(_num(sum(r[k] for r in rs) / len(rs), "{:.3f}") for k in METRICS))
    return t


def print_report(console: Console, results: dict[str, list[dict]]) -> None:
    """Print every table the run has rows for."""
    if results.get("recovery"):
        console.print(recovery_table(results["recovery"]))
    if results.get("similarity"):
        console.print(similarity_table(results["similarity"]))
    if results.get("perf"):
        console.print(perf_table(results["perf"]))
    if results.get("trials"):
        console.print(trials_table(results["trials"]))

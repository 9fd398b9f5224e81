"""Print what a run measured: the plan, cell status, and the recovery, similarity, performance and
tuning tables (rich), read from the committed datasets of an output root.

Every planned cell appears: rows without a number show their status and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cluster.plan.cells import Cell
from serve.config import VLLM_SERVE


def _num(x: Any, fmt: str = "{:.2f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return fmt.format(x)


def plan_table(cells: Iterable[Cell], title: str) -> Table:
    """One line per cell: coordinates, key, dependencies, resources, status."""
    t = Table(title=title)
    for col in ("stage", "model", "format", "detail", "key", "deps", "resources", "status"):
        t.add_column(col)
    for c in cells:
        r = c.resources
        res = (
            f"{r.cpus:g} cpu"
            + (f", {r.gpus} gpu" if r.gpus else "")
            + (f", {r.engines} engine(s)" if r.engines else "")
        )
        res += f" [{r.accelerator}]" if r.accelerator else ""
        res += ", exclusive" if r.exclusive else ""
        status = c.status + (
            f" (dequantized: {c.reason})"
            if c.route == "dequantized"
            else (f": {c.reason}" if c.reason else "")
        )
        t.add_row(c.stage, c.model, c.format, c.detail, c.key, str(len(c.deps)), res, status)
    return t


def status_table(rows: list[tuple[Cell, str, str]], title: str) -> Table:
    """One line per cell: its state (done, skipped, failed, blocked, pending) and error."""
    t = Table(title=title)
    for col in ("state", "stage", "model", "format", "detail", "key", "error / note"):
        t.add_column(col)
    for c, state, info in rows:
        style = {"failed": "bold red", "blocked": "red", "pending": "yellow"}.get(state, "")
        t.add_row(state, c.stage, c.model, c.format, c.detail, c.key, info, style=style)
    return t


def recovery_table(rows: list[dict]) -> Table:
    """Suite score and recovery vs the baseline per model x format x suite, with status."""
    t = Table(title="Accuracy recovery (ratio of suite averages vs baseline, 95% bootstrap CI)")
    for col in (
        "model",
        "suite",
        "format",
        "score",
        "baseline",
        "chance",
        "recovery %",
        "95% CI",
        "flips -/+",
        "weights",
        "status",
    ):
        t.add_column(
            col, justify="left" if col in ("model", "suite", "format", "weights", "status") else "right"
        )
    for r in sorted(
        rows, key=lambda r: (r["model"], r["suite"], r["format"] != r["baseline_format"], r["format"])
    ):
        ci = f"{_num(r['recovery_ci_low'])}-{_num(r['recovery_ci_high'])}"
        flips = (
            "-"
            if r["flips_right_to_wrong"] is None
            else f"{r['flips_right_to_wrong']}/{r['flips_wrong_to_right']}"
        )
        status = r["status"] if r["status"] == "measured" else f"{r['status']}: {r['reason']}"
        if r["status"] == "baseline_at_chance":
            status = "baseline at chance"  # the reason (its interval) is in the dataset and the report
        t.add_row(
            r["model"],
            r["suite"],
            r["format"],
            _num(r["score"]),
            _num(r["baseline_score"]),
            _num(r.get("chance_score")),
            _num(r["recovery_pct"]),
            ci if r["recovery_pct"] is not None else "-",
            flips,
            r["weights"],
            status,
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
        note = r["skip_reason"] or (
            "CLIENT-BOUND: offered load near the generator's capacity" if r["client_bound"] else ""
        )
        mode = r["mode"] + (f" {r['target_rate']:.2g}/s" if r.get("target_rate") else "")
        t.add_row(
            r["model"],
            r["format"],
            f"{r['device_count']}x{r['hardware']}",
            r["use_case"],
            mode,
            done,
            _num(r["mean_ttft_ms"], "{:.1f}"),
            _num(r["mean_tpot_ms"], "{:.2f}"),
            _num(r["mean_e2el_ms"], "{:.0f}"),
            _num(r["request_throughput"]),
            _num(r["queries_per_dollar"], "{:.0f}"),
            note,
        )
    return t


def overhead_table(rows: list[dict]) -> Table:
    """Ray Serve against bare `vllm serve` on the same checkpoint, engine and load."""
    from cluster.report.serving import serve_overhead

    t = Table(title="Serving overhead: Ray Serve vs bare vllm serve (same engine, same load)")
    cols = ("model", "format", "hardware", "use case", "run", "req/s Serve", "req/s bare", "ratio")
    for col in (*cols, "TTFT ms Serve", "TTFT ms bare", "TTFT +%", "e2e +%"):
        t.add_column(col)
    for r in serve_overhead(rows):
        rate = r["target_rate"]
        t.add_row(
            r["model"],
            r["format"],
            r["hardware"],
            r["use_case"],
            f"{r['mode']} {r['profile']}" + (f" {rate:.2g}/s" if rate else ""),
            _num(r["serve_rps"]),
            _num(r["bare_rps"]),
            _num(r["throughput_ratio"], "{:.3f}x"),
            _num(r["serve_ttft_ms"], "{:.1f}"),
            _num(r["bare_ttft_ms"], "{:.1f}"),
            _num(r["ttft_overhead_pct"], "{:+.1f}"),
            _num(r["e2el_overhead_pct"], "{:+.1f}"),
        )
    return t


def _serve_perf_table(rows: list[dict]) -> Table:
    """The performance table of Serve's (and imported) rows; bare runs go to the overhead table."""
    return perf_table([r for r in rows if r.get("server") != VLLM_SERVE])


def trials_table(rows: list[dict]) -> Table:
    """One line per tuning trial."""
    t = Table(title="Tuning trials (objective: recovery %)")
    for col in ("trial", "params", "docs", "score", "recovery %", "per rung", "status", "fallback", "best"):
        t.add_column(col)
    for r in sorted(rows, key=lambda r: r["trial_id"]):
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
    from cluster.eval.textsim import METRICS

    t = Table(title="Generation similarity vs baseline (mean over prompts, 0-1)")
    for col in ("model", "format", "prompts", *METRICS):
        t.add_column(col)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["format"]), []).append(r)
    for (m, f), rs in sorted(groups.items()):
        t.add_row(m, f, str(len(rs)), *(_num(sum(r[k] for r in rs) / len(rs), "{:.3f}") for k in METRICS))
    return t


def guideline_table(rows: list[dict], labels: dict[str, str]) -> Table:
    """The guideline's decisions across use cases (or per use case where there is one)."""
    t = Table(title="Guideline: the format to deploy (cheapest meeting the SLO above the recovery floor)")
    for col in ("sweep", "model", "hardware", "mode", "SLO", "use case", "deploy", "decision", "why"):
        t.add_column(col)
    for r in rows:
        style = "red" if r["decision"] == "undecided" else ""
        fmt = labels.get(r["format"], r["format"]) if r["format"] else "-"
        t.add_row(
            r["sweep"],
            r["model"],
            r["hardware"],
            r["mode"],
            r["slo"],
            r["use_case"],
            fmt,
            r["decision"],
            r["reason"],
            style=style,
        )
    return t


def cost_table(rows: list[dict], labels: dict[str, str]) -> Table:
    """Cost-reduction factor per model x hardware x format x mode."""
    t = Table(title="Cost-reduction factor vs the baseline (mean over use cases of queries/$ ratios)")
    for col in ("sweep", "model", "hardware", "format", "mode", "factor", "averaged over"):
        t.add_column(col, justify="right" if col == "factor" else "left")
    for r in rows:
        t.add_row(
            r["sweep"],
            r["model"],
            r["hardware"],
            labels.get(r["format"], r["format"]),
            r["mode"],
            _num(r["cost_reduction"]),
            r["note"],
        )
    return t


def quality_table(rows: list[dict]) -> Table:
    """Each checkpoint's health verdict and quality-gate figures vs the baseline."""
    t = Table(title="Checkpoints: health and the quality gate (vs the baseline, held-out text)")
    for col in ("model", "format", "health", "KL nats/token", "top-1 agree", "ppl ratio", "tokens"):
        t.add_column(col)
    for r in sorted(rows, key=lambda r: (r["model"], r["format"])):
        top1 = r.get("quality_top1")
        t.add_row(
            r["model"],
            r["format"],
            r["health"],
            _num(r.get("quality_kl"), "{:.4g}"),
            "-" if top1 is None else f"{100 * top1:.1f}%",
            _num(r.get("quality_ppl_ratio"), "{:.3f}"),
            str(r.get("quality_tokens") or "-"),
        )
    return t


def print_report(console: Console, root: Path | str, sweep: str) -> None:
    """Print every table the sweep has committed rows for (read from the datasets under root)."""
    from cluster.store.datasets import rows

    tables = (
        ("quantized", quality_table),
        ("recovery", recovery_table),
        ("similarity", similarity_table),
        ("perf", _serve_perf_table),
        ("trials", trials_table),
    )
    for name, make in tables:
        data = rows(root, name, sweep=sweep)
        if data:
            console.print(make(data))
        if name == "perf" and any(r.get("server") == VLLM_SERVE for r in data):
            console.print(overhead_table(data))
    from cluster.report.proxies import correlation_rows, correlation_table

    found = correlation_rows(
        rows(root, "trials", sweep=sweep),
        rows(root, "proxies", sweep=sweep),
        rows(root, "recovery", sweep=sweep),
    )
    if found:
        console.print(correlation_table(found))

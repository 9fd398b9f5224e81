"""Serving economics under an SLO, shared by the loadtest stage (its `perf` columns) and the report.

A cell's perf rows are one synchronous run and one or more asynchronous runs (several rates under
the `sweep` profile). Each run is judged against the SLO from its raw requests (or, for imported
summaries, its p99 columns). Asynchronous queries per dollar use the highest achieved rate that
met the SLO; a format meeting it at no rate buys 0 queries per dollar there. Synchronous queries
per dollar are the study's (3600 / latency / $/h): one stream is already the lowest latency a
deployment offers. The cost-reduction factor (`serve.cost.cost_reduction`) is the mean over use
cases of a format's queries per dollar over the baseline's, on the same hardware and mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from serve import cost
from serve import slo as slo_mod
from serve.config import RAY_SERVE, VLLM_SERVE
from serve.records import RequestRecord

Row = dict[str, Any]
COLUMNS = (
    "slo",
    "goodput_rps",
    "slo_met",
    "slo_max_qps",
    "slo_queries_per_dollar",
    "cost_reduction",
    "cost_reduction_note",
)  # the perf columns this module fills


def verdict(row: Row, records: Sequence[RequestRecord] | None, slo: slo_mod.Slo) -> slo_mod.Verdict:
    """A measured run against the SLO: from its requests, else from its p99 columns."""
    if row.get("status") != "measured":
        return slo_mod.Verdict(None, None, None, None)
    if records:
        return slo_mod.judge(records, slo)
    return slo_mod.judge_summary(row.get("p99_ttft_ms"), row.get("p99_tpot_ms"), slo)


def _price(row: Row) -> float | None:
    p = row.get("price_per_hour")
    return p if p is not None and math.isfinite(p) and p > 0 else None


def slo_columns(
    rows: Sequence[Row], records: Sequence[Sequence[RequestRecord] | None], slo: slo_mod.Slo
) -> list[Row]:
    """The SLO columns of one cell's perf rows, in order (see the module docstring)."""
    verdicts = [verdict(r, recs, slo) for r, recs in zip(rows, records, strict=True)]
    runs = [
        (r.get("request_throughput"), v.met)
        for r, v in zip(rows, verdicts, strict=True)
        if r["mode"] == "async"
    ]
    best = slo_mod.best_rate(runs)
    out = []
    judged = any(m is not None for _, m in runs)
    for r, v in zip(rows, verdicts, strict=True):
        price = _price(r)
        if r["mode"] == "async":
            qps = best
            if qps is not None and price:
                qpd: float | None = cost.queries_per_dollar_async(qps, price)
            else:
                qpd = 0.0 if judged and price else None  # judged, and no rate met the SLO
        else:
            qps = r.get("request_throughput") if v.met else None
            qpd = r.get("queries_per_dollar") if v.met else (0.0 if v.met is False else None)
        out.append(
            {
                "slo": slo_mod.describe(slo),
                "goodput_rps": v.goodput_rps,
                "slo_met": v.met,
                "slo_max_qps": qps,
                "slo_queries_per_dollar": qpd,
            }
        )
    return out


def cell_qpd(rows: Sequence[Row], mode: str) -> tuple[float | None, str]:
    """A cell's queries per dollar in a mode, and how it was got (see the module docstring)."""
    mine = [r for r in rows if r["mode"] == mode and r.get("status") == "measured"]
    if not mine:
        return None, "not measured"
    if mode == "sync":
        return mine[0].get("queries_per_dollar"), "single stream"
    judged = [r for r in mine if r.get("slo_met") is not None]
    if judged:
        return judged[0].get("slo_queries_per_dollar"), "highest rate meeting the SLO"
    peak = [r["queries_per_dollar"] for r in mine if r.get("queries_per_dollar") is not None]
    return (
        (max(peak), "peak rate (no latency percentiles to judge the SLO)") if peak else (None, "no numbers")
    )


def by_use_case(rows: Sequence[Row], mode: str) -> dict[str, float]:
    """use case -> queries per dollar of one format's perf rows in a mode (cells without one left out)."""
    cells: dict[str, list[Row]] = {}
    for r in rows:
        cells.setdefault(r["use_case"], []).append(r)
    out = {}
    for uc, rs in cells.items():
        qpd, _ = cell_qpd(rs, mode)
        if qpd is not None:
            out[uc] = qpd
    return out


def cost_reduction(fmt_rows: Sequence[Row], base_rows: Sequence[Row], mode: str) -> tuple[float | None, str]:
    """The cost-reduction factor of a format vs the baseline in a mode, and what it averages over."""
    mine, base = by_use_case(fmt_rows, mode), by_use_case(base_rows, mode)
    if not base:
        return None, "baseline not measured (no queries/$ in this mode)"
    zero = sorted(u for u, v in base.items() if v <= 0)
    base = {u: v for u, v in base.items() if v > 0}
    shared = sorted(set(mine) & set(base))
    if not shared:
        return None, "no use case measured for both this format and the baseline"
    note = f"mean over {len(shared)} use case(s): {', '.join(shared)}"
    if zero:
        note += f"; left out where the baseline met the SLO at no rate: {', '.join(zero)}"
    return cost.cost_reduction({u: mine[u] for u in shared}, base), note


OVERHEAD_RUN = ("sweep", "model", "format", "hardware", "use_case", "mode", "profile", "target_rate")


def serve_overhead(rows: Sequence[Row]) -> list[Row]:
    """Ray Serve vs bare `vllm serve` per run measured on both (`serve.bare_baseline`).

    Each Serve run is paired with the bare run of the same cell, mode, profile and offered rate:
    throughput ratio (Serve / bare: 1.0 costs nothing) and mean TTFT and end-to-end latency
    overheads in percent of bare's. Runs measured on one server only are left out.
    """
    measured = [r for r in rows if r.get("status") == "measured" and r.get("completed")]
    bare = {tuple(r[k] for k in OVERHEAD_RUN): r for r in measured if r.get("server") == VLLM_SERVE}
    out = []
    for r in measured:
        b = bare.get(tuple(r[k] for k in OVERHEAD_RUN))
        if r.get("server") != RAY_SERVE or b is None:
            continue
        out.append(
            {
                **{k: r[k] for k in OVERHEAD_RUN},
                "serve_rps": r["request_throughput"],
                "bare_rps": b["request_throughput"],
                "throughput_ratio": _ratio(r["request_throughput"], b["request_throughput"]),
                "serve_ttft_ms": r["mean_ttft_ms"],
                "bare_ttft_ms": b["mean_ttft_ms"],
                "ttft_overhead_pct": _overhead(r["mean_ttft_ms"], b["mean_ttft_ms"]),
                "e2el_overhead_pct": _overhead(r["mean_e2el_ms"], b["mean_e2el_ms"]),
            }
        )
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _overhead(serve: float | None, bare: float | None) -> float | None:
    r = _ratio(serve, bare)
    return None if r is None else 100.0 * (r - 1.0)

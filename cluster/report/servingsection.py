"""The report's serving sections: cost-reduction factors, single-stream latency and queries per dollar
per use case, latency against throughput per format, every run with its goodput under the SLO, and
the accuracy x cost Pareto frontiers per model family. All from `perf` (and `requests`, re-judged
against the report's SLO by `RunData.judged`).
"""

from __future__ import annotations

from typing import Any

from cluster.config.schema import ReportConfig
from cluster.report import figures as F
from cluster.report import html as H
from cluster.report import pareto, serving
from cluster.report.data import RunData
from cluster.report.guideline import baseline_of
from serve.slo import describe

Row = dict[str, Any]
RUN_HEADERS = (
    "format",
    "use case",
    "mode",
    "profile",
    "target req/s",
    "achieved req/s",
    "TTFT ms mean",
    "TTFT p99",
    "ITL ms mean",
    "TPOT p99",
    "goodput req/s",
    "SLO met",
    "queries/$",
    "note",
)


def cost_rows(data: RunData, cfg: ReportConfig, sweep: str) -> list[Row]:
    """Per model x hardware x format x mode: the cost-reduction factor vs the baseline (report's SLO)."""
    rows = [r for r in data.judged(cfg.slo) if r["sweep"] == sweep]
    base_fmt, out = baseline_of(data, sweep), []
    for model, hw in sorted({(r["model"], r["hardware"]) for r in rows}):
        mine = [r for r in rows if (r["model"], r["hardware"]) == (model, hw)]
        base = [r for r in mine if r["format"] == base_fmt]
        for fmt in sorted({r["format"] for r in mine}):
            f_rows = [r for r in mine if r["format"] == fmt]
            for mode in ("sync", "async"):
                if any(r["mode"] == mode for r in f_rows):
                    value, note = serving.cost_reduction(f_rows, base, mode)
                    skipped = [r for r in f_rows if r["mode"] == mode and r["status"] != "measured"]
                    if value is None and len(skipped) == sum(r["mode"] == mode for r in f_rows):
                        note = skipped[0]["skip_reason"] or skipped[0]["status"]
                    out.append(
                        {
                            "sweep": sweep,
                            "model": model,
                            "hardware": hw,
                            "format": fmt,
                            "mode": mode,
                            "cost_reduction": value,
                            "note": note,
                            "device_count": f_rows[0]["device_count"],
                        }
                    )
    return out


def _formats(rows: list[Row], baseline: str) -> list[str]:
    return sorted({r["format"] for r in rows}, key=lambda f: (f != baseline, f))


def runs_table(data: RunData, rows: list[Row]) -> str:
    """Every run of a model on one target: the numbers, goodput and the SLO verdict, or why it has none."""
    body, classes = [], []
    for r in sorted(
        rows, key=lambda r: (r["use_case"], r["format"], r["mode"] != "sync", r["request_throughput"] or 0)
    ):
        note = r["skip_reason"] or (
            "client-bound: offered load near the generator's capacity" if r["client_bound"] else ""
        )
        met = {True: "yes", False: "no", None: "-"}[r["slo_met"]]
        qpd = r["queries_per_dollar"]
        body.append(
            (
                data.format_label(r["format"]),
                data.use_case_label(r["use_case"]),
                r["mode"],
                r["profile"],
                H.num(r["target_rate"]),
                H.num(r["request_throughput"]),
                H.num(r["mean_ttft_ms"], "{:,.1f}"),
                H.num(r["p99_ttft_ms"], "{:,.1f}"),
                H.num(r["mean_itl_ms"]),
                H.num(r["p99_tpot_ms"]),
                H.num(r["goodput_rps"]),
                met,
                H.num(qpd, "{:,.0f}"),
                note,
            )
        )
        classes.append("muted" if r["status"] != "measured" else ("bad" if r["slo_met"] is False else ""))
    return H.table(RUN_HEADERS, body, numeric=range(4, 13), row_classes=classes)


def _cost_figures(
    data: RunData,
    cfg: ReportConfig,
    rows: list[Row],
    where: tuple[str, str, str],
    formats: list[str],
    figs: F.Figures,
) -> list[str]:
    """Single-stream latency, and queries per dollar per mode, per use case and format."""
    sweep, model, hw = where
    tag, blocks = f"{sweep}-{model}-{hw}", []
    sync = [r for r in rows if r["mode"] == "sync"]
    if any(r["mean_e2el_ms"] is not None for r in sync):
        title = f"{model} · {hw}: single-stream latency"
        fig = F.bars(data, sync, "mean_e2el_ms", "seconds per request", title, formats, scale=1 / 1000)
        blocks.append(
            H.figure(figs.save(fig, f"{tag}-sync-latency", f"{model} on {hw}: synchronous latency"))
        )
    for mode, key in (("sync", "queries_per_dollar"), ("async", "slo_queries_per_dollar")):
        mine = [r for r in rows if r["mode"] == mode]
        cells = {(r["format"], r["use_case"]): r for r in sorted(mine, key=lambda r: r[key] is not None)}
        if any(r[key] is not None for r in cells.values()):
            what = "single stream" if mode == "sync" else f"highest rate meeting {describe(cfg.slo)}"
            short = "sync, single stream" if mode == "sync" else f"async, at SLO '{cfg.slo.name}'"
            title = f"{model} · {hw}: queries/$ ({short})"
            fig = F.bars(data, list(cells.values()), key, "queries per dollar", title, formats)
            caption = f"{model} on {hw}: queries per dollar, {what}"
            blocks.append(H.figure(figs.save(fig, f"{tag}-{mode}-qpd", caption)))
    return blocks


def _target(data: RunData, cfg: ReportConfig, sweep: str, model: str, hw: str, figs: F.Figures) -> list[str]:
    """The blocks of one model on one hardware target."""
    rows = [r for r in data.judged(cfg.slo) if (r["sweep"], r["model"], r["hardware"]) == (sweep, model, hw)]
    formats = _formats(rows, baseline_of(data, sweep))
    head = rows[0]
    blocks = [
        f"<h3>{H.esc(model)} on {head['device_count']}× {H.esc(hw)} ({H.esc(head['device'])}, "
        f"${H.num(head['price_per_hour'])}/h)</h3>",
        *_cost_figures(data, cfg, rows, (sweep, model, hw), formats, figs),
    ]
    for uc in sorted({r["use_case"] for r in rows}):
        mine = [r for r in rows if r["use_case"] == uc]
        if any(r["mode"] == "async" and r["mean_itl_ms"] is not None for r in mine):
            label = data.use_case_label(uc)
            fig = F.latency_vs_qps(data, mine, cfg, f"{model} · {hw} · {label}", formats)
            caption = f"{label}: ITL and TTFT vs achieved QPS (filled: meets the SLO), and goodput"
            blocks.append(H.figure(figs.save(fig, f"{sweep}-{model}-{hw}-{uc}-latency-qps", caption)))
    blocks.append(H.details(f"every run on {hw} ({len(rows)} rows)", runs_table(data, rows)))
    return blocks


def section(data: RunData, sweep: str, cfg: ReportConfig, figs: F.Figures) -> list[str]:
    """The serving blocks of one sweep."""
    rows = [r for r in data.perf if r["sweep"] == sweep]
    if not rows:
        return [H.para("No serving rows in this sweep (load tests disabled, or not run yet).")]
    cr = cost_rows(data, cfg, sweep)
    blocks = [
        H.para(
            f"SLO: {describe(cfg.slo)}. Synchronous queries/$ = 3600 / (latency × $/h); asynchronous "
            "= the highest achieved rate meeting the SLO × 3600 / $/h. Cost-reduction factor = mean over "
            "use cases of the format's queries/$ over the baseline's (same hardware and mode)."
        ),
        H.table(
            ("model", "hardware", "GPUs", "format", "mode", "cost-reduction factor", "averaged over"),
            [
                (
                    c["model"],
                    c["hardware"],
                    c["device_count"],
                    data.format_label(c["format"]),
                    c["mode"],
                    H.num(c["cost_reduction"]),
                    c["note"],
                )
                for c in cr
            ],
            numeric=(2, 5),
        ),
    ]
    for model, hw in sorted({(r["model"], r["hardware"]) for r in rows}):
        blocks += _target(data, cfg, sweep, model, hw, figs)
    return blocks


def pareto_section(data: RunData, sweep: str, cfg: ReportConfig, figs: F.Figures) -> list[str]:
    """Recovery vs queries/$ (and vs latency) per model family x hardware x mode, dominated points marked."""
    rows = [r for r in data.perf if r["sweep"] == sweep and r["status"] == "measured"]
    blocks = []
    for family, hw, mode in sorted({(data.family(r["model"]), r["hardware"], r["mode"]) for r in rows}):
        pts, left = pareto.points(data, cfg, sweep, family, hw, mode)
        for by in ("queries_per_dollar", "latency_s") if mode == "sync" else ("queries_per_dollar",):
            marked = pareto.mark(pts, by)
            if not marked:
                continue
            against = "queries/$" if by != "latency_s" else "latency"
            title = f"family {family} · {hw} · {mode}: recovery vs {against}"
            fig = F.pareto(data, marked, by, title)
            blocks.append(H.figure(figs.save(fig, f"{sweep}-{family}-{hw}-{mode}-pareto-{by}", title)))
            dom = [f"{p.model} {data.format_label(p.fmt)}" for p in marked if p.dominated]
            blocks.append(H.para("Dominated: " + (", ".join(dom) if dom else "none") + "."))
        if left:
            blocks.append(H.para("Not plotted: " + "; ".join(left) + "."))
    return blocks or [H.para("No measured serving rows to place against accuracy.")]

"""The report's accuracy section: recovery with intervals, flips, health and status; the per-task
scores behind each suite score; generation similarity. Every row comes from the datasets; rows
without a number say why.
"""

from __future__ import annotations

from typing import Any

from cluster.config.schema import ReportConfig
from cluster.report import figures as F
from cluster.report import html as H
from cluster.report.data import RunData

Row = dict[str, Any]
RECOVERY_HEADERS = (
    "model",
    "suite",
    "format",
    "score",
    "baseline",
    "chance",
    "recovery %",
    "95% CI",
    "flips R→W / W→R",
    "health",
    "weights",
    "source",
    "status / reason",
)


def _status(r: Row) -> str:
    """The status, and the reason when there is one (without repeating the status in it)."""
    status, reason = r["status"], r["reason"]
    if not reason:
        return status
    return reason if reason.lower().startswith(status.replace("_", " ")) else f"{status}: {reason}"


def recovery_table(data: RunData, rows: list[Row], cfg: ReportConfig) -> str:
    """One line per model x suite x format; below-floor rows tinted, rows without a number muted."""
    rows = sorted(
        rows, key=lambda r: (r["model"], r["suite"], r["format"] != r["baseline_format"], r["format"])
    )
    body, classes = [], []
    for r in rows:
        pct, lo, hi = r["recovery_pct"], r["recovery_ci_low"], r["recovery_ci_high"]
        ci = f"{H.num(lo)} – {H.num(hi)}" if lo is not None and hi is not None else "-"
        flips = (
            "-"
            if r["flips_right_to_wrong"] is None
            else f"{r['flips_right_to_wrong']} / {r['flips_wrong_to_right']}"
        )
        body.append(
            (
                r["model"],
                r["suite"],
                data.format_label(r["format"]),
                H.num(r["score"]),
                H.num(r["baseline_score"]),
                H.num(r.get("chance_score")),
                H.num(pct),
                ci,
                flips,
                r["health"],
                r["weights"],
                r.get("source") or "quantsweep",
                _status(r),
            )
        )
        classes.append("muted" if pct is None else ("bad" if pct < cfg.recovery_floor else ""))
    return H.table(RECOVERY_HEADERS, body, numeric=(3, 4, 5, 6, 7, 8), row_classes=classes)


def task_table(data: RunData, rows: list[Row]) -> str:
    """Per task (rows) and format (columns): the metric value x 100 behind one suite score."""
    formats = sorted({r["format"] for r in rows}, key=lambda f: (f not in ("bf16",), f))
    tasks = sorted({(r["task"], r["metric"]) for r in rows})
    body = []
    for task, metric in tasks:
        cells = []
        for f in formats:
            r = next((r for r in rows if (r["task"], r["metric"], r["format"]) == (task, metric, f)), None)
            if r is None:
                cells.append("-")
            elif r["value"] is None:
                cells.append(f"{r['status']}: {r['reason']}")
            else:
                err = f" ± {r['stderr'] * 100:.2f}" if r["stderr"] else ""
                cells.append(f"{r['value'] * 100:.2f}{err}{_chance_mark(r)}")
        body.append((task, metric, *cells))
    headers = ("task", "metric", *(data.format_label(f) for f in formats))
    return H.table(headers, body, numeric=range(2, 2 + len(formats)))


def _chance_mark(r: Row) -> str:
    """' (at chance)' when the value's 95% interval (value ± 1.96 stderr) reaches chance."""
    chance = r.get("chance")
    if chance is None:
        return ""
    low = r["value"] - 1.96 * (r["stderr"] or 0.0)
    return f" (at chance {chance * 100:.1f})" if low <= chance + 1e-9 else ""


def similarity_table(data: RunData, rows: list[Row]) -> str:
    """Mean similarity of each format's greedy answers to the baseline's (0-1)."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["format"]), []).append(r)
    metrics = ("rouge1", "rougeL", "bertscore_f1", "sts")
    body = [
        (
            m,
            data.format_label(f),
            len(rs),
            *(H.num(sum(r[k] for r in rs) / len(rs), "{:.3f}") for k in metrics),
        )
        for (m, f), rs in sorted(groups.items())
    ]
    return H.table(("model", "format", "prompts", *metrics), body, numeric=range(2, 7))


def section(data: RunData, sweep: str, cfg: ReportConfig, figs: F.Figures) -> list[str]:
    """The accuracy blocks of one sweep."""
    rec = [r for r in data.recovery if r["sweep"] == sweep]
    scores = [r for r in data.scores if r["sweep"] == sweep]
    blocks = [
        H.para(
            "Recovery = 100 × format suite score / baseline suite score (a ratio of averages); the "
            "interval is a paired bootstrap over documents (imported results have none). Flips: "
            "documents the baseline got right and the format wrong, and the reverse. Chance: what a "
            "random guesser scores on the same documents (1 / choices, 0 for free-form answers); "
            "where the baseline's own 95% interval reaches it, recovery is not reported (baseline "
            "at chance), and per-task values within 1.96 stderr of chance are marked."
        )
    ]
    if not rec and not scores:
        return blocks + [H.para("No accuracy rows in this sweep (evaluation disabled, or not run yet).")]
    blocks.append(recovery_table(data, rec, cfg))
    for model in sorted({r["model"] for r in rec}):
        rows = [r for r in rec if r["model"] == model]
        fig = F.recovery(data, rows, cfg, f"{sweep} · {model}: accuracy recovery")
        blocks.append(
            H.figure(figs.save(fig, f"{sweep}-{model}-recovery", f"{model}: recovery per suite, 95% CI"))
        )
    for model, suite in sorted({(r["model"], r["suite"]) for r in scores}):
        rows = [r for r in scores if (r["model"], r["suite"]) == (model, suite)]
        blocks.append(
            f"<h3>{H.esc(model)} · {H.esc(suite)}: per-task scores (× 100)</h3>" + task_table(data, rows)
        )
    sim = [r for r in data.similarity if r["sweep"] == sweep]
    if sim:
        blocks.append("<h3>Generation similarity vs the baseline</h3>" + similarity_table(data, sim))
    return blocks

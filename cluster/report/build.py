"""`python -m cluster report`: read a run directory's datasets, write the report and the guideline.

Outputs: `<out>/index.html` (self-contained: figures embedded, also saved under `<out>/figures/`),
`<out>/config.json` (the report config it judged by), the `guideline` dataset under the run's
`datasets/` (one file per sweep x model, each replaced in one rename, stale ones removed), and a
model card beside every quantized checkpoint inside the run directory. Works on any run, finished or
partial: whatever is committed is shown, and what is missing says why.
"""

from __future__ import annotations

import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.config import reportcfg
from cluster.config.loader import REPO_ROOT
from cluster.config.schema import ReportConfig
from cluster.errors import QuantsweepError
from cluster.report import accuracy, cards, servingsection
from cluster.report import html as H
from cluster.report.data import RunData, load, slos
from cluster.report.figures import Figures
from cluster.report.guideline import guideline_rows
from cluster.store import datasets
from cluster.store.provenance import (
    CellContext,
    Provenance,
    config_hash,
    git_sha,
    write_json_atomically,
    write_text_atomically,
)
from serve.slo import describe

Row = dict[str, Any]


@dataclass
class Report:
    """What a report run wrote."""

    html: Path
    guideline: list[Row]
    cost: dict[str, list[Row]]
    cards: list[tuple[Row, str]]
    figures: int
    seconds: float
    data: RunData = field(repr=False)


def write_guideline(root: Path, rows: list[Row], cfg: ReportConfig, data: RunData) -> None:
    """Replace the guideline files of every sweep x model (atomically, one rename each); drop stale ones."""
    sources = {
        s: sorted({r.get("source") or "quantsweep" for r in data.perf + data.recovery if r["sweep"] == s})
        for s in data.sweeps
    }
    staging = root / ".staging" / f"report-{uuid.uuid4().hex[:8]}"
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r["sweep"], r["model"]), []).append(r)
    ctx = CellContext("report", "-", 0, socket.gethostname())
    digest = config_hash(reportcfg.as_data(cfg))
    for (sweep, model), rs in groups.items():
        prov = Provenance(
            digest, git_sha(REPO_ROOT), 0, source=" + ".join(sources.get(sweep, ["quantsweep"]))
        )
        where = {"sweep": sweep, "model": model}
        staged = datasets.stage_table(
            staging, "guideline", datasets.to_table("guideline", rs, prov, ctx), where
        )
        datasets.publish_table(root, "guideline", where, staged)
    for old in (root / "datasets" / "guideline").glob("sweep=*/model=*"):
        where = {"sweep": old.parent.name.split("=", 1)[1], "model": old.name.split("=", 1)[1]}
        if (where["sweep"], where["model"]) not in groups:
            datasets.publish_table(root, "guideline", where, None)
    shutil.rmtree(staging, ignore_errors=True)


def guideline_section(data: RunData, rows: list[Row]) -> list[str]:
    """The decisions of one sweep: across use cases first, each use case in a collapsed table."""
    headers = ("model", "hardware", "mode", "SLO", "use case", "deploy", "decision", "why")

    def table(rs: list[Row]) -> str:
        body = [
            (
                r["model"],
                r["hardware"],
                r["mode"],
                r["slo_detail"],
                r["use_case"],
                data.format_label(r["format"]) if r["format"] else "—",
                r["decision"],
                r["reason"],
            )
            for r in rs
        ]
        classes = ["bad" if r["decision"] == "undecided" else "good" for r in rs]
        return H.table(headers, body, row_classes=classes)

    top = [
        r
        for r in rows
        if r["use_case"] == "all"
        or not any(
            o["use_case"] == "all" and (o["model"], o["hardware"]) == (r["model"], r["hardware"])
            for o in rows
        )
    ]
    rest = [r for r in rows if r not in top]
    blocks = [table(top)]
    if rest:
        blocks.append(H.details(f"per use case ({len(rest)} decisions)", table(rest)))
    considered = [
        (r["model"], r["hardware"], r["mode"], r["slo"], r["use_case"], "\n".join(r["considered"]))
        for r in rows
    ]
    blocks.append(
        H.details(
            "every format considered, per decision",
            H.table(("model", "hardware", "mode", "SLO", "use case", "verdicts"), considered),
        )
    )
    return blocks


def provenance_section(data: RunData, sweep: str) -> list[str]:
    """Where the numbers come from: sources, runs, commits, hosts and tool versions."""
    rows = [r for r in data.perf + data.recovery + data.scores + data.quantized if r["sweep"] == sweep]

    def pick(key: str) -> str:
        default = "quantsweep" if key == "source" else "-"  # rows from before `source` existed
        return ", ".join(sorted({str(r.get(key) or default) for r in rows}))

    versions = sorted({(k, v) for r in rows for k, v in (r["versions"] or [])})
    facts = [
        ("source", pick("source")),
        ("run ids", pick("run_id")),
        ("git", pick("git_sha")),
        ("hosts", pick("host")),
        ("config hashes", pick("config_hash")),
    ]
    return [H.table(("what", "values"), facts), H.table(("package", "version"), versions)]


def _sections(
    data: RunData, cfg: ReportConfig, guide: list[Row], figs: Figures, made: list
) -> list[tuple[str, str, str]]:
    out = []
    for sweep in data.sweeps:
        rows = [r for r in guide if r["sweep"] == sweep]
        blocks = [
            H.section(
                f"{sweep}-guide",
                "Guideline: what to deploy",
                guideline_section(data, rows)
                if rows
                else [H.para("No serving rows: nothing to decide yet.")],
                3,
            ),
            H.section(f"{sweep}-acc", "Accuracy", accuracy.section(data, sweep, cfg, figs), 3),
            H.section(
                f"{sweep}-perf", "Serving performance", servingsection.section(data, sweep, cfg, figs), 3
            ),
            H.section(
                f"{sweep}-pareto",
                "Accuracy × cost (Pareto)",
                servingsection.pareto_section(data, sweep, cfg, figs),
                3,
            ),
            H.section(f"{sweep}-prov", "Provenance", provenance_section(data, sweep), 3),
        ]
        out.append((sweep, f"sweep {sweep}", H.section(sweep, f"Sweep {sweep}", blocks)))
    card_rows = [(q["sweep"], q["model"], data.format_label(q["format"]), where) for q, where in made]
    out.append(
        (
            "cards",
            "model cards",
            H.section(
                "cards", "Model cards", [H.table(("sweep", "model", "format", "README.md"), card_rows)]
            ),
        )
    )
    return out


def build(root: Path | str, out: Path | str, cfg: ReportConfig) -> Report:
    """Write the report of a run directory (see the module docstring)."""
    start, root, out = time.monotonic(), Path(root), Path(out)
    if not (root / "datasets").is_dir():
        raise QuantsweepError(f"{root}: no datasets/ (not a run directory, or nothing committed yet)")
    data = load(root)
    if data.empty():
        raise QuantsweepError(f"{root}: datasets/ has no rows to report")
    out.mkdir(parents=True, exist_ok=True)
    figs, guide = Figures(out), guideline_rows(data, cfg)
    write_guideline(root, guide, cfg, data)
    cost = {s: servingsection.cost_rows(data, cfg, s) for s in data.sweeps}
    made = cards.write_cards(data, cfg, cost)
    intro = [
        H.para(
            f"Run directory {root.resolve()} · sweeps: {', '.join(data.sweeps)} · generated "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}."
        ),
        H.para(
            f"Judged by: recovery floor {cfg.recovery_floor:g}% · SLOs: "
            + "; ".join(describe(s) for s in slos(cfg))
            + f" · ties within {cfg.cost_margin_pct:g}% on cost."
        ),
    ]
    page = H.page(
        "quantsweep report: accuracy vs cost of quantized LLMs",
        intro,
        _sections(data, cfg, guide, figs, made),
    )
    write_text_atomically(out / "index.html", page)
    write_json_atomically(out / reportcfg.SAVED, reportcfg.as_data(cfg))
    return Report(out / "index.html", guide, cost, made, len(figs.saved), time.monotonic() - start, data)


def print_summary(console: Any, rep: Report, with_recovery: bool = True) -> None:
    """The key tables in the terminal: recovery (unless already printed), cost-reduction, guideline."""
    from cluster.report.tables import cost_table, guideline_table, recovery_table

    data = rep.data
    labels = {f: data.format_label(f) for f in {r["format"] for r in data.perf + data.recovery}}
    if with_recovery and data.recovery:
        console.print(recovery_table(data.recovery))
    cost = [c for rows in rep.cost.values() for c in rows]
    if cost:
        console.print(cost_table(cost, labels))
    top = [
        r
        for r in rep.guideline
        if r["use_case"] == "all"
        or not any(
            o["use_case"] == "all"
            and (o["sweep"], o["model"], o["hardware"]) == (r["sweep"], r["model"], r["hardware"])
            for o in rep.guideline
        )
    ]
    if top:
        console.print(guideline_table(top, labels))
    wrote = [w for _, w in rep.cards if not w.startswith("no card")]
    console.print(
        f"report: {rep.html} ({rep.figures} figures, {len(rep.guideline)} guideline rows, "
        f"{len(wrote)} model card(s)) in {rep.seconds:.1f} s"
    )

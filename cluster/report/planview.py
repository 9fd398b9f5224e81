"""What `python -m cluster plan` prints: every cell with its placement and cost, a summary per stage
and model, GPU-hours per GPU kind against the cluster, the cells a cluster cannot host and why,
and the totals (GPU-hours, dollars, host memory, longest chain, makespan lower bound).

Costs come from the plan's cost model (cluster/plan/cost.py): assumptions, not measurements.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from cluster.config.capacity import ClusterConfig
from cluster.plan.cells import Cell, Resources
from cluster.plan.cost import Estimate
from cluster.plan.dag import longest_chain, lower_bound


@dataclass
class PlanView:
    """A costed plan: cells, their estimates, and what the cluster (if any) rejects."""

    cells: list[Cell]
    est: dict[str, Estimate]
    rejected: dict[str, str]
    cluster: ClusterConfig | None = None
    _blocked: set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        for c in self.cells:  # upstream first, so one pass sees every chain
            if c.key not in self.rejected and any(d in self.rejected or d in self._blocked for d in c.deps):
                self._blocked.add(c.key)

    def blocked(self) -> set[str]:
        """Cells downstream of a rejected cell (they would never run either)."""
        return self._blocked

    def state(self, c: Cell) -> str:
        """planned | skipped | infeasible | blocked."""
        if c.key in self.rejected:
            return "infeasible"
        return "blocked" if c.key in self.blocked() else c.status

    def gpus_per_kind(self) -> dict[str, int]:
        """GPU kind (catalog name) -> GPUs the cluster has (cells' accelerator types mapped back)."""
        if self.cluster is None:
            return {}
        accel = {c.resources.accelerator: e.hardware for c in self.cells if (e := self.est[c.key]).hardware}
        out: dict[str, int] = defaultdict(int)
        for g in self.cluster.nodes:
            if g.gpus and g.accelerator_type in accel:
                out[accel[g.accelerator_type]] += g.gpus * g.count
        return dict(out)


STATES = ("planned", "skipped", "infeasible", "blocked")


def _counts(view: PlanView, cells: list[Cell]) -> str:
    n = {s: sum(1 for c in cells if view.state(c) == s) for s in STATES}
    return ", ".join(f"{k} {s}" for s, k in n.items() if k)


def describe(r: Resources) -> str:
    """Resources in a few words: `4 x 2 gpu [H100]`, `1 x 16 gpu (tp 8 x pp 2)`, memory."""
    if r.gpus:
        n = r.processes
        text = f"{n} x {r.gpus} gpu" + (f" (tp {r.gpus // r.pp} x pp {r.pp})" if r.pp > 1 else "")
        text += f" [{r.accelerator}]" if r.accelerator else ""
    else:
        text = f"{r.cpus:g} cpu" + (f", {r.engines} engine(s)" if r.engines else "")
    if r.memory_gb:
        text += f", {r.memory_gb:.0f} GB RAM"
    return text


def cell_lines(view: PlanView, title: str) -> list[str]:
    """One aligned line per cell: coordinates, key, placement, hours, GPU-hours, dollars, status.

    Plain text, not a rich table: a sweep has hundreds of cells and `plan` must answer at once.
    """
    cols = ("stage", "model", "format", "detail", "key", "resources", "h", "GPU·h", "$", "status")
    rows = [cols]
    for c in view.cells:
        e, state = view.est[c.key], view.state(c)
        if state == "infeasible":
            note = view.rejected[c.key]
        elif state == "blocked":
            note = "blocked: a cell it needs is infeasible"
        else:
            note = c.status + (
                f" (dequantized: {c.reason})"
                if c.route == "dequantized"
                else (f": {c.reason}" if c.reason else "")
            )
        rows.append(
            (
                c.stage,
                c.model,
                c.format,
                c.detail,
                c.key,
                describe(c.resources),
                f"{e.hours:.2f}",
                f"{e.gpu_hours:.1f}",
                f"{e.dollars:.0f}",
                note,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols) - 1)]
    right = {6, 7, 8}
    out = [title]
    for r in rows:
        cells = [
            x.rjust(w) if i in right else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths, strict=False))
        ]
        out.append("  ".join(cells + [r[-1]]))
    return out


def summary_table(view: PlanView) -> Table:
    """Per stage and model: cells by state, GPU kinds, hours, GPU-hours, dollars, peak host memory."""
    t = Table(
        title="Cost by stage and model, cells that can run (assumptions: conf/cost.yaml, conf/hardware.yaml)"
    )
    for col in ("stage", "model", "cells", "GPU kind", "cell-hours", "GPU·h", "$", "host RAM GB"):
        t.add_column(col, justify="left" if col in ("stage", "model", "cells", "GPU kind") else "right")
    groups: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    for c in view.cells:
        groups[(c.stage, c.model)].append(c)
    for (stage, model), cs in groups.items():
        es = [view.est[c.key] for c in cs if view.state(c) == "planned"] or [view.est[cs[0].key]]
        kinds = ", ".join(sorted({e.hardware for e in es if e.hardware})) or "cpu"
        t.add_row(
            stage,
            model,
            _counts(view, cs),
            kinds,
            f"{sum(e.hours for e in es):.1f}",
            f"{sum(e.gpu_hours for e in es):.1f}",
            f"{sum(e.dollars for e in es):,.0f}",
            f"{max(e.memory_gb for e in es):.0f}",
        )
    return t


def kinds_table(view: PlanView) -> Table:
    """GPU-hours and dollars per GPU kind; with a cluster, its GPUs and GPU-hours / GPUs."""
    t = Table(title="By GPU kind" + (f" on cluster '{view.cluster.name}'" if view.cluster else ""))
    for col in ("GPU kind", "GPU·h", "$", "GPUs", "GPU·h / GPUs (h)"):
        t.add_column(col, justify="left" if col == "GPU kind" else "right")
    gh: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for c in (c for c in view.cells if view.state(c) == "planned"):
        e = view.est[c.key]
        if e.hardware:
            gh[e.hardware][0] += e.gpu_hours
            gh[e.hardware][1] += e.dollars
    have = view.gpus_per_kind()
    for kind, (hours, dollars) in sorted(gh.items()):
        n = have.get(kind)
        t.add_row(
            kind, f"{hours:.1f}", f"{dollars:,.0f}", str(n) if n else "-", f"{hours / n:.1f}" if n else "-"
        )
    return t


def totals(view: PlanView) -> list[str]:
    """The plan's totals, one fact per line."""
    planned = [c for c in view.cells if view.state(c) == "planned"]
    es = [view.est[c.key] for c in planned]
    hours = {c.key: view.est[c.key].hours for c in planned}
    chain_h, chain = longest_chain(planned, hours)
    lines = [
        f"cells: {len(view.cells)} ({_counts(view, view.cells)})",
        f"GPU·h: {sum(e.gpu_hours for e in es):,.1f}; dollars: ${sum(e.dollars for e in es):,.0f}; "
        f"largest host memory per process: {max((e.memory_gb for e in es), default=0):.0f} GB",
        f"longest chain: {chain_h:.1f} h ("
        + " -> ".join(f"{c.stage} {c.model} {c.format}".strip() for c in chain[:6])
        + (" ..." if len(chain) > 6 else "")
        + ")",
    ]
    have = view.gpus_per_kind()
    if have:
        gh = {c.key: (view.est[c.key].hardware, view.est[c.key].gpu_hours) for c in planned}
        bound, _ = lower_bound(planned, hours, gh, have)
        lines.append(
            f"makespan lower bound on '{view.cluster.name}': {bound:.1f} h "  # type: ignore[union-attr]
            "(max of the longest chain and GPU·h / GPUs per kind)"
        )
    return lines


def print_plan(console: Console, view: PlanView, title: str, per_cell: bool = True) -> None:
    """The whole costed plan: cells (unless per_cell is False), summaries, rejections, totals."""
    if per_cell:
        console.out("\n".join(cell_lines(view, title)), highlight=False)
    console.print(summary_table(view))
    console.print(kinds_table(view))
    if view.rejected:
        reasons: dict[str, int] = defaultdict(int)
        by = {c.key: c for c in view.cells}
        for key, why in view.rejected.items():
            c = by[key]
            reasons[f"{c.stage} {c.model} {c.format}: {why}"] += 1
        console.print(f"rejected: {len(view.rejected)} cell(s) the cluster cannot host", style="bold red")
        for text, n in reasons.items():
            console.print(f"  {n} x {text}", markup=False)
    for line in totals(view):
        console.print(line, markup=False)

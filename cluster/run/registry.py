"""The stage registry: for each stage, the datasets its cells write, the function that runs a cell,
the function that writes a cell's "no number, and why" rows, and the session its cells share.

Run functions are named, not imported, so the driver never imports torch, vLLM or lm-eval: a Ray
worker imports the stage module when it runs the cell (`run_cell`). Sessions: `engines` cells of one
checkpoint share leased engine hosts (the checkpoint is loaded once for its health probe, every
suite and its generations); `serve` cells of one checkpoint and hardware share one Serve app.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from cluster.run.env import CellRun
from cluster.store.commit import CellResult


@dataclass(frozen=True)
class StageDef:
    """One stage: what its cells write and how they run."""

    name: str
    writes: tuple[str, ...]
    module: str  # defines run(CellRun) -> CellResult and placeholder(CellRun, status, reason) -> CellResult
    session: str | None = None  # engines | serve
    fresh_process: bool = False  # a new worker per cell (its peak RSS is its own)


STAGES: dict[str, StageDef] = {
    s.name: s
    for s in (
        StageDef("prepare", (), "cluster.stages.prepare"),
        StageDef("quantize", (), "cluster.stages.quantize"),
        StageDef("health", ("quantized", "proxies"), "cluster.stages.health", session="engines"),
        StageDef("evaluate", ("eval_scores", "eval_samples"), "cluster.stages.evaluate", session="engines"),
        StageDef("generate", ("generations",), "cluster.stages.generate", session="engines"),
        StageDef("recovery", ("recovery",), "cluster.stages.recovery"),
        StageDef("similarity", ("similarity",), "cluster.stages.similarity"),
        StageDef("loadtest", ("perf", "requests"), "cluster.stages.loadtest", session="serve"),
        StageDef("loadtest_bare", ("perf", "requests"), "cluster.stages.loadtest_bare"),
        StageDef("tune", ("trials", "proxies"), "cluster.stages.tune"),
    )
}


def run_cell(cr: CellRun) -> CellResult:
    """Run one cell with its stage's run function (in a Ray worker)."""
    module: Any = importlib.import_module(STAGES[cr.cell.stage].module)
    return module.run(cr)


def placeholder(cr: CellRun, status: str, reason: str) -> CellResult:
    """The rows a cell writes when it has no number (skipped, blocked or failed), saying why."""
    module: Any = importlib.import_module(STAGES[cr.cell.stage].module)
    return module.placeholder(cr, status, reason)

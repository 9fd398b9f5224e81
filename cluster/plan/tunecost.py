"""The cost model of a tuning search (cluster/plan/cost.py covers the other stages).

A search measures the baseline on the tuning suite at the last rung's budget (unless it reuses the
baseline's committed evaluation), then runs `num_samples` trials: each quantizes its recipe, loads
it and scores the rungs it reaches (ASHA stops all but 1 / reduction_factor at each rung; FIFO
runs every trial to the end), `trials` of them at once; the best recipe is then validated on the
held-out suite beside the baseline.
"""

from __future__ import annotations

from typing import Any

from cluster.plan.cells import Cell
from cluster.plan.rates import suite_tokens, trial_count

CostModel = Any  # cluster.plan.cost.CostModel (which imports this module)


def _calibration_samples(cm: CostModel) -> int:
    """The recipe's calibration samples, or the mean the search space draws from."""
    t = cm.sweep.tune
    values = t.space.get("calibration.num_samples")
    base = cm.catalog.formats[t.format].recipe.calibration.num_samples
    nums = [v for v in values or [] if isinstance(v, int)]
    return round(sum(nums) / len(nums)) if nums else base


def trial_work_s(cm: CostModel, cell: Cell) -> tuple[float, float]:
    """(seconds of all trials' work, seconds of the longest trial)."""
    from dataclasses import replace

    t = cm.sweep.tune
    suite = cm.catalog.suites[t.suite or ""]
    budgets = list(t.rungs) if t.rungs else [t.limit]
    fmt = cm.catalog.formats[t.format]
    calibrated = replace(
        fmt,
        recipe=replace(
            fmt.recipe, calibration=replace(fmt.recipe.calibration, num_samples=_calibration_samples(cm))
        ),
    )
    engine = cm.engine(cell)
    fixed = (
        cm.quantize_s(
            cm.catalog.models[cell.model], calibrated, cm.hardware(cell.resources), cell.resources.gpus
        )
        + engine.load_s
    )
    work, longest, done = t.num_samples * fixed, fixed, (0.0, 0.0)
    reach = trial_count(t.num_samples, len(budgets), t.reduction_factor, t.scheduler == "asha")
    for n, budget in zip(reach, budgets, strict=True):
        tokens = suite_tokens(suite, cm.cost, budget)
        rung = engine.pass_s(tokens[0] - done[0], tokens[1] - done[1])
        work, longest, done = work + n * rung, longest + rung, tokens
    return work, longest


def tune_seconds(cm: CostModel, cell: Cell) -> float:
    """Wall seconds of one search: baseline, trials `trials` at a time, validation."""
    t = cm.sweep.tune
    suite = cm.catalog.suites[t.suite or ""]
    last = t.rungs[-1] if t.rungs else t.limit
    base = cm.engine(cell, fmt=cm.sweep.baseline)
    reused = any(True for _ in cell.deps[1:])  # the baseline's committed evaluation is a dependency
    baseline_s = 0.0 if reused else base.load_s + base.pass_s(*suite_tokens(suite, cm.cost, last))
    work, longest = trial_work_s(cm, cell)
    trials_s = max(work / max(1, cell.resources.trials), longest)
    validation_s = 0.0
    if t.validation_suite:
        held_out = suite_tokens(cm.catalog.suites[t.validation_suite], cm.cost, t.limit)
        best = cm.engine(cell)
        validation_s = max(best.load_s + best.pass_s(*held_out), base.load_s + base.pass_s(*held_out))
    return cm.cost.cell_overhead_s + baseline_s + trials_s + validation_s

"""The recovery stage: one format vs the baseline on one suite, from the committed evaluations.

Recovery is a ratio of suite averages with a paired-bootstrap 95 % interval, plus flips (documents
the baseline got right and the format wrong, and the reverse). Where the baseline's own interval
does not clear what a random guesser scores on the same documents (`chance_score`: 1 / choices per
multiple-choice document, 0 for free-form answers), a ratio would measure noise: the row keeps the
scores and flips but no recovery, with status `baseline_at_chance`. Both sides must have been scored by
the same backend (`eval_scores.backend`); a checkpoint without scores still gets its row, with the
status and the reason.
"""

from __future__ import annotations

import math
from typing import Any

from cluster.eval.scoring import docs_from_rows, groups_from_rows, recovery_pct, suite_score
from cluster.run.env import CellRun
from cluster.stages.common import coords
from cluster.store.commit import CellResult


def _side(cr: CellRun, fmt: str) -> tuple[list[dict], list[dict]]:
    from cluster.store.datasets import rows

    env, c = cr.env, cr.cell
    where = {"sweep": env.sweep.name, "model": c.model, "format": fmt, "suite": c.suite}
    return rows(env.out, "eval_scores", **where), rows(env.out, "eval_samples", **where)


def run(cr: CellRun) -> CellResult:
    """Suite scores, recovery with its interval, and flips; no recovery where the baseline is at chance."""
    from cluster.eval.scoring import chance_from_rows, docs_score
    from cluster.eval.stats import bootstrap, flips

    env, c = cr.env, cr.cell
    suite = env.catalog.suites[c.suite]
    scores, samples = _side(cr, c.format)
    base_scores, base_samples = _side(cr, env.sweep.baseline)
    why = _not_measured(scores, "this format") or _not_measured(
        base_scores, f"the baseline ({env.sweep.baseline})"
    )
    if why:
        return placeholder(cr, "not_measured", why)
    backends = {r["backend"] for r in scores + base_scores}
    if len(backends) > 1:
        return placeholder(cr, "failed", f"scored by different backends {sorted(backends)}: not comparable")
    score = suite_score(suite, {r["task"]: r["value"] for r in scores})
    base = suite_score(suite, {r["task"]: r["value"] for r in base_scores})
    docs, base_docs = docs_from_rows(samples, suite), docs_from_rows(base_samples, suite)
    groups = groups_from_rows(samples + base_samples, suite)  # an lm-eval group's subtasks
    (lo, hi), (base_lo, base_hi) = bootstrap(docs, base_docs, suite, seed=env.sweep.seed, groups=groups)
    chance = docs_score(suite, chance_from_rows(base_samples, suite), only=base_docs, groups=groups)
    to_wrong, to_right = flips(docs, base_docs, suite, groups)
    row = {
        **_base(cr, scores),
        "score": score,
        "baseline_score": base,
        "recovery_pct": recovery_pct(score, base),
        "recovery_ci_low": lo,
        "recovery_ci_high": hi,
        "baseline_ci_low": base_lo,
        "baseline_ci_high": base_hi,
        "chance_score": None if math.isnan(chance) else chance,
        "flips_right_to_wrong": to_wrong,
        "flips_wrong_to_right": to_right,
        "status": "measured",
        "reason": "",
    }
    if at_chance(base_lo, chance):
        reason = (
            f"the baseline's {base:.2f} (95% CI {base_lo:.2f}-{base_hi:.2f}) is not clear of chance "
            f"({chance:.2f}): recovery not reported"
        )
        row.update(recovery_pct=None, recovery_ci_low=None, recovery_ci_high=None)
        row.update(status="baseline_at_chance", reason=reason)
        return CellResult(rows={"recovery": [row]}, context=cr.context(1), note=reason)
    pct = row["recovery_pct"]
    note = f"recovery {pct:.2f}% [{lo:.2f}, {hi:.2f}]" if not math.isnan(pct) else "recovery undefined"
    return CellResult(rows={"recovery": [row]}, context=cr.context(1), note=note)


def at_chance(baseline_ci_low: float | None, chance: float | None) -> bool:
    """True when the baseline's interval reaches down to chance (or below): nothing to recover."""
    if baseline_ci_low is None or chance is None or math.isnan(baseline_ci_low) or math.isnan(chance):
        return False
    return baseline_ci_low <= chance + 1e-9


def _not_measured(scores: list[dict], who: str) -> str:
    if not scores:
        return f"not measured: {who} has no scores"
    bad = [r for r in scores if r["status"] != "measured" or r["value"] is None]
    return f"{bad[0]['reason'] or 'not measured'} ({who})" if bad else ""


def _base(cr: CellRun, scores: list[dict]) -> dict[str, Any]:
    env, c = cr.env, cr.cell
    try:
        ev = cr.input_of("evaluate", c.format)
    except KeyError:
        ev = {}
    return {
        **coords(cr, "suite"),
        "baseline_format": env.sweep.baseline,
        "n_tasks": len(env.catalog.suites[c.suite].tasks),
        "health": ev.get("health") or "unknown",
        "backend": scores[0]["backend"] if scores else "-",
        "weights": scores[0]["weights"] if scores else (ev.get("weights") or "-"),
    }


def placeholder(cr: CellRun, status: str, reason: str) -> CellResult:
    """The format's recovery row with no number, saying why."""
    st = "not_measured" if status in ("skipped", "blocked", "not_measured") else "failed"
    row = {
        **_base(cr, []),
        "score": None,
        "baseline_score": None,
        "recovery_pct": None,
        "recovery_ci_low": None,
        "recovery_ci_high": None,
        "baseline_ci_low": None,
        "baseline_ci_high": None,
        "chance_score": None,
        "flips_right_to_wrong": None,
        "flips_wrong_to_right": None,
        "status": st,
        "reason": reason,
    }
    return CellResult(rows={"recovery": [row]}, context=cr.context(1), note=reason)

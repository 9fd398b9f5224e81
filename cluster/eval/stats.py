"""Statistics a reviewer asks for: bootstrap confidence intervals for recovery, and flips.

Recovery is a ratio of suite averages, so its interval comes from a paired bootstrap: each
replicate resamples the documents of every task (the same documents for the format and the
baseline) and recomputes both suite scores. Flips count per-document agreement with the
baseline: right->wrong and wrong->right.
"""

from __future__ import annotations

import math

import numpy as np

from cluster.config.schema import SuiteConfig
from cluster.eval.scoring import Docs, recovery_pct, suite_score

PerDoc = Docs  # per task: doc_id -> the task metric's per-document value (0/1 for acc and exact_match)


def _aligned(fmt: PerDoc, base: PerDoc, suite: SuiteConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per task, the two formats' values on the documents both have, in doc order."""
    out = {}
    for t in suite.tasks:
        docs = sorted(set(fmt.get(t.name, {})) & set(base.get(t.name, {})))
        out[t.name] = (np.array([fmt[t.name][d] for d in docs]), np.array([base[t.name][d] for d in docs]))
    return out


def bootstrap_recovery(
    fmt: PerDoc, base: PerDoc, suite: SuiteConfig, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """A paired-bootstrap confidence interval for recovery % (NaN, NaN when undefined)."""
    pairs = _aligned(fmt, base, suite)
    if any(len(a) == 0 for a, _ in pairs.values()):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(n_boot):
        f_vals, b_vals = {}, {}
        for task, (a, b) in pairs.items():
            idx = rng.integers(0, len(a), len(a))
            f_vals[task], b_vals[task] = float(a[idx].mean()), float(b[idx].mean())
        r = recovery_pct(suite_score(suite, f_vals), suite_score(suite, b_vals))
        if not math.isnan(r):
            ratios.append(r)
    if not ratios:
        return math.nan, math.nan
    lo, hi = np.percentile(ratios, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def flips(fmt: PerDoc, base: PerDoc, suite: SuiteConfig) -> tuple[int, int]:
    """(right->wrong, wrong->right) document counts against the baseline, over the suite."""
    to_wrong = to_right = 0
    for a, b in _aligned(fmt, base, suite).values():
        to_wrong += int(np.sum((b >= 0.5) & (a < 0.5)))
        to_right += int(np.sum((b < 0.5) & (a >= 0.5)))
    return to_wrong, to_right

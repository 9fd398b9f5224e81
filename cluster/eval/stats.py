"""Statistics a reviewer asks for: bootstrap confidence intervals for recovery, and flips.

Recovery is a ratio of suite averages, so its interval comes from a paired bootstrap: each
replicate resamples the documents of every leaf task (the same documents for the format and the
baseline; a group's subtasks are resampled each within itself) and recomputes both suite scores.
Flips count per-document agreement with the baseline: right->wrong and wrong->right, over every
document of every leaf task (all of a group's subtasks).
"""

from __future__ import annotations

import math

import numpy as np

from cluster.config.schema import SuiteConfig
from cluster.eval.scoring import Docs, Groups, recovery_pct, suite_score

PerDoc = Docs  # per leaf task: doc_id -> the task metric's per-document value (0/1 for acc and exact_match)
Pairs = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # suite task -> leaf -> (format, baseline)


def _aligned(fmt: PerDoc, base: PerDoc, suite: SuiteConfig, groups: Groups | None) -> Pairs:
    """Per suite task and leaf, the two formats' values on the documents both have, in doc order."""
    out: Pairs = {}
    for t in suite.tasks:
        out[t.name] = {}
        for leaf in (groups or {}).get(t.name, [t.name]):
            a, b = fmt.get(leaf, {}), base.get(leaf, {})
            docs = sorted(set(a) & set(b))
            out[t.name][leaf] = (np.array([a[d] for d in docs]), np.array([b[d] for d in docs]))
    return out


def _values(pairs: Pairs, rng: np.random.Generator) -> tuple[dict[str, float], dict[str, float]]:
    """One bootstrap replicate: per suite task and leaf, the mean of resampled documents, both sides."""
    f_vals: dict[str, float] = {}
    b_vals: dict[str, float] = {}
    for task, leaves in pairs.items():
        f_sum = b_sum = 0.0
        count = 0
        for leaf, (a, b) in leaves.items():
            if len(a) == 0:
                continue
            idx = rng.integers(0, len(a), len(a))
            fa, ba = float(a[idx].sum()), float(b[idx].sum())
            f_vals[leaf], b_vals[leaf] = fa / len(a), ba / len(a)
            f_sum, b_sum, count = f_sum + fa, b_sum + ba, count + len(a)
        f_vals[task], b_vals[task] = f_sum / count, b_sum / count
    return f_vals, b_vals


def bootstrap(
    fmt: PerDoc,
    base: PerDoc,
    suite: SuiteConfig,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: Groups | None = None,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Paired-bootstrap intervals for recovery % and for the baseline's suite score ((NaN, NaN) when
    undefined): the same replicates give both."""
    nan = (math.nan, math.nan)
    pairs = _aligned(fmt, base, suite, groups)
    if any(sum(len(a) for a, _ in leaves.values()) == 0 for leaves in pairs.values()):
        return nan, nan
    rng = np.random.default_rng(seed)
    ratios, bases = [], []
    for _ in range(n_boot):
        f_vals, b_vals = _values(pairs, rng)
        b = suite_score(suite, b_vals)
        r = recovery_pct(suite_score(suite, f_vals), b)
        bases.append(b)
        if not math.isnan(r):
            ratios.append(r)
    q = [50 * (1 - level), 50 * (1 + level)]

    def interval(xs: list[float]) -> tuple[float, float]:
        xs = [x for x in xs if not math.isnan(x)]
        if not xs:
            return nan
        lo, hi = np.percentile(xs, q)
        return float(lo), float(hi)

    return interval(ratios), interval(bases)


def bootstrap_recovery(
    fmt: PerDoc,
    base: PerDoc,
    suite: SuiteConfig,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: Groups | None = None,
) -> tuple[float, float]:
    """A paired-bootstrap confidence interval for recovery % (NaN, NaN when undefined)."""
    return bootstrap(fmt, base, suite, n_boot, seed, level, groups)[0]


def flips(fmt: PerDoc, base: PerDoc, suite: SuiteConfig, groups: Groups | None = None) -> tuple[int, int]:
    """(right->wrong, wrong->right) document counts against the baseline, over the suite."""
    to_wrong = to_right = 0
    for leaves in _aligned(fmt, base, suite, groups).values():
        for a, b in leaves.values():
            to_wrong += int(np.sum((b >= 0.5) & (a < 0.5)))
            to_right += int(np.sum((b < 0.5) & (a >= 0.5)))
    return to_wrong, to_right

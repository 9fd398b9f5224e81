"""Bootstrap intervals for recovery and per-document flips against the baseline."""

from __future__ import annotations

import pytest

from cluster.config.schema import SuiteConfig, TaskSpec
from cluster.eval.scoring import recovery_pct, suite_score
from cluster.eval.stats import bootstrap_recovery, flips

pytestmark = pytest.mark.unit
SUITE = SuiteConfig(name="s", tasks=[TaskSpec(name="a"), TaskSpec(name="b")])


def _docs(values: list[int]) -> dict[int, float]:
    return {i: float(v) for i, v in enumerate(values)}


def test_identical_formats_recover_exactly_100_with_a_point_interval():
    base = {"a": _docs([1, 0, 1, 1] * 10), "b": _docs([0, 1, 1, 0] * 10)}
    assert bootstrap_recovery(base, base, SUITE, n_boot=200) == (pytest.approx(100.0), pytest.approx(100.0))
    assert flips(base, base, SUITE) == (0, 0)


def test_interval_brackets_the_point_estimate_and_flips_are_counted():
    base = {"a": _docs([1] * 30 + [0] * 10), "b": _docs([1] * 20 + [0] * 20)}
    worse = {"a": _docs([1] * 25 + [0] * 15), "b": _docs([0] * 2 + [1] * 18 + [1] * 3 + [0] * 17)}
    point = recovery_pct(
        suite_score(SUITE, {"a": 25 / 40, "b": 21 / 40}), suite_score(SUITE, {"a": 30 / 40, "b": 20 / 40})
    )
    lo, hi = bootstrap_recovery(worse, base, SUITE, n_boot=500, seed=1)
    assert lo < point < hi and hi - lo < 40
    assert flips(worse, base, SUITE) == (5 + 2, 3)


def test_bootstrap_is_reproducible_for_a_seed():
    base = {"a": _docs([1, 0] * 20), "b": _docs([1, 1, 0] * 10)}
    other = {"a": _docs([0, 1] * 20), "b": _docs([1, 0, 0] * 10)}
    assert bootstrap_recovery(other, base, SUITE, seed=3) == bootstrap_recovery(other, base, SUITE, seed=3)


def test_missing_documents_give_nan():
    import math

    lo, hi = bootstrap_recovery({"a": {}, "b": {}}, {"a": _docs([1]), "b": _docs([1])}, SUITE)
    assert math.isnan(lo) and math.isnan(hi)

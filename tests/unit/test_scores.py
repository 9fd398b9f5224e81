"""Recovery arithmetic (a ratio of averages), metric lookup and request sharding."""

from __future__ import annotations

import pytest

from cluster.config.schema import SuiteConfig, TaskSpec
from cluster.eval.pool import balanced_shards
from cluster.eval.scoring import metric_value, recovery_pct, suite_score

pytestmark = pytest.mark.unit
V1 = ["mmlu", "mmlu_cot", "arc_c", "gsm8k_cot", "hellaswag", "winogrande", "truthfulqa"]
PAPER_8B = {
    "bf16": [68.3, 72.8, 81.4, 82.8, 80.5, 78.1, 54.5],
    "w8a8-fp": [68.0, 71.6, 81.2, 82.0, 80.0, 77.7, 54.3],
    "w8a8-int": [67.8, 72.2, 81.7, 84.8, 80.3, 78.5, 54.7],
    "w4a16-int": [66.9, 71.1, 80.2, 82.9, 79.9, 78.0, 52.8],
}


def _suite() -> SuiteConfig:
    return SuiteConfig(name="v1", tasks=[TaskSpec(name=t) for t in V1])


@pytest.mark.parametrize(
    "fmt, avg, rec", [("w8a8-fp", 73.55, 99.31), ("w8a8-int", 74.29, 100.31), ("w4a16-int", 73.11, 98.72)]
)
def test_recovery_reproduces_the_papers_8b_numbers(fmt, avg, rec):
    suite = _suite()
    scores = {
        f: suite_score(suite, {t: v / 100 for t, v in zip(V1, vals, strict=True)})
        for f, vals in PAPER_8B.items()
    }
    assert scores["bf16"] == pytest.approx(74.06, abs=0.005)
    assert scores[fmt] == pytest.approx(avg, abs=0.01)  # the paper averaged unrounded task scores
    assert recovery_pct(scores[fmt], scores["bf16"]) == pytest.approx(rec, abs=0.01)


def test_normalised_suite_subtracts_the_random_baseline():
    suite = SuiteConfig(name="v2", normalize=True, tasks=[TaskSpec(name="gpqa", random_baseline=0.25)])
    assert suite_score(suite, {"gpqa": 0.25}) == 0.0
    assert suite_score(suite, {"gpqa": 0.625}) == pytest.approx(50.0)
    assert suite_score(suite, {"gpqa": 0.1}) == 0.0


def test_missing_task_or_zero_baseline_is_nan():
    import math

    assert math.isnan(suite_score(_suite(), {"mmlu": 0.5}))
    assert math.isnan(recovery_pct(10.0, 0.0))


def test_metric_lookup_takes_lm_evals_keys():
    res = {"alias": "x", "acc,none": 0.5, "acc_stderr,none": 0.1, "exact_match,strip": 0.25}
    assert metric_value(res, "acc") == ("acc,none", 0.5, 0.1)
    assert metric_value(res, "exact_match,strip")[1] == 0.25
    with pytest.raises(KeyError, match="acc_norm"):
        metric_value(res, "acc_norm")


def test_shards_cover_every_request_once_and_balance_length():
    args = [("x" * n, "y") for n in (50, 1, 40, 2, 30, 3, 20, 4)]
    shards = balanced_shards(args, 3)
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(len(args)))
    loads = [sum(len(args[i][0]) + 1 for i in s) for s in shards]
    assert max(loads) - min(loads) <= 50
    assert balanced_shards(args[:1], 3)[0] == [0]

"""Chance levels: what a random guesser scores per document, the baseline's interval, and recovery
withheld where the baseline does not clear chance ("baseline at chance")."""

from __future__ import annotations

import math
import random

import pytest

from cluster.config.schema import SuiteConfig, TaskSpec
from cluster.eval.scoring import chance_from_rows, docs_from_rows, docs_score, sample_chance
from cluster.eval.stats import bootstrap
from cluster.stages.recovery import at_chance

pytestmark = pytest.mark.unit
MC = TaskSpec(name="mc", metric="acc")
GEN = TaskSpec(name="gen", metric="exact_match")


def test_chance_per_document_follows_the_number_of_choices_and_the_task_kind():
    four = {"filtered_resps": [[-1.0, False]] * 4}
    assert sample_chance(MC, "multiple_choice", four) == 0.25
    assert sample_chance(MC, "multiple_choice", {"filtered_resps": [[-1.0, True]] * 2}) == 0.5
    assert sample_chance(GEN, "generate_until", {"filtered_resps": ["42"]}) == 0.0
    assert sample_chance(TaskSpec(name="he", kind="humaneval"), None, {"filtered_resps": ["x"]}) == 0.0
    assert sample_chance(TaskSpec(name="ar", kind="arena"), None, {"filtered_resps": ["x"]}) is None
    letters = TaskSpec(name="mmlu_gen", metric="exact_match", chance=0.25)  # a letter picked by generation
    assert sample_chance(letters, "generate_until", {"filtered_resps": ["B"]}) == 0.25


def _rows(task: str, p_right: float, n: int, chance: float | None, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "task": task,
            "subtask": None,
            "doc_id": d,
            "chance": chance,
            "metrics": [("acc", float(rng.random() < p_right))],
        }
        for d in range(n)
    ]


SUITE = SuiteConfig(name="s", tasks=[TaskSpec(name="mc", metric="acc")])


def _decide(p_base: float, n: int) -> tuple[bool, float, tuple[float, float], float]:
    base_rows = _rows("mc", p_base, n, 0.25, seed=1)
    fmt_rows = _rows("mc", p_base, n, 0.25, seed=2)
    base, fmt = docs_from_rows(base_rows, SUITE), docs_from_rows(fmt_rows, SUITE)
    chance = docs_score(SUITE, chance_from_rows(base_rows, SUITE), only=base)
    _, (lo, hi) = bootstrap(fmt, base, SUITE, n_boot=400, seed=0)
    return at_chance(lo, chance), chance, (lo, hi), docs_score(SUITE, base)


def test_a_baseline_near_chance_is_marked_and_a_clear_one_is_not():
    marked, chance, (lo, hi), score = _decide(0.27, 200)  # a 4-choice task answered at random
    assert chance == pytest.approx(25.0) and marked and lo <= chance <= hi
    assert lo <= score <= hi
    marked, chance, (lo, hi), score = _decide(0.6, 200)
    assert not marked and lo > chance and lo <= score <= hi


def test_the_baseline_interval_comes_from_the_same_paired_replicates_as_recovery():
    rows = _rows("mc", 0.6, 100, 0.25, seed=3)
    base = docs_from_rows(rows, SUITE)
    (r_lo, r_hi), (b_lo, b_hi) = bootstrap(base, base, SUITE, n_boot=300, seed=0)
    assert (r_lo, r_hi) == (pytest.approx(100.0), pytest.approx(100.0))  # identical sides
    assert b_lo < docs_score(SUITE, base) < b_hi and b_hi - b_lo < 25


def test_unknown_chance_never_withholds_recovery():
    assert not at_chance(10.0, math.nan) and not at_chance(None, 25.0)
    rows = _rows("mc", 0.3, 20, None, seed=4)  # e.g. judged tasks: no chance level
    assert math.isnan(docs_score(SUITE, chance_from_rows(rows, SUITE)))


def _rec(suite: str, status: str, pct: float | None) -> dict:
    return {
        "sweep": "s",
        "model": "m",
        "format": "w8a8-int",
        "suite": suite,
        "status": status,
        "recovery_pct": pct,
        "recovery_ci_low": pct,
        "reason": "",
    }


def test_the_guideline_leaves_out_suites_whose_baseline_is_at_chance(tmp_path):
    from cluster.config.schema import ReportConfig
    from cluster.report.data import RunData
    from cluster.report.guideline import accuracy

    def judge(rows: list[dict]):
        data = RunData(tmp_path, [], rows, [], [], [], [], {})
        return accuracy(data, "s", "m", "w8a8-int", ReportConfig(recovery_floor=99.0), "bf16")

    ok = judge([_rec("easy", "measured", 99.5), _rec("hard", "baseline_at_chance", None)])
    assert ok.ok is True and ok.recovery == 99.5  # the suite at chance neither passes nor blocks it
    low = judge([_rec("easy", "measured", 97.0), _rec("hard", "baseline_at_chance", None)])
    assert low.ok is False and "97.0% < 99%" in low.why
    none = judge([_rec("hard", "baseline_at_chance", None)])
    assert none.ok is None and "at chance on every suite" in none.why

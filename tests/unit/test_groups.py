"""lm-eval groups (MMLU's subjects, V2's BBH) as suite tasks: per-leaf documents, intervals, flips,
per-subtask normalisation and tuning budgets, on synthetic per-sample rows."""

from __future__ import annotations

import math
import random

import pytest

from cluster.config.schema import SuiteConfig, TaskSpec
from cluster.eval.docsets import first_docs, groups_of_sizes
from cluster.eval.scoring import (
    docs_from_rows,
    docs_score,
    groups_from_rows,
    groups_of,
    leaves_of,
    recovery_pct,
    suite_score,
)
from cluster.eval.stats import bootstrap_recovery, flips

pytestmark = pytest.mark.unit
SUITE = SuiteConfig(
    name="s", tasks=[TaskSpec(name="grp", metric="acc"), TaskSpec(name="plain", metric="acc")]
)
SIZES = {"grp_a": 30, "grp_b": 50, "grp_c": 20}  # subtasks' doc ids overlap (each starts at 0)


def _rows(seed: int) -> list[dict]:
    """`eval_samples` rows as the evaluate stage writes them: a group's rows name their subtask."""
    rng = random.Random(seed)
    rows = [
        {"task": "grp", "subtask": leaf, "doc_id": d, "metrics": [("acc", float(rng.random() < 0.6))]}
        for leaf, n in SIZES.items()
        for d in range(n)
    ]
    rows += [
        {"task": "plain", "subtask": None, "doc_id": d, "metrics": [("acc", float(rng.random() < 0.7))]}
        for d in range(40)
    ]
    return rows


def _expected_flips(fmt: list[dict], base: list[dict]) -> tuple[int, int]:
    """Flips counted straight from the rows, keyed by (task, subtask, doc_id)."""
    key = lambda r: (r["task"], r["subtask"], r["doc_id"])  # noqa: E731
    right = {key(r): dict(r["metrics"])["acc"] >= 0.5 for r in base}
    pairs = [(right[key(r)], dict(r["metrics"])["acc"] >= 0.5) for r in fmt]
    return sum(b and not a for b, a in pairs), sum(a and not b for b, a in pairs)


def test_group_rows_give_every_subtasks_documents_finite_intervals_and_exact_flips():
    base_rows, fmt_rows = _rows(1), _rows(2)
    groups = groups_from_rows(fmt_rows + base_rows, SUITE)
    assert groups == {"grp": ["grp_a", "grp_b", "grp_c"], "plain": ["plain"]}
    docs, base = docs_from_rows(fmt_rows, SUITE), docs_from_rows(base_rows, SUITE)
    assert {leaf: len(docs[leaf]) for leaf in SIZES} == SIZES

    expected = _expected_flips(fmt_rows, base_rows)
    assert flips(docs, base, SUITE, groups) == expected
    assert sum(expected) > 50  # the subtasks' documents all count (not only one subtask's ids 0..49)

    point = recovery_pct(docs_score(SUITE, docs, groups=groups), docs_score(SUITE, base, groups=groups))
    lo, hi = bootstrap_recovery(docs, base, SUITE, n_boot=300, seed=0, groups=groups)
    assert math.isfinite(lo) and math.isfinite(hi)
    assert lo < point < hi


def test_a_groups_score_is_the_size_weighted_mean_of_its_subtasks():
    rows = _rows(3)
    docs, groups = docs_from_rows(rows, SUITE), groups_from_rows(rows, SUITE)
    grp = [dict(r["metrics"])["acc"] for r in rows if r["task"] == "grp"]
    plain = [dict(r["metrics"])["acc"] for r in rows if r["task"] == "plain"]
    expected = (100 * sum(grp) / len(grp) + 100 * sum(plain) / len(plain)) / 2
    assert docs_score(SUITE, docs, groups=groups) == pytest.approx(expected)


def test_v2_normalises_each_subtask_with_its_own_random_baseline():
    bbh = TaskSpec(name="bbh", metric="acc_norm", subtask_baselines={"bbh_two": 0.5, "bbh_five": 0.2})
    suite = SuiteConfig(name="v2", normalize=True, tasks=[bbh, TaskSpec(name="ifeval", metric="acc")])
    values = {"bbh": 0.55, "bbh_two": 0.75, "bbh_five": 0.4, "ifeval": 0.3}
    bbh_score = ((0.75 - 0.5) / 0.5 * 100 + (0.4 - 0.2) / 0.8 * 100) / 2  # 37.5, not the pooled 0.55's
    assert suite_score(suite, values) == pytest.approx((bbh_score + 30.0) / 2)
    assert math.isnan(suite_score(suite, {"bbh": 0.55, "ifeval": 0.3}))  # subtask scores missing

    docs = {"bbh_two": {0: 1.0, 1: 1.0, 2: 1.0, 3: 0.0}, "bbh_five": {0: 1.0, 1: 0.0}, "ifeval": {0: 1.0}}
    groups = {"bbh": ["bbh_two", "bbh_five"], "ifeval": ["ifeval"]}
    from_docs = ((0.75 - 0.5) / 0.5 * 100 + (0.5 - 0.2) / 0.8 * 100) / 2
    assert docs_score(suite, docs, groups=groups) == pytest.approx((from_docs + 100.0) / 2)


def test_nested_groups_expand_to_their_leaves():
    out = {"group_subtasks": {"mmlu": ["stem", "other"], "stem": ["algebra", "physics"], "other": ["law"]}}
    assert leaves_of("mmlu", out["group_subtasks"]) == ["algebra", "physics", "law"]
    assert groups_of(out, SUITE) == {"grp": ["grp"], "plain": ["plain"]}


def test_tuning_budgets_share_a_groups_documents_among_its_subtasks():
    sizes = {"grp": dict(SIZES), "plain": {"plain": 40}}
    assert groups_of_sizes(sizes) == {"grp": list(SIZES), "plain": ["plain"]}
    first = first_docs(sizes, 0, 10)
    assert {k: len(v) for k, v in first.items()} == {"grp_a": 3, "grp_b": 5, "grp_c": 2, "plain": 10}
    second = first_docs(sizes, 10, 20)
    assert second["grp_b"] == list(range(5, 10)) and second["plain"] == list(range(10, 20))
    every = first_docs(sizes, 0, None)
    assert {k: len(v) for k, v in every.items()} == {**SIZES, "plain": 40}

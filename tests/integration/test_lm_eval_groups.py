"""A local lm-eval group through the real task loading and evaluator: tuning's task sizes, the
samples under the subtasks' names, and per-document values, flips and a finite interval from them.

The LM is a deterministic stand-in that honours lm-eval's `LM` protocol (no engine is needed to
show how groups are read); the group is two local multiple-choice subtasks, as MMLU is 57.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from cluster.config.schema import SuiteConfig, TaskSpec
from cluster.eval.docsets import first_docs, groups_of_sizes
from cluster.eval.scoring import docs_from_rows, docs_of, groups_from_rows, groups_of
from cluster.eval.stats import bootstrap_recovery, flips
from cluster.store.schemas import CATALOG

pytestmark = pytest.mark.integration
SIZES = {"qs_grp_a": 6, "qs_grp_b": 4}


def _write_group(root: Path) -> None:
    for name, n in SIZES.items():
        data = root / f"{name}.jsonl"
        rows = [{"question": f"{name} {i}", "choices": ["yes", "no"], "label": i % 2} for i in range(n)]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        task = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "{{question}}",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{label}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1},
        }
        (root / f"{name}.yaml").write_text(yaml.safe_dump(task))
    group = {
        "group": "qs_grp",
        "task": list(SIZES),
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
        "metadata": {"version": 1},
    }
    (root / "_qs_grp.yaml").write_text(yaml.safe_dump(group))


def _lm(prefer_yes: bool):
    """An LM that always prefers one answer: right on every other document."""
    from lm_eval.api.model import LM

    class Fixed(LM):
        def loglikelihood(self, requests):
            return [(-1.0 if (r.args[1].strip() == "yes") == prefer_yes else -2.0, False) for r in requests]

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

        def generate_until(self, requests):
            raise NotImplementedError

    return Fixed()


def test_a_local_group_gives_sizes_samples_flips_and_a_finite_interval(tmp_path):
    from cluster.eval.harness import evaluate_suite, task_sizes

    _write_group(tmp_path)
    include = str(tmp_path)
    sizes = task_sizes(["qs_grp"], include)
    assert sizes == {"qs_grp": SIZES}
    picks = first_docs(sizes, 0, None)

    suite = SuiteConfig(name="g", tasks=[TaskSpec(name="qs_grp", metric="acc")])
    outs = [evaluate_suite(_lm(p), [("qs_grp", 0)], include, None, False, False, 0) for p in (True, False)]
    assert groups_of(outs[0], suite) == {"qs_grp": list(SIZES)}
    assert outs[0]["results"]["qs_grp"]["acc,none"] == pytest.approx(0.5)
    fmt, base = (docs_of(o, suite) for o in outs)
    assert {leaf: sorted(fmt[leaf]) for leaf in SIZES} == picks

    groups = groups_of_sizes(sizes)
    assert flips(fmt, base, suite, groups) == (5, 5)  # every document flips; label alternates 0/1
    lo, hi = bootstrap_recovery(fmt, fmt, suite, n_boot=50, groups=groups)
    assert math.isfinite(lo) and lo == pytest.approx(100.0) and hi == pytest.approx(100.0)

    # the evaluate stage's eval_samples rows carry the same documents, each naming its subtask
    rows = [_sample_rows(o, suite) for o in outs]
    assert {(r["task"], r["subtask"]) for r in rows[0]} == {("qs_grp", leaf) for leaf in SIZES}
    assert set(rows[0][0]) <= {f.name for f in CATALOG["eval_samples"]}
    assert docs_from_rows(rows[0], suite) == {"qs_grp": {}, **fmt}
    assert groups_from_rows(rows[0] + rows[1], suite) == groups
    assert flips(docs_from_rows(rows[0], suite), docs_from_rows(rows[1], suite), suite, groups) == (5, 5)


def _sample_rows(out: dict, suite: SuiteConfig) -> list[dict]:
    from types import SimpleNamespace

    from cluster.stages.evaluate import _sample_rows as rows

    cell = SimpleNamespace(model="m", format="f", suite=suite.name)
    return rows(SimpleNamespace(cell=cell, env=SimpleNamespace(sweep=SimpleNamespace(name="s"))), suite, out)  # type: ignore[arg-type]

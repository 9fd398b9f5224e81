"""Scores from lm-eval's output: a task's metric, a suite's score, recovery, per-document values.

A suite's score is the mean of its task scores (Leaderboard V2 normalises each first: random
baseline subtracted, rescaled to 0-100); recovery is 100 x format score / baseline score, a ratio
of averages, never an average of per-task ratios.
"""

from __future__ import annotations

import math
from typing import Any

from cluster.config.schema import SuiteConfig, TaskSpec

Docs = dict[str, dict[int, float]]  # task -> doc_id -> the task metric's per-document value


def metric_value(task_result: dict[str, Any], metric: str) -> tuple[str, float, float | None]:
    """Find `metric` (e.g. 'acc' or 'exact_match,strict-match') in lm-eval's per-task results."""
    for key, value in task_result.items():
        name = key.split(",")[0]
        if (key == metric or name == metric) and "_stderr" not in key:
            err = task_result.get(key.replace(name, f"{name}_stderr", 1))
            stderr = float(err) if isinstance(err, (int, float)) else None
            return key, float(value), stderr
    raise KeyError(f"metric '{metric}' not in lm-eval results ({', '.join(task_result)})")


def task_score(spec: TaskSpec, value: float, normalize: bool) -> float:
    """A task's contribution to its suite, on 0-100 (V2: random baseline subtracted, rescaled)."""
    if normalize:
        b = spec.random_baseline
        return max(0.0, (value - b) / (1.0 - b)) * 100.0
    return value * 100.0


def suite_score(suite: SuiteConfig, values: dict[str, float]) -> float:
    """Mean of the suite's task scores (NaN when a task is missing)."""
    scores = [task_score(t, values[t.name], suite.normalize) for t in suite.tasks if t.name in values]
    return sum(scores) / len(scores) if len(scores) == len(suite.tasks) else math.nan


def recovery_pct(score: float, baseline: float) -> float:
    """100 x score / baseline (NaN when the baseline is zero or missing)."""
    if not baseline or math.isnan(baseline) or math.isnan(score):
        return math.nan
    return 100.0 * score / baseline


def sample_value(task: TaskSpec, sample: dict[str, Any]) -> float | None:
    """The task metric of one logged lm-eval sample (None when the sample is another filter's)."""
    name, _, filt = task.metric.partition(",")
    if name not in sample or (filt and sample.get("filter") != filt):
        return None
    return float(sample[name])


def docs_of(out: dict[str, Any], suite: SuiteConfig) -> Docs:
    """Per-document metric values from an lm-eval output with logged samples."""
    docs: Docs = {t.name: {} for t in suite.tasks}
    for t in suite.tasks:
        for sample in out["samples"].get(t.name, []):
            value = sample_value(t, sample)
            if value is not None:
                docs[t.name][int(sample["doc_id"])] = value
    return docs


def docs_from_rows(rows: list[dict[str, Any]], suite: SuiteConfig) -> Docs:
    """Per-document metric values from `eval_samples` rows."""
    metric = {t.name: t.metric.split(",")[0] for t in suite.tasks}
    out: Docs = {t.name: {} for t in suite.tasks}
    for r in rows:
        if r["task"] in metric:
            values = dict(r["metrics"])
            if metric[r["task"]] in values:
                out[r["task"]][int(r["doc_id"])] = values[metric[r["task"]]]
    return out


def docs_score(suite: SuiteConfig, docs: Docs, only: Docs | None = None) -> float:
    """The suite score from per-document values (on `only`'s documents when given)."""
    means = {}
    for task, values in docs.items():
        keep = [v for d, v in values.items() if only is None or d in only[task]]
        if keep:
            means[task] = sum(keep) / len(keep)
    return suite_score(suite, means)

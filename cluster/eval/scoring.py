"""Scores from lm-eval's output: a task's metric, a suite's score, recovery, per-document values.

A suite's score is the mean of its task scores (Leaderboard V2 normalises each first: random
baseline subtracted, rescaled to 0-100); recovery is 100 x format score / baseline score, a ratio
of averages, never an average of per-task ratios.

A suite task may be an lm-eval *group* (MMLU's 57 subjects): its documents come back under the
subtasks' names, so per-document values are kept per *leaf* task and `Groups` says which leaves
make up each suite task. A group's score is the mean over all its documents (lm-eval's
sample-size weighted mean); with `subtask_baselines` (V2's BBH, MuSR) it is instead the mean of
its subtasks' scores, each normalised with its own random baseline, as the Open LLM Leaderboard does.
"""

from __future__ import annotations

import math
from typing import Any

from cluster.config.schema import SuiteConfig, TaskSpec

Docs = dict[str, dict[int, float]]  # leaf task -> doc_id -> the task metric's per-document value
Groups = dict[str, list[str]]  # suite task -> its leaf tasks (just itself unless an lm-eval group)


def metric_value(task_result: dict[str, Any], metric: str) -> tuple[str, float, float | None]:
    """Find `metric` (e.g. 'acc' or 'exact_match,strict-match') in lm-eval's per-task results."""
    for key, value in task_result.items():
        name = key.split(",")[0]
        if (key == metric or name == metric) and "_stderr" not in key:
            err = task_result.get(key.replace(name, f"{name}_stderr", 1))
            stderr = float(err) if isinstance(err, (int, float)) else None
            return key, float(value), stderr
    raise KeyError(f"metric '{metric}' not in lm-eval results ({', '.join(task_result)})")


def task_score(spec: TaskSpec, value: float, normalize: bool, baseline: float | None = None) -> float:
    """A task's contribution to its suite, on 0-100 (V2: random baseline subtracted, rescaled)."""
    if normalize:
        b = spec.random_baseline if baseline is None else baseline
        return max(0.0, (value - b) / (1.0 - b)) * 100.0
    return value * 100.0


def spec_score(spec: TaskSpec, values: dict[str, float], normalize: bool) -> float | None:
    """One suite task's score from task values (and its subtasks' under `subtask_baselines`)."""
    if normalize and spec.subtask_baselines:
        subs = spec.subtask_baselines
        if any(s not in values for s in subs):
            return None
        return sum(task_score(spec, values[s], True, b) for s, b in subs.items()) / len(subs)
    return task_score(spec, values[spec.name], normalize) if spec.name in values else None


def suite_score(suite: SuiteConfig, values: dict[str, float]) -> float:
    """Mean of the suite's task scores (NaN when a task is missing)."""
    scores = [spec_score(t, values, suite.normalize) for t in suite.tasks]
    kept = [s for s in scores if s is not None]
    return sum(kept) / len(kept) if kept and len(kept) == len(suite.tasks) else math.nan


def recovery_pct(score: float, baseline: float) -> float:
    """100 x score / baseline (NaN when the baseline is zero or missing)."""
    if not baseline or math.isnan(baseline) or math.isnan(score):
        return math.nan
    return 100.0 * score / baseline


def leaves_of(name: str, group_subtasks: dict[str, list[str]]) -> list[str]:
    """The leaf tasks under `name` in lm-eval's `group_subtasks` (nested groups expanded)."""
    children = group_subtasks.get(name) or []
    if not children:
        return [name]
    return [leaf for child in children for leaf in leaves_of(child, group_subtasks)]


def groups_of(out: dict[str, Any], suite: SuiteConfig) -> Groups:
    """Each suite task's leaf tasks, from an lm-eval output's `group_subtasks`."""
    return {t.name: leaves_of(t.name, out.get("group_subtasks") or {}) for t in suite.tasks}


def sample_value(task: TaskSpec, sample: dict[str, Any]) -> float | None:
    """The task metric of one logged lm-eval sample (None when the sample is another filter's)."""
    name, _, filt = task.metric.partition(",")
    if name not in sample or (filt and sample.get("filter") != filt):
        return None
    return float(sample[name])


def sample_chance(spec: TaskSpec, output_type: str | None, sample: dict[str, Any]) -> float | None:
    """What a uniform random guesser scores on one document (None when unknown, e.g. judged tasks).

    The task's `chance` when set; a multiple-choice document: 1 / its number of choices (lm-eval
    logs one filtered response per choice); free-form generation and code: 0.
    """
    if spec.chance is not None:
        return spec.chance
    if output_type == "multiple_choice":
        n = len(sample.get("filtered_resps") or [])
        return 1.0 / n if n else None
    return None if spec.kind == "arena" else 0.0


def docs_of(out: dict[str, Any], suite: SuiteConfig, groups: Groups | None = None) -> Docs:
    """Per-document metric values per leaf task from an lm-eval output with logged samples."""
    groups = groups or groups_of(out, suite)
    docs: Docs = {}
    for t in suite.tasks:
        for leaf in groups.get(t.name, [t.name]):
            docs[leaf] = {}
            for sample in out["samples"].get(leaf, []):
                value = sample_value(t, sample)
                if value is not None:
                    docs[leaf][int(sample["doc_id"])] = value
    return docs


def docs_from_rows(rows: list[dict[str, Any]], suite: SuiteConfig) -> Docs:
    """Per-document metric values per leaf task from `eval_samples` rows."""
    metric = {t.name: t.metric.split(",")[0] for t in suite.tasks}
    out: Docs = {t.name: {} for t in suite.tasks}
    for r in rows:
        if r["task"] in metric:
            values = dict(r["metrics"])
            if metric[r["task"]] in values:
                leaf = r.get("subtask") or r["task"]
                out.setdefault(leaf, {})[int(r["doc_id"])] = values[metric[r["task"]]]
    return out


def chance_from_rows(rows: list[dict[str, Any]], suite: SuiteConfig) -> Docs:
    """Per-document chance scores per leaf task from `eval_samples` rows (documents without one left out)."""
    names = {t.name for t in suite.tasks}
    out: Docs = {t.name: {} for t in suite.tasks}
    for r in rows:
        if r["task"] in names and r.get("chance") is not None:
            out.setdefault(r.get("subtask") or r["task"], {})[int(r["doc_id"])] = float(r["chance"])
    return out


def groups_from_rows(rows: list[dict[str, Any]], suite: SuiteConfig) -> Groups:
    """Each suite task's leaf tasks, as recorded in `eval_samples` rows (`subtask`)."""
    found: dict[str, set[str]] = {}
    for r in rows:
        if r.get("subtask"):
            found.setdefault(r["task"], set()).add(r["subtask"])
    return {t.name: sorted(found.get(t.name, {t.name})) for t in suite.tasks}


def task_values(
    suite: SuiteConfig, docs: Docs, groups: Groups | None = None, only: Docs | None = None
) -> dict[str, float]:
    """Mean metric per suite task (over all its leaves' documents) and per leaf task.

    Only documents in `only` count when it is given; a task with no documents has no value.
    """
    values: dict[str, float] = {}
    for t in suite.tasks:
        total, count = 0.0, 0
        for leaf in (groups or {}).get(t.name, [t.name]):
            keep = [v for d, v in docs.get(leaf, {}).items() if only is None or d in only.get(leaf, {})]
            if keep:
                values[leaf] = sum(keep) / len(keep)
                total, count = total + sum(keep), count + len(keep)
        if count:
            values[t.name] = total / count
    return values


def docs_score(
    suite: SuiteConfig, docs: Docs, only: Docs | None = None, groups: Groups | None = None
) -> float:
    """The suite score from per-document values (on `only`'s documents when given)."""
    return suite_score(suite, task_values(suite, docs, groups, only))

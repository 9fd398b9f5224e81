"""Choosing documents and scoring them per leaf task: the per-document side of tuning.

A tuning rung scores only documents it has not scored yet; `task_sizes` (cluster.eval.harness)
gives each suite task's leaf tasks (an lm-eval group's subtasks) and their sizes, `first_docs`
picks each leaf's share of a budget, and `evaluate_docs` scores exactly those documents through
any lm-eval `LM`.
"""

from __future__ import annotations

import math

from cluster.config.schema import EvalStage, SuiteConfig
from cluster.eval.scoring import Docs, Groups, docs_of


def first_docs(sizes: dict[str, dict[str, int]], start: int, stop: int | None) -> dict[str, list[int]]:
    """Document indices [start, stop) of every task, clipped to its size, per leaf task.

    A group's budget is shared among its subtasks in proportion to their sizes (rounded up), so a
    rung scores about `stop` documents of MMLU, not `stop` of each of its 57 subjects, and the
    pooled documents stay a fair sample of lm-eval's size-weighted group score.
    """
    picks = {}
    for leaves in sizes.values():
        total = sum(leaves.values()) or 1
        for leaf, n in leaves.items():
            lo = min(n, math.ceil(start * n / total))
            hi = n if stop is None else min(n, math.ceil(stop * n / total))
            picks[leaf] = list(range(lo, hi))
    return picks


def groups_of_sizes(sizes: dict[str, dict[str, int]]) -> Groups:
    """Each suite task's leaf tasks, from `task_sizes`."""
    return {task: list(leaves) for task, leaves in sizes.items()}


def evaluate_docs(
    ev: EvalStage,
    lm,
    suite: SuiteConfig,
    include: str | None,
    picks: dict[str, list[int]] | None,
    groups: Groups | None = None,
) -> Docs:
    """Per-document values per leaf task on the chosen documents (None: all of every task).

    A group's subtasks are evaluated by their own names, so each gets only its chosen documents.
    """
    from cluster.eval.harness import evaluate_suite

    groups = groups or {t.name: [t.name] for t in suite.tasks}
    tasks = [
        (leaf, t.num_fewshot)
        for t in suite.tasks
        for leaf in groups[t.name]
        if picks is None or picks.get(leaf)
    ]
    if not tasks:
        return {leaf: {} for leaves in groups.values() for leaf in leaves}
    out = evaluate_suite(
        lm, tasks, include, None, ev.apply_chat_template, ev.fewshot_as_multiturn, ev.seed, samples=picks
    )
    return docs_of(out, suite, groups)

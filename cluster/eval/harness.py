"""Running lm-eval: one TaskManager per process, suites evaluated through any `LM`, a plain
unsharded yardstick, and task sizes.

`evaluate_suite` calls `lm_eval.simple_evaluate` once per distinct shot count and limit with an `LM` object
(the sharded engine hosts in a run); `reference_evaluate` is the unsharded `model="vllm"` run that
tests and benchmarks compare against.
"""

from __future__ import annotations

import json
from typing import Any

_MANAGERS: dict[tuple[str | None, str], Any] = {}


def task_manager(include_path: str | None, metadata: dict[str, Any] | None = None):
    """lm-eval's TaskManager, with the local task directory when the suite has one.

    Indexing lm-eval's thousands of task files takes seconds, so each process keeps one manager per
    (include path, metadata): a tuning trial scores several rungs with the same tasks.
    """
    from lm_eval.tasks import TaskManager

    key = (include_path, json.dumps(metadata or {}, sort_keys=True, default=str))
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(include_path=include_path, metadata=metadata or None)
    return _MANAGERS[key]


def evaluate_suite(
    lm: Any,
    tasks: list[tuple[str, int | None]],
    include_path: str | None,
    limit: int | None,
    apply_chat_template: bool,
    fewshot_as_multiturn: bool,
    seed: int,
    metadata: dict[str, Any] | None = None,
    samples: dict[str, list[int]] | None = None,
    limits: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Run lm-eval on (task, num_fewshot) pairs; one evaluator call per shot count and limit.

    `limits` (task -> documents, per subtask for a group) overrides `limit` for the tasks it names.

    `samples` (task -> document indices) evaluates chosen documents instead of the first `limit`.
    Returns lm-eval's merged `results`, `n-samples`, `samples` and `configs` keyed by task name, and
    `group_subtasks` (group -> its subtasks; a group's samples are under its subtasks' names).
    """
    import lm_eval

    manager = task_manager(include_path, metadata)
    merged: dict[str, Any] = {
        "results": {},
        "n-samples": {},
        "samples": {},
        "configs": {},
        "group_subtasks": {},
    }
    limits = limits or {}
    runs = {(s, limits.get(t, limit)) for t, s in tasks}
    for shots, lim in sorted(runs, key=lambda r: tuple(-1 if x is None else x for x in r)):
        names = [t for t, s in tasks if s == shots and limits.get(t, limit) == lim]
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            num_fewshot=shots,
            limit=lim,
            task_manager=manager,
            apply_chat_template=apply_chat_template,
            fewshot_as_multiturn=fewshot_as_multiturn,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            log_samples=True,
            metadata=metadata,
            samples=None if samples is None else {t: samples[t] for t in names},
        )
        for key in merged:
            merged[key].update(out.get(key, {}))
    return merged


def reference_evaluate(
    model_path: str,
    lm_kwargs: dict[str, Any],
    tasks: list[str],
    include_path: str | None,
    limit: int | None,
    seed: int,
    num_fewshot: int | None = None,
) -> dict[str, Any]:
    """Plain, unsharded `lm_eval.simple_evaluate(model="vllm")` on one engine: the yardstick.

    Call it in a fresh process (a Ray task with max_calls=1) with the CPU engine environment set.
    """
    from serve.engine import prepare_process

    prepare_process()
    import lm_eval

    args = ",".join(f"{k}={v}" for k, v in {"pretrained": model_path, **lm_kwargs}.items())
    out = lm_eval.simple_evaluate(
        model="vllm",
        model_args=args,
        tasks=tasks,
        num_fewshot=num_fewshot,
        task_manager=task_manager(include_path),
        limit=limit,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        log_samples=True,
    )
    return {k: out[k] for k in ("results", "samples")}


def leaf_tasks(task_dict: dict[Any, Any]) -> dict[str, Any]:
    """lm-eval's nested task dict (groups hold dicts of subtasks) flattened to name -> task."""
    out: dict[str, Any] = {}
    for key, value in task_dict.items():
        if isinstance(value, dict):
            out.update(leaf_tasks(value))
        else:
            out[getattr(key, "group_name", None) or str(key)] = value
    return out


def task_sizes(names: list[str], include_path: str | None) -> dict[str, dict[str, int]]:
    """Evaluation documents per leaf task of each named task (a group such as MMLU: its subtasks)."""
    from lm_eval.tasks import get_task_dict

    manager = task_manager(include_path)
    out = {}
    for name in names:
        tasks = leaf_tasks(get_task_dict([name], manager))
        out[name] = {leaf: len(task.eval_docs) for leaf, task in tasks.items()}
    return out


def greedy(lm: Any, prompts: list[str], max_tokens: int) -> list[str]:
    """Greedy generations through an lm-eval LM (the sharded engine hosts in a run)."""
    from lm_eval.api.instance import Instance

    kwargs = {"until": [], "max_gen_toks": max_tokens, "do_sample": False, "temperature": 0.0}
    reqs = [
        Instance(request_type="generate_until", doc={}, arguments=(p, dict(kwargs)), idx=0) for p in prompts
    ]
    return list(lm.generate_until(reqs))

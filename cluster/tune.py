"""The tune stage: a Ray Tune search over recipe knobs with accuracy recovery as the objective.

Each trial applies its knob values to the format's recipe, quantizes (content-addressed, so a
repeated recipe is a cache hit), loads the checkpoint once in an in-process vLLM engine and scores
it with lm-eval on the tuning suite at growing sample budgets (the rungs): at each rung only the new
documents are evaluated, and recovery is reported against the baseline's score on exactly the same
documents. With `scheduler: asha` those reports are ASHA's rungs, so poor recipes stop early.
Searches are grid, random or Optuna's TPE. The experiment lives under runs/tune/<name>, named by a
hash of what it searches, so a rerun after the driver died resumes it with `Tuner.restore` (finished
trials are kept, unfinished ones restart). The best full-budget trial's recipe is exported, then
validated on a held-out suite. GPTQ layers that fell back to round-to-nearest are reported with
each trial, never hidden.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from cluster.config import RecipeConfig, SuiteConfig, TaskSpec, TuneStage
from cluster.datasets import write_json_atomically
from cluster.evaluate import include_path, recovery_pct, suite_score

Docs = dict[str, dict[int, float]]  # task -> doc_id -> the task metric's per-document value


def apply_params(recipe: RecipeConfig, params: dict[str, Any]) -> RecipeConfig:
    """A copy of the recipe with dotted keys (e.g. 'calibration.num_samples') set."""
    cfg = OmegaConf.structured(copy.deepcopy(recipe))
    for key, value in params.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def _sample_value(task: TaskSpec, sample: dict[str, Any]) -> float | None:
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
            value = _sample_value(t, sample)
            if value is not None:
                docs[t.name][int(sample["doc_id"])] = value
    return docs


def docs_score(suite: SuiteConfig, docs: Docs, only: Docs | None = None) -> float:
    """The suite score from per-document values (on `only`'s documents when given)."""
    means = {}
    for task, values in docs.items():
        keep = [v for d, v in values.items() if only is None or d in only[task]]
        if keep:
            means[task] = sum(keep) / len(keep)
    return suite_score(suite, means)


def open_lm(model_path: str, max_model_len: int, seed: int, cpu_only: bool, tp: int = 1):
    """lm-eval's vLLM backend with an engine inside this process (a trial's or a task's)."""
    from cluster.evalpool import EngineSpec, prepare_in_process_engine

    prepare_in_process_engine(cpu_only)
    from lm_eval.models.vllm_causallms import VLLM

    spec = EngineSpec(model_path=model_path, max_model_len=max_model_len, seed=seed, tensor_parallel_size=tp)
    return VLLM(pretrained=model_path, **spec.model_args())


def evaluate_docs(
    lm, suite: SuiteConfig, include_path: str | None, seed: int, picks: dict[str, list[int]] | None
) -> Docs:
    """Per-document values on the chosen documents (None: all of every task)."""
    from cluster.evalpool import evaluate_suite

    tasks = [(t.name, t.num_fewshot) for t in suite.tasks if picks is None or picks[t.name]]
    if not tasks:
        return {t.name: {} for t in suite.tasks}
    out = evaluate_suite(lm, tasks, include_path, None, False, False, seed, samples=picks)
    return docs_of(out, suite)


def task_sizes(suite: SuiteConfig, include_path: str | None) -> dict[str, int]:
    """Number of evaluation documents per task (lm-eval's own task loading)."""
    from lm_eval.tasks import get_task_dict

    from cluster.evalpool import task_manager

    tasks = get_task_dict([t.name for t in suite.tasks], task_manager(include_path))
    return {name: len(task.eval_docs) for name, task in tasks.items()}


def first_docs(sizes: dict[str, int], start: int, stop: int | None) -> dict[str, list[int]]:
    """Document indices [start, stop) of every task, clipped to its size."""
    return {t: list(range(min(start, n), n if stop is None else min(stop, n))) for t, n in sizes.items()}


def measure(
    model_path: str,
    suite: SuiteConfig,
    include_path: str | None,
    budget: int | None,
    seed: int,
    max_model_len: int,
    cpu_only: bool,
    tp: int = 1,
) -> Docs:
    """Per-document values of one checkpoint on a suite's first `budget` documents (a Ray task)."""
    lm = open_lm(model_path, max_model_len, seed, cpu_only, tp)
    return evaluate_docs(
        lm, suite, include_path, seed, first_docs(task_sizes(suite, include_path), 0, budget)
    )


def trainable(config: dict[str, Any], setup: dict[str, Any]) -> None:
    """One trial: quantize with the trial's knobs, then report recovery at every rung."""
    from ray import tune

    from cluster.quantize import QuantizeJob, run_quantize

    start = time.perf_counter()
    recipe = apply_params(setup["recipe"], config)
    job = QuantizeJob(
        setup["model"],
        setup["format"],
        setup["base_path"],
        recipe,
        setup["artifact_root"],
        setup["instruct_source"],
        setup["identity"],
    )
    meta = run_quantize(job)
    quantized = time.perf_counter()
    suite, include, seed, base = setup["suite"], setup["include_path"], setup["seed"], setup["baseline"]
    lm = open_lm(meta["path"], setup["max_model_len"], seed, setup["cpu_only"], setup["tp"])
    loaded = time.perf_counter()
    docs: Docs = {t.name: {} for t in suite.tasks}
    previous = 0
    for rung, budget in enumerate(setup["budgets"], start=1):
        picks = first_docs(setup["sizes"], previous, budget)
        for task, values in evaluate_docs(lm, suite, include, seed, picks).items():
            docs[task].update(values)
        score, base_score = docs_score(suite, docs), docs_score(suite, base, only=docs)
        tune.report(
            {
                "rung": rung,
                "budget": sum(len(v) for v in docs.values()),
                "recovery": recovery_pct(score, base_score),
                "score": score,
                "baseline_score": base_score,
                "artifact_key": meta["key"],
                "rtn_fallback_modules": meta["rtn_fallback_modules"],
                "wall_s": time.perf_counter() - start,
                "quantize_s": quantized - start,
                "engine_start_s": loaded - quantized,
                "eval_s": time.perf_counter() - loaded,
            }
        )
        previous = budget or 0


def _param_space(t: TuneStage) -> dict[str, Any]:
    from ray import tune

    make = tune.grid_search if t.search == "grid" else tune.choice
    return {k: make(list(v)) for k, v in t.space.items()}


def _search_alg(t: TuneStage):
    if t.search != "tpe":
        return None
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(seed=t.seed)  # metric and mode come from the TuneConfig


def _scheduler(t: TuneStage):
    if t.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="rung",
        max_t=len(t.rungs),
        grace_period=1,
        reduction_factor=t.reduction_factor,
    )


def budgets(t: TuneStage) -> list[int | None]:
    """The sample budget per task at each report: the rungs, or one report at `limit` (None: all)."""
    return list(t.rungs) if t.rungs else [t.limit]


def experiment_name(ctx, m: str) -> str:
    """sweep-model-format-<hash of everything the search depends on>: a changed search starts afresh."""
    t = ctx.sweep.tune
    blob = json.dumps(
        [asdict(t), asdict(ctx.catalog.formats[t.format].recipe), ctx.models[m].identity], sort_keys=True
    )
    return f"{ctx.sweep.name}-{m}-{t.format}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def trial_gpus(ctx, m: str) -> tuple[int, float]:
    """(tensor-parallel size, GPUs per trial): a trial owns every GPU its engine shards over."""
    t = ctx.sweep.tune
    if ctx.cpu_only:
        return 1, 0
    tp = ctx.models[m].config.gpus.get(t.format, 1)
    return tp, max(t.gpus_per_trial, tp)


def _measure_remote(ctx, m: str, jobs: list[tuple[str, SuiteConfig, str | None, int | None]]) -> list[Docs]:
    """Per-document values of several (checkpoint, suite) pairs, as concurrent fresh-process Ray tasks."""
    import ray

    t = ctx.sweep.tune
    tp, gpus = trial_gpus(ctx, m)
    fn = ray.remote(num_cpus=t.cpus_per_trial, num_gpus=gpus, max_calls=1)(measure)
    refs = [
        fn.remote(  # type: ignore[call-arg]
            path,
            suite,
            include,
            budget,
            ctx.sweep.eval.seed,
            ctx.sweep.serve.engine.max_model_len,
            ctx.cpu_only,
            tp,
        )
        for path, suite, include, budget in jobs
    ]
    return ray.get(refs)


def _cached_docs(path: Path, compute) -> Docs:
    """Per-document values stored as JSON (so a resumed search does not measure the baseline again)."""
    if path.is_file():
        raw = json.loads(path.read_text())
        return {task: {int(d): v for d, v in values.items()} for task, values in raw.items()}
    docs = compute()
    write_json_atomically(path, docs)
    return docs


def _tuner(ctx, m: str, setup: dict[str, Any], path: Path):
    """A new Tuner, or the interrupted one restored from `path`."""
    from ray import tune

    t = ctx.sweep.tune
    fn = tune.with_resources(
        tune.with_parameters(trainable, setup=setup), {"cpu": t.cpus_per_trial, "gpu": trial_gpus(ctx, m)[1]}
    )
    if t.resume and tune.Tuner.can_restore(str(path)):
        ctx.console.log(f"tune: resuming the interrupted search in {path} (finished trials are kept)")
        return tune.Tuner.restore(str(path), trainable=fn, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        fn,
        param_space=_param_space(t),
        tune_config=tune.TuneConfig(
            metric="recovery",
            mode="max",
            num_samples=t.num_samples,
            max_concurrent_trials=t.max_concurrent,
            search_alg=_search_alg(t),
            scheduler=_scheduler(t),
        ),
        run_config=tune.RunConfig(name=path.name, storage_path=str(path.parent)),
    )


def _tune_model(ctx, m: str) -> list[dict]:
    t, model = ctx.sweep.tune, ctx.models[m]
    suite, fmt = ctx.catalog.suites[t.suite], ctx.catalog.formats[t.format]
    include = include_path(suite, ctx.models[m])
    path = ctx.root / "tune" / experiment_name(ctx, m)
    steps = budgets(t)
    full = steps[-1]
    base_path = ctx.checkpoints[(m, ctx.sweep.baseline)].path
    base = _cached_docs(
        path / f"baseline-{suite.name}.json",
        lambda: _measure_remote(ctx, m, [(base_path, suite, include, full)])[0],
    )
    ctx.console.log(
        f"tune: {m} {t.format}: {ctx.sweep.baseline} scores {docs_score(suite, base):.2f} on {suite.name}; "
        f"{t.search} search, {t.scheduler} scheduler, budgets {steps}"
    )
    setup = {
        "recipe": fmt.recipe,
        "model": m,
        "format": t.format,
        "base_path": model.path,
        "artifact_root": str(ctx.root / "artifacts" / "quantized"),
        "instruct_source": model.instruct_source,
        "identity": model.identity,
        "suite": suite,
        "budgets": steps,
        "sizes": task_sizes(suite, include),
        "seed": ctx.sweep.eval.seed,
        "include_path": include,
        "max_model_len": ctx.sweep.serve.engine.max_model_len,
        "cpu_only": ctx.cpu_only,
        "tp": trial_gpus(ctx, m)[0],
        "baseline": base,
    }
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # save the experiment state as trials finish
    grid = _tuner(ctx, m, setup, path).fit()
    full_budget = sum(len(v) for v in base.values())
    results = [grid[i] for i in range(len(grid))]
    rows = [_trial_row(ctx, m, suite.name, r, full_budget) for r in results]
    done = [i for i, row in enumerate(rows) if row["status"] == "ok" and row["budget"] == full_budget]
    if not done:
        ctx.console.log(f"[bold red]tune: {m}: no trial reached the full budget; no recipe exported")
        return rows
    best = max(done, key=lambda i: (rows[i]["recovery_pct"], -i))
    best_config = results[best].config or {}
    rows[best]["is_best"] = True
    best_recipe = apply_params(fmt.recipe, {k: best_config[k] for k in t.space})
    recipe_yaml = yaml.safe_dump(OmegaConf.to_container(OmegaConf.structured(best_recipe)), sort_keys=True)
    (path / "best_recipe.yaml").write_text(recipe_yaml)
    ctx.console.log(
        f"tune: best {best_config} -> recovery {rows[best]['recovery_pct']:.2f}% on {suite.name}; "
        f"recipe {path / 'best_recipe.yaml'}:\n{recipe_yaml}"
    )
    if t.validation_suite:
        rows[best].update(_validate(ctx, m, best_recipe, path))
    return rows


def _validate(ctx, m: str, recipe: RecipeConfig, path: Path) -> dict:
    """Recovery of the best recipe on the held-out validation suite (the baseline on the same docs)."""
    from cluster.quantize import QuantizeJob, artifact_dir

    t, model = ctx.sweep.tune, ctx.models[m]
    suite = ctx.catalog.suites[t.validation_suite]
    include = include_path(suite, ctx.models[m])
    job = QuantizeJob(
        m,
        t.format,
        model.path,
        recipe,
        str(ctx.root / "artifacts" / "quantized"),
        model.instruct_source,
        model.identity,
    )
    best_path = str(artifact_dir(job))
    base_path = ctx.checkpoints[(m, ctx.sweep.baseline)].path
    best_docs, base_docs = _measure_remote(
        ctx, m, [(best_path, suite, include, t.limit), (base_path, suite, include, t.limit)]
    )
    score, base = docs_score(suite, best_docs), docs_score(suite, base_docs)
    recovery = recovery_pct(score, base)
    write_json_atomically(
        path / "validation.json",
        {"suite": suite.name, "score": score, "baseline_score": base, "recovery_pct": recovery},
    )
    ctx.console.log(
        f"tune: validation on {suite.name}: best recipe {score:.2f} vs {ctx.sweep.baseline} {base:.2f} "
        f"-> recovery {recovery:.2f}%"
    )
    return {"validation_suite": suite.name, "validation_recovery_pct": recovery}


def _trial_row(ctx, m: str, suite: str, r, full_budget: int) -> dict:
    t = ctx.sweep.tune
    met = r.metrics or {}
    params = sorted((k, str(v)) for k, v in (r.config or {}).items())
    history = r.metrics_dataframe
    rungs = [] if history is None or "recovery" not in history else [float(x) for x in history["recovery"]]
    budget = met.get("budget")
    return {
        "sweep": ctx.sweep.name,
        "model": m,
        "format": t.format,
        "trial_id": str(met.get("trial_id", Path(r.path).name)),
        "params": params,
        "suite": suite,
        "search": t.search,
        "scheduler": t.scheduler,
        "score": met.get("score"),
        "baseline_score": met.get("baseline_score"),
        "recovery_pct": met.get("recovery"),
        "rung_recovery_pct": [x for x in rungs if not math.isnan(x)],
        "budget": budget,
        "stopped_early": r.error is None and budget is not None and budget < full_budget,
        "status": "error" if r.error else "ok",
        "artifact_key": met.get("artifact_key"),
        "rtn_fallback_modules": list(met.get("rtn_fallback_modules") or []),
        "wall_s": met.get("wall_s"),
        "is_best": False,
        "validation_suite": None,
        "validation_recovery_pct": None,
    }


def run_stage(ctx) -> None:
    """Run the sweep's tuning search for every model; fill `trials`."""
    rows: list[dict] = []
    for m in ctx.sweep.models:
        rows += _tune_model(ctx, m)
    ctx.results["trials"] = rows

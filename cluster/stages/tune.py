"""The tune stage: a Ray Tune search over recipe knobs, accuracy recovery as the objective.

One cell per model runs the search (its Ray task is Tune's controller; the trials hold the
resources). Each trial (`cluster.stages.tunetrial.RecipeTrial`) applies its knob values to the format's
recipe, quantizes into the experiment's own artifact cache (keyed by recipe, so a repeated recipe
is found again), loads the checkpoint once in an in-process vLLM engine (trial processes are
reused, so vLLM is imported once per process) and scores it with lm-eval on the tuning suite at
growing sample budgets (the rungs), each rung scoring only new documents, recovery reported against
the baseline on exactly the same documents; with `scheduler: asha` poor recipes stop early. Searches: grid, random, Optuna
TPE. The experiment lives under `tune/<name>`, named by the cell key, so a rerun after the driver
died resumes it (`Tuner.restore`). The best full-budget recipe is exported and validated on a
held-out suite. GPTQ layers that fell back to round-to-nearest are reported with each trial.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from cluster.config.modelfit import recipe_for
from cluster.config.schema import RecipeConfig, SuiteConfig, TuneStage
from cluster.eval.docsets import groups_of_sizes
from cluster.eval.scoring import Docs, docs_score, recovery_pct
from cluster.run.env import CellRun, RunEnv
from cluster.stages.common import coords
from cluster.stages.tuneproxy import prescreen, proxy_row_of, proxy_rung
from cluster.stages.tunetrial import TrialSetup, apply_params, measure, trial_checkpoint
from cluster.store.commit import CellResult


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

    rungs = len(budgets(t)) + (1 if proxy_rung(t) else 0)
    return ASHAScheduler(time_attr="rung", max_t=rungs, grace_period=1, reduction_factor=t.reduction_factor)


def budgets(t: TuneStage) -> tuple[int | None, ...]:
    """The sample budget per task at each report: the rungs, or one report at `limit` (None: all)."""
    return tuple(t.rungs) if t.rungs else (t.limit,)


def _tp(env: RunEnv, cell) -> tuple[int, float]:
    """(tensor-parallel size, GPUs per trial): a trial owns every GPU its engine shards over."""
    if not env.gpu:
        return 1, 0
    if cell.resources.gpus:  # placed by the plan (cluster.plan.placement): one node per trial
        return cell.resources.gpus, cell.resources.gpus
    tp = env.catalog.models[cell.model].gpus.get(cell.format, 1)
    return tp, max(env.sweep.tune.gpus_per_trial, tp)


def _trial_resources(env: RunEnv, cell) -> dict[str, float]:
    """One trial's Ray resources: CPUs, its GPUs of the placed accelerator type, host memory to quantize."""
    res = cell.resources
    out = {"cpu": env.sweep.tune.cpus_per_trial, "gpu": _tp(env, cell)[1]}
    if env.gpu and res.gpus and res.accelerator:
        out[f"accelerator_type:{res.accelerator}"] = 0.001
    if res.memory_gb:
        out["memory"] = res.memory_gb * 1e9
    return out


def _engine_of(env: RunEnv, cell, fmt: str) -> tuple[int, int]:
    """(tp, pp) of an engine of `fmt` beside the trials: on the plan's GPU kind, spanning nodes if need be."""
    from cluster.plan.placement import shape_on

    model = env.catalog.models[cell.model]
    if not env.gpu:
        return 1, 1
    shape = shape_on(
        env.catalog, model, env.catalog.formats[fmt], cell.resources, env.sweep.placement.cluster
    )
    return (shape.tp, shape.pp) if shape else (model.gpus.get(fmt, 1), 1)


def _measure_remote(
    cr: CellRun, jobs: list[tuple[str, SuiteConfig, str | None, int | None]], baseline: bool
) -> list[Docs]:
    """Per-document values of (checkpoint, suite) pairs as concurrent fresh-process Ray tasks.

    The baseline runs with the baseline's own tensor parallelism, not the tuned format's.
    """
    import ray

    from cluster.eval.engine_host import engine_options
    from serve.engine import IN_PROCESS_ENV, cpu_env

    env, t = cr.env, cr.env.sweep.tune
    refs, groups = [], []
    for i, (path, suite, include, budget) in enumerate(jobs):
        fmt = env.sweep.baseline if baseline or i > 0 else cr.cell.format
        tp, pp = _engine_of(env, cr.cell, fmt)
        env_vars = {} if env.gpu else {**IN_PROCESS_ENV, **cpu_env(env.sweep.engine, core=i)}
        accel = cr.cell.resources.accelerator if env.gpu else None
        opts, pg = engine_options(t.cpus_per_trial, tp if env.gpu else 0, pp, accel)
        groups += [pg] if pg is not None else []
        fn = ray.remote(max_calls=1)(measure).options(runtime_env={"env_vars": env_vars}, **opts)
        refs.append(fn.remote(env, path, suite, include, budget, tp, pp))  # type: ignore[call-arg]  # ray types remote() up to 5 args
    try:
        return ray.get(refs)
    finally:
        from ray.util.placement_group import remove_placement_group

        for pg in groups:
            remove_placement_group(pg)


def _cached_docs(path: Path, compute) -> Docs:
    """Per-document values stored as JSON (so a resumed search does not measure the baseline again)."""
    import json

    from cluster.store.provenance import write_json_atomically

    if path.is_file():
        raw = json.loads(path.read_text())
        return {task: {int(d): v for d, v in values.items()} for task, values in raw.items()}
    docs = compute()
    write_json_atomically(path, docs)
    return docs


def restorable(path: Path) -> bool:
    """An interrupted search worth restoring: its Tuner and at least one saved experiment state.

    Killed between writing tuner.pkl and the first experiment state, a restore would build a search
    with no trials of its own (Ray then runs one trial with an empty config).
    """
    from ray import tune

    return tune.Tuner.can_restore(str(path)) and any(path.glob("experiment_state-*.json"))


def _tuner(cr: CellRun, setup: TrialSetup, path: Path, points: list[dict] | None = None):
    """A new Tuner, or the interrupted one restored from `path`.

    `points`: run exactly these knob settings (the recipes a prescreen kept), not the search's.
    """
    from ray import tune

    t = cr.env.sweep.tune
    from cluster.stages.tunetrial import RecipeTrial

    fn = tune.with_resources(
        tune.with_parameters(RecipeTrial, setup=setup), _trial_resources(cr.env, cr.cell)
    )
    space = _param_space(t) if points is None else {k: tune.choice(list(v)) for k, v in t.space.items()}
    if t.resume and restorable(path):
        cr.report("resuming the interrupted search (finished trials are kept)")
        return tune.Tuner.restore(
            str(path), trainable=fn, param_space=space, resume_unfinished=True, resume_errored=True
        )
    (path / "tuner.pkl").unlink(missing_ok=True)  # a search killed before it recorded any trial
    at_once = cr.cell.resources.trials or t.max_concurrent  # the plan's: what the scheduler holds for it
    if points is None:
        search, samples = _search_alg(t), t.num_samples
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        search, samples = BasicVariantGenerator(points_to_evaluate=points), len(points)
    config = tune.TuneConfig(
        metric="recovery",
        mode="max",
        num_samples=samples,
        max_concurrent_trials=at_once,
        search_alg=search,
        scheduler=None if setup.screen else _scheduler(t),
        # a trial process imports llmcompressor, vLLM and lm-eval once, not once per trial: `RecipeTrial`
        # is a class trainable (a function trainable's thread, stopped by ASHA mid-trial, left the
        # next trial of a reused actor PENDING for good in Ray Tune 2.x)
        reuse_actors=True,
    )
    run = tune.RunConfig(
        name=path.name,
        storage_path=str(path.parent),
        callbacks=[_progress_callback(cr)],
        checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),  # trials keep no state worth it
    )
    return tune.Tuner(fn, param_space=space, tune_config=config, run_config=run)


def _fit(cr: CellRun, setup: TrialSetup, path: Path, points: list[dict] | None = None) -> list[Any]:
    """Run (or resume) one Tune experiment; its trials' results."""
    grid = _tuner(cr, setup, path, points).fit()
    return [grid[i] for i in range(len(grid))]


def _progress_callback(cr: CellRun):
    from ray.tune import Callback

    class Progress(Callback):
        """Report each finished trial as the cell's current step."""

        def __init__(self) -> None:
            self.finished = 0

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self.finished += 1
            last = trial.last_result or {}
            rec = last.get("recovery")
            what = "recovery" if last.get("budget") else "proxy score 100*exp(-KL)"
            shown = f"{rec:.2f}" if isinstance(rec, float) else "-"
            cr.report(f"trial {self.finished} of {len(trials)} finished ({trial.config}: {what} {shown})")

    return Progress()


def _setup(cr: CellRun, path: Path) -> TrialSetup:
    from cluster.eval.harness import task_sizes
    from cluster.stages.evaluate import include_path

    env, cell, t = cr.env, cr.cell, cr.env.sweep.tune
    base = cr.input_of("quantize")
    prepared = base["prepared"]
    suite = env.catalog.suites[t.suite or ""]
    include = include_path(suite, prepared)
    steps = budgets(t)
    if any(m["stage"] == "evaluate" for m in cr.inputs.values()):  # the baseline's committed scores
        from cluster.eval.scoring import docs_from_rows
        from cluster.store.datasets import rows

        found = rows(
            env.out,
            "eval_samples",
            sweep=env.sweep.name,
            model=cell.model,
            format=env.sweep.baseline,
            suite=suite.name,
        )
        base_docs = docs_from_rows(found, suite)
    else:
        cr.report(f"measuring the baseline on {suite.name}")
        base_docs = _cached_docs(
            path / f"baseline-{suite.name}.json",
            lambda: _measure_remote(cr, [(base["path"], suite, include, steps[-1])], baseline=True)[0],
        )
    return TrialSetup(
        env,
        cell.model,
        cell.format,
        prepared["path"],
        prepared.get("instruct_source"),
        recipe_for(env.catalog, cell.model, cell.format),
        suite,
        include,
        steps,
        task_sizes([x.name for x in suite.tasks], include),
        base_docs,
        str(path / "artifacts"),
        cell.route,
        _tp(env, cell)[0],
        prepared,
    )


def run(cr: CellRun) -> CellResult:
    """Run (or resume) the search, export and validate the best recipe; one row per trial."""
    import yaml
    from omegaconf import OmegaConf

    env, cell, t = cr.env, cr.cell, cr.env.sweep.tune
    name = f"{env.sweep.name}-{cell.model}-{cell.format}-{cell.key}"
    path = env.out / "tune" / name
    setup = _setup(cr, path)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # save the experiment state as trials finish
    cr.report(f"{t.search} search, {t.scheduler} scheduler, budgets {list(setup.budgets)}")

    resumed = t.resume and restorable(path)
    full = sum(len(v) for v in setup.baseline.values())
    if t.proxy == "kl" and t.prescreen_keep is not None:
        results, walls, proxies = prescreen(cr, setup, path, lambda *a: _fit(cr, *a))
        rows = [_trial_row(cr, r, full) for r in results]
        for row, (trial, wall) in zip(
            rows, walls, strict=True
        ):  # a kept recipe is one trial: its screen and its scoring
            row.update(trial_id=trial, wall_s=(row["wall_s"] or 0.0) + wall)
    else:
        results = _fit(cr, setup, path)
        rows = [_trial_row(cr, r, full) for r in results]
        proxies = [proxy_row_of(cr, r) for r in results]
    done = [i for i, row in enumerate(rows) if row["status"] == "ok" and row["budget"] == full]
    files: dict[str, Any] = {}
    note = "no trial reached the full budget; no recipe exported"
    if done:
        best = max(done, key=lambda i: (rows[i]["recovery_pct"], -i))
        rows[best]["is_best"] = True
        recipe = apply_params(setup.recipe, {k: (results[best].config or {})[k] for k in t.space})
        text = yaml.safe_dump(OmegaConf.to_container(OmegaConf.structured(recipe)), sort_keys=True)
        files[f"tune/{name}/best_recipe.yaml"] = text
        note = f"best {dict(rows[best]['params'])}: recovery {rows[best]['recovery_pct']:.2f}%"
        if t.validation_suite:
            rows[best].update(_validate(cr, setup, recipe))
            note += f"; {t.validation_suite} validation recovery {rows[best]['validation_recovery_pct']:.2f}%"
            files[f"tune/{name}/validation.json"] = {
                k: rows[best][k] for k in ("validation_suite", "validation_recovery_pct")
            }
    if resumed:
        note = f"resumed the interrupted search (finished trials kept); {note}"
    out = {"trials": rows, "proxies": [p for p in proxies if p]}
    return CellResult(rows=out, files=files, context=cr.context(1), note=note)


def _validate(cr: CellRun, setup: TrialSetup, recipe: RecipeConfig) -> dict[str, Any]:
    """Recovery of the best recipe on the held-out validation suite (the baseline on the same docs)."""
    from cluster.stages.evaluate import include_path

    env, t = cr.env, cr.env.sweep.tune
    suite = env.catalog.suites[t.validation_suite or ""]
    include = include_path(suite, cr.input_of("quantize")["prepared"])
    best_path, _ = trial_checkpoint(setup, recipe)
    cr.report(f"validating the best recipe on {suite.name}")
    best_docs, base_docs = _measure_remote(
        cr,
        [(best_path, suite, include, t.limit), (cr.input_of("quantize")["path"], suite, include, t.limit)],
        baseline=False,
    )
    from cluster.eval.harness import task_sizes

    groups = groups_of_sizes(task_sizes([x.name for x in suite.tasks], include))
    recovery = recovery_pct(
        docs_score(suite, best_docs, groups=groups), docs_score(suite, base_docs, groups=groups)
    )
    return {"validation_suite": suite.name, "validation_recovery_pct": recovery}


def _trial_row(cr: CellRun, r: Any, full_budget: int) -> dict:
    t = cr.env.sweep.tune
    met = r.metrics or {}
    history = r.metrics_dataframe
    rungs = []
    if history is not None and "recovery" in history:  # a proxy rung (budget 0): a rank score, not a recovery
        rungs = [float(x) for x, b in zip(history["recovery"], history["budget"], strict=True) if b]
    budget = met.get("budget")
    proxy = met.get("proxy") or {}
    return {
        **coords(cr),
        "trial_id": str(met.get("trial_id", Path(r.path).name)),
        "params": sorted((k, str(v)) for k, v in (r.config or {}).items()),
        "suite": t.suite or "",
        "search": t.search,
        "scheduler": t.scheduler,
        "score": met.get("score"),
        "baseline_score": met.get("baseline_score"),
        "recovery_pct": met.get("recovery") if budget else None,
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
        "proxy_kl": proxy.get("kl_mean"),
        "proxy_top1": proxy.get("top1_agreement"),
        "proxy_ppl_ratio": proxy.get("ppl_ratio"),
    }


def placeholder(cr: CellRun, status: str, reason: str) -> CellResult:
    """No trials ran; the manifest says why (trial rows are per trial)."""
    return CellResult(note=reason)

"""The tune stage: a Ray Tune search over recipe knobs, accuracy recovery as the objective.

One cell per model runs the search (its Ray task is Tune's controller; the trials hold the
resources). Each trial applies its knob values to the format's recipe, quantizes into the
experiment's own artifact cache (keyed by recipe, so a repeated recipe is found again), loads the
checkpoint once in an in-process vLLM engine (trial processes are reused, so vLLM is imported
once per process) and scores it with lm-eval on the tuning suite at growing sample budgets (the
rungs), each rung scoring only new documents, recovery reported against the baseline on exactly
the same documents; with `scheduler: asha` poor recipes stop early. Searches: grid, random, Optuna
TPE. The experiment lives under `tune/<name>`, named by the cell key, so a rerun after the driver
died resumes it (`Tuner.restore`). The best full-budget recipe is exported and validated on a
held-out suite. GPTQ layers that fell back to round-to-nearest are reported with each trial.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.config.modelfit import recipe_for
from cluster.config.schema import RecipeConfig, SuiteConfig, TuneStage
from cluster.eval.docsets import evaluate_docs, first_docs, groups_of_sizes
from cluster.eval.scoring import Docs, docs_score, recovery_pct
from cluster.plan.keys import content_key
from cluster.run.env import CellRun, RunEnv
from cluster.stages.common import coords
from cluster.stages.tuneproxy import proxy_report, proxy_row_of, trial_proxy
from cluster.store.commit import CellResult


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one search shares."""

    env: RunEnv
    model: str
    format: str
    base_path: str
    instruct_source: str | None
    recipe: RecipeConfig
    suite: SuiteConfig
    include_path: str | None
    budgets: tuple[int | None, ...]
    sizes: dict[str, dict[str, int]]  # suite task -> leaf task (a group's subtasks) -> documents
    baseline: Docs
    artifact_root: str
    route: str
    tp: int
    prepared: dict[str, Any]  # the prepare stage's outputs (the quality gate's baseline)


def apply_params(recipe: RecipeConfig, params: dict[str, Any]) -> RecipeConfig:
    """A copy of the recipe with dotted keys (e.g. 'calibration.num_samples') set."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(copy.deepcopy(recipe))
    for key, value in params.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def open_lm(env: RunEnv, path: str, tp: int, pp: int = 1):
    """lm-eval's vLLM backend with an engine inside this process (a trial's or a task's).

    On CPU the engine runs in this process, bound to one core (trial processes are reused, so a
    trial's previous engine is freed by then).
    """
    from serve.engine import IN_PROCESS_ENV, cpu_env, lm_eval_kwargs, prepare_process

    if not env.gpu:
        os.environ.update({**IN_PROCESS_ENV, **cpu_env(env.sweep.engine, core=os.getpid())})
    prepare_process()
    from lm_eval.models.vllm_causallms import VLLM

    ev = env.sweep.eval
    kwargs = lm_eval_kwargs(
        env.sweep.engine, env.host, tp, not env.gpu, ev.seed, ev.add_bos_token, ev.batch_size, pp
    )
    return VLLM(pretrained=path, **kwargs)


def measure(
    env: RunEnv, path: str, suite: SuiteConfig, include: str | None, budget: int | None, tp: int, pp: int = 1
) -> Docs:
    """Per-document values of one checkpoint on a suite's first `budget` documents (a Ray task)."""
    from cluster.eval.harness import task_sizes

    lm = open_lm(env, path, tp, pp)
    sizes = task_sizes([t.name for t in suite.tasks], include)
    return evaluate_docs(
        env.sweep.eval, lm, suite, include, first_docs(sizes, 0, budget), groups_of_sizes(sizes)
    )


def trial_checkpoint(setup: TrialSetup, recipe: RecipeConfig) -> tuple[str, dict[str, Any]]:
    """The trial's checkpoint (quantized once per recipe, atomically) and what quantizing found."""
    import json
    import shutil
    import tempfile

    from cluster.quant.oneshot import quantize_into

    key = content_key(setup.model, setup.format, recipe)
    final = Path(setup.artifact_root) / key
    meta_file = final / "trial_meta.json"
    if not meta_file.is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
        meta = quantize_into(setup.base_path, recipe, tmp, setup.env.dtype(), setup.instruct_source)
        if setup.route == "dequantized":
            from cluster.quant.dequant import dequantize

            dequantize(str(tmp), tmp / "dequantized", setup.env.dtype())
        meta["key"] = key
        (tmp / "trial_meta.json").write_text(json.dumps(meta))
        try:
            tmp.rename(final)
        except OSError:  # another trial with the same recipe finished first
            shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads(meta_file.read_text())
    path = final / "dequantized" if setup.route == "dequantized" else final
    return str(path), meta


def trainable(config: dict[str, Any], setup: TrialSetup) -> None:
    """One trial: quantize with the trial's knobs, then report recovery at every rung."""
    from ray import tune

    start = time.perf_counter()
    path, meta = trial_checkpoint(setup, apply_params(setup.recipe, config))
    quantized = time.perf_counter()
    proxy = trial_proxy(setup, meta["key"])
    first = 1
    if setup.env.sweep.tune.proxy == "kl":  # the first rung: no engine for a trial stopped here
        tune.report(proxy_report(proxy, meta, time.perf_counter() - start))
        first = 2
    lm = open_lm(setup.env, path, setup.tp)
    loaded = time.perf_counter()
    suite = setup.suite
    groups = groups_of_sizes(setup.sizes)
    docs: Docs = {leaf: {} for leaves in groups.values() for leaf in leaves}
    previous = 0
    for rung, budget in enumerate(setup.budgets, start=first):
        picks = first_docs(setup.sizes, previous, budget)
        for leaf, values in evaluate_docs(
            setup.env.sweep.eval, lm, suite, setup.include_path, picks, groups
        ).items():
            docs.setdefault(leaf, {}).update(values)
        score = docs_score(suite, docs, groups=groups)
        base_score = docs_score(suite, setup.baseline, only=docs, groups=groups)
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
                "proxy": proxy,
            }
        )
        previous = budget or 0
    del lm


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

    rungs = len(budgets(t)) + (1 if t.proxy == "kl" else 0)
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


def _tuner(cr: CellRun, setup: TrialSetup, path: Path):
    """A new Tuner, or the interrupted one restored from `path`."""
    from ray import tune

    t = cr.env.sweep.tune
    fn = tune.with_resources(tune.with_parameters(trainable, setup=setup), _trial_resources(cr.env, cr.cell))
    if t.resume and restorable(path):
        cr.report("resuming the interrupted search (finished trials are kept)")
        return tune.Tuner.restore(
            str(path), trainable=fn, param_space=_param_space(t), resume_unfinished=True, resume_errored=True
        )
    (path / "tuner.pkl").unlink(missing_ok=True)  # a search killed before it recorded any trial
    # reuse_actors: a trial process imports llmcompressor, vLLM and lm-eval once, not once per trial
    at_once = cr.cell.resources.trials or t.max_concurrent  # the plan's: what the scheduler holds for it
    config = tune.TuneConfig(
        metric="recovery",
        mode="max",
        num_samples=t.num_samples,
        max_concurrent_trials=at_once,
        search_alg=_search_alg(t),
        scheduler=_scheduler(t),
        # ...except under ASHA: with a reused actor, Ray Tune 2.x left the next trial PENDING for good
        # once two trials in a row had run to the last rung (seen in bench/tune_efficiency.py)
        reuse_actors=t.scheduler != "asha",
    )
    run = tune.RunConfig(name=path.name, storage_path=str(path.parent), callbacks=[_progress_callback(cr)])
    return tune.Tuner(fn, param_space=_param_space(t), tune_config=config, run_config=run)


def _progress_callback(cr: CellRun):
    from ray.tune import Callback

    class Progress(Callback):
        """Report each finished trial as the cell's current step."""

        def __init__(self) -> None:
            self.finished = 0

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self.finished += 1
            rec = (trial.last_result or {}).get("recovery")
            shown = f"{rec:.2f}%" if isinstance(rec, float) else "-"
            cr.report(f"trial {self.finished} of {len(trials)} finished ({trial.config}: recovery {shown})")

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
    grid = _tuner(cr, setup, path).fit()
    full = sum(len(v) for v in setup.baseline.values())
    results = [grid[i] for i in range(len(grid))]
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
    rungs = [] if history is None or "recovery" not in history else [float(x) for x in history["recovery"]]
    if t.proxy == "kl":
        rungs = rungs[1:]  # the proxy rung's figure is a rank score, not a recovery
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

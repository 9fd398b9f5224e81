"""lm-eval task names, checked in `run` before Ray starts or anything is written.

Indexing lm-eval's task files takes seconds (too slow for `plan`), so this runs in `run` only.
Built models' tasks (`include_path: builtin`) are known by name without lm-eval; the offline tasks
(`include_path: offline`) are written from the installed data packages first.
"""

from __future__ import annotations

from cluster.config.schema import Catalog, SweepConfig
from cluster.errors import ConfigError


def check_tasks(sweep: SweepConfig, catalog: Catalog) -> None:
    """Every lm-eval task the sweep names must exist (lm-eval's index, or the built models' tasks)."""
    from cluster.models.tinymodel import TASK_NAMES

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
                        f"suite '{s}' uses builtin tasks, which only built models (tiny-llama, organism) have"
                    )
                known = set(TASK_NAMES)
            else:
                if suite.include_path not in index:
                    from lm_eval.tasks import TaskManager

                    path = suite.include_path
                    if path == "offline":
                        from cluster.eval.offline import task_dir

                        path = str(task_dir())
                    index[suite.include_path] = set(TaskManager(include_path=path).all_tasks)
                known = index[suite.include_path]
            for name in (task.name, *task.subtask_baselines):
                if name not in known:
                    raise ConfigError(f"suite '{s}': unknown lm-eval task '{name}'")

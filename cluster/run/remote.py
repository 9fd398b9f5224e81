"""How a cell becomes a Ray task: its options (CPUs, GPUs, accelerator type, a fresh process, the
code-sandbox nodes), and errors turned into one line for manifests and logs."""

from __future__ import annotations

import re
from typing import Any

from cluster.plan.cells import Cell
from cluster.run import registry
from cluster.run.env import RunEnv

_RUNNERS: dict[bool, Any] = {}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def one_line(exc: BaseException) -> str:
    """`Type: message` of the root cause, on one line, without terminal colours."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    lines = [x.strip() for x in _ANSI.sub("", str(exc)).splitlines() if x.strip()]
    return f"{type(exc).__name__}: {lines[-1][:400] if lines else ''}".rstrip(": ")


def infra_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean the cluster lost the work (a worker, node or object), not that the cell failed."""
    from ray.exceptions import NodeDiedError, ObjectLostError, WorkerCrashedError

    return (WorkerCrashedError, NodeDiedError, ObjectLostError)  # OwnerDiedError is an ObjectLostError


def remote_runner(cell: Cell, env: RunEnv):
    """The Ray remote function (with options) that runs a cell."""
    import ray

    stage = registry.STAGES[cell.stage]
    # GPU memory a reused worker cached would stay taken: on GPUs every quantization gets its own process
    fresh = stage.fresh_process or (stage.name == "quantize" and env.gpu)
    if fresh not in _RUNNERS:  # max_calls is fixed per remote function
        _RUNNERS[fresh] = ray.remote(max_calls=1 if fresh else 0)(registry.run_cell)
    return _RUNNERS[fresh].options(**cell_options(cell, env))


def cell_options(cell: Cell, env: RunEnv) -> dict[str, Any]:
    """Ray options of a cell's task: its CPUs, GPUs of the accelerator type and host memory the plan
    placed it with. A session cell's engine hosts or Serve replicas, and a search's trials, hold the
    resources instead: their task (a driver, Tune's controller) asks for nothing."""
    res = cell.resources
    holds = not registry.STAGES[cell.stage].session and cell.stage != "tune"
    opts: dict[str, Any] = {"num_cpus": res.cpus if holds else 0, "num_gpus": 0}
    if holds and res.gpus and (env.gpu or res.accelerator):  # placed on GPUs by the plan
        opts["num_gpus"] = res.gpus
        if res.accelerator:
            opts["accelerator_type"] = res.accelerator
    if holds and res.memory_gb:  # e.g. the BF16 weights a quantization loads
        opts["memory"] = int(res.memory_gb * 1e9)
    if cell.stage == "evaluate" and env.gpu and _runs_code(cell, env):
        # model-written code runs in this task's sandbox: on the cluster's code-sandbox nodes (k8s/)
        opts["resources"] = {"code_sandbox": 0.01}
    return opts


def _runs_code(cell: Cell, env: RunEnv) -> bool:
    return any(t.kind == "humaneval" for t in env.catalog.suites[cell.suite].tasks)

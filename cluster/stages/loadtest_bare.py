"""The bare-vLLM baseline: a loadtest cell's checkpoint, engine arguments and load on plain `vllm serve`.

With `serve.bare_baseline`, every load-test cell gets a twin that starts vLLM's own OpenAI server
(`serve.bare`) on the cell's resources, runs the very same synchronous and asynchronous load
(`cluster.stages.loadtest.measure`) and stops it. Its rows go to the same `perf` and `requests`
datasets with `server` = `vllm-serve` (Serve's are `ray-serve`), so the report can show what Ray
Serve costs over the engine's own server for every format, use case and hardware target.
"""

from __future__ import annotations

import socket

from cluster.run.env import CellRun
from cluster.stages import loadtest
from cluster.store.commit import CellResult

placeholder = loadtest.placeholder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(cr: CellRun) -> CellResult:
    """Start `vllm serve` for the cell's checkpoint, measure it like the Serve cell, stop it."""
    from serve.bare import vllm_serve

    skipped = loadtest.unmeasurable(cr)
    if skipped is not None:
        return skipped
    env = cr.env
    served = loadtest.served_model(env, cr.cell, cr.input_of("health")["path"])
    if served.pipeline_parallel_size > 1:
        reason = "not measured: bare vllm serve runs on one node; this engine spans nodes"
        return placeholder(cr, "skipped", reason)
    dep = loadtest.deployment(env, [served], cr.cell.hardware)
    cr.report("starting bare vllm serve")
    with vllm_serve(env.sweep.serve, env.sweep.engine, dep, served, _free_port()) as url:
        return loadtest.measure(cr, url)

"""The loadtest stage's measurement against a null server that fails requests: nothing is dropped.

`cluster.stages.loadtest.run` is what the executor runs per cell (synchronous + the sweep's async
profile); here it runs against the real null HTTP server with injected HTTP 500s and broken streams,
and its rows go through the real per-cell commit, so a failed request must be a `requests` row with
its error, a `failed` count and an `error_rate` in `perf`, and in the vllm-bench JSON export.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cluster.config.loader import load_sweep
from cluster.plan.cells import plan
from cluster.run.env import CellRun, RunEnv
from cluster.stages import loadtest
from cluster.store import datasets
from cluster.store.commit import commit
from cluster.store.provenance import Provenance
from serve.nullserver import null_server
from tests.helpers import host_profile

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

SERVE = [
    "serve.sync_requests=6",
    "serve.warmup_requests=1",
    "serve.async_rate=40",
    "serve.async_duration_s=2",
    "serve.async_max_requests=24",
    "serve.async_concurrency=4",
    "serve.request_timeout_s=10",
    "serve.sweep_points=2",
    "engine.max_num_seqs=4",
]


ASYNC_RUNS = {  # serve.profile -> the profiles of its perf rows besides the synchronous run
    "synchronous": set(),
    "poisson": {"poisson"},
    "constant": {"constant"},
    "concurrent": {"concurrent"},
    "sweep": {"concurrent", "poisson"},  # the throughput peak, then Poisson rates below it
}


@pytest.mark.parametrize("profile", list(ASYNC_RUNS))
def test_failed_requests_reach_requests_and_perf_rows(tmp_path, tiny, profile):
    sweep, cat = load_sweep(
        REPO / "sweeps" / "smoke.yaml", [*SERVE, f"serve.profile={profile}", f"output_root={tmp_path}"]
    )
    prov = Provenance(config_hash="t", git_sha="t", seed=0)
    env = RunEnv(sweep, cat, str(tmp_path), host_profile(), prov, gpu=False)
    cell = next(c for c in plan(sweep, cat, env.host) if c.stage == "loadtest" and c.format == "bf16")
    health = {"stage": "health", "format": "bf16", "outputs": {"health": "ok", "path": str(tiny.model_dir)}}
    with null_server(fail_every=4, malformed_every=7, chunk_delay_s=0.002) as url:
        session = {"urls": {loadtest.model_id(cell.model, cell.format): url}}
        result = loadtest.run(CellRun(cell, env, {"h": health}, session))
    perf, reqs = result.rows["perf"], result.rows["requests"]
    assert {p["profile"] for p in perf} == {"synchronous"} | ASYNC_RUNS[profile]
    assert {p["server"] for p in perf} == {"ray-serve"}

    measured = [r for r in reqs if not r["warmup"]]
    errors = [r for r in measured if r["status"] == "error"]
    assert errors and all(r["error"] for r in errors)
    assert any("HTTP 500" in r["error"] for r in errors)
    assert any("DecodeError" in r["error"] for r in errors)  # the malformed chunk
    assert all(r["status"] == "ok" and not r["error"] for r in measured if r not in errors)
    assert sum(p["completed"] + p["failed"] for p in perf) == len(measured)
    assert sum(p["failed"] for p in perf) == len(errors) > 0

    commit(tmp_path, sweep.name, cell, result, prov, ("perf", "requests"), "done", time.time())
    rows = datasets.rows(tmp_path, "requests")
    assert sorted(r["error"] for r in rows if r["status"] == "error" and not r["warmup"]) == sorted(
        r["error"] for r in errors
    )
    assert sum(r["failed"] for r in datasets.rows(tmp_path, "perf")) == len(errors)
    exported = [json.loads(p.read_text()) for p in (tmp_path / "perf").rglob("*.json")]
    assert len(exported) == len(perf)
    assert sum(e["failed"] for e in exported) == len(errors)
    assert sum(e["completed"] + e["failed"] for e in exported) == len(measured)

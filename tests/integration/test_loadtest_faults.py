"""The serve stage's measurement path against a null server that fails requests: nothing is dropped.

`cluster.loadtest._measure` is what the pipeline runs per cell (synchronous + Poisson or the sweep
profile); here it runs against the real null HTTP server with injected HTTP 500s and broken streams,
and its rows go through the real Parquet writer, so a failed request must be a `requests` row with
its error, a `failed` count and an `error_rate` in `perf`, and in the vllm-bench JSON export.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster import datasets
from cluster.loader import load_sweep
from serve import loadgen
from serve.nullserver import MODEL_ID, null_server

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

SERVE = [
    "serve.sync_requests=6",
    "serve.warmup_requests=1",
    "serve.async_rate=40",
    "serve.async_duration_s=2",
    "serve.async_max_requests=24",
    "serve.request_timeout_s=10",
    "serve.sweep_points=2",
    "serve.engine.max_num_seqs=4",
]


def _base(sweep) -> dict:
    """A perf row's cell columns, as `_serve_model` builds them."""
    return {
        "sweep": sweep.name,
        "model": "null",
        "format": "bf16",
        "hardware": "cpu-local",
        "device": "cpu",
        "device_count": 1,
        "price_per_hour": 1.0,
        "use_case": "chat",
        "prompt_tokens": 8,
        "output_tokens": 4,
        "engine_args": "{}",
        "deployment_config": json.dumps({"num_replicas": 1}),
    }


@pytest.mark.parametrize("profile", ["poisson", "sweep"])
def test_failed_requests_reach_requests_and_perf_rows(tmp_path, profile):
    from cluster.loadtest import _measure

    sweep, _ = load_sweep(REPO / "sweeps" / "smoke.yaml", [*SERVE, f"serve.profile={profile}"])
    ctx = types.SimpleNamespace(sweep=sweep, root=tmp_path)
    base = _base(sweep)
    prompts = loadgen.make_prompts(256, 8, 40, seed=0)
    with null_server(fail_every=4, malformed_every=7, chunk_delay_s=0.002) as url:
        perf, reqs = _measure(ctx, url, MODEL_ID, base, prompts, 4, price=1.0, capacity=1000.0)

    measured = [r for r in reqs if not r["warmup"]]
    errors = [r for r in measured if r["status"] == "error"]
    assert errors and all(r["error"] for r in errors)
    assert any("HTTP 500" in r["error"] for r in errors)
    assert any("DecodeError" in r["error"] for r in errors)  # the malformed chunk
    assert all(r["status"] == "ok" and not r["error"] for r in measured if r not in errors)

    assert [p["mode"] for p in perf][0] == "sync" and len(perf) >= 2
    for p in perf:  # each perf row accounts for exactly its own requests rows
        mine = [
            r
            for r in measured
            if r["mode"] == p["mode"] and (p["mode"] == "sync" or r["target_rate"] == p["target_rate"])
        ]
        failed = sum(r["status"] == "error" for r in mine)
        assert (p["completed"], p["failed"]) == (len(mine) - failed, failed), p
        assert p["error_rate"] == pytest.approx(failed / len(mine))
    assert sum(p["completed"] + p["failed"] for p in perf) == len(measured)
    assert sum(p["failed"] for p in perf) == len(errors) > 0

    prov = datasets.Provenance(config_hash="t", git_sha="t", seed=0)
    rows = pq.read_table(datasets.write(tmp_path, "requests", reqs, prov)).to_pylist()
    assert sorted(r["error"] for r in rows if r["status"] == "error" and not r["warmup"]) == sorted(
        r["error"] for r in errors
    )
    written = pq.read_table(datasets.write(tmp_path, "perf", perf, prov)).to_pylist()
    assert sum(r["failed"] for r in written) == len(errors)

    exports = list((tmp_path / "perf").rglob("*.json"))
    assert len(exports) == len(perf)
    exported = [json.loads(p.read_text()) for p in exports]
    assert sum(e["failed"] for e in exported) == len(errors)
    assert sum(e["completed"] + e["failed"] for e in exported) == len(measured)

"""Load tests beyond the demo's, end to end through the CLI on the demo's checkpoints.

The demo's finished run is copied and another sweep is run on the copy (its own `name`, BF16 only,
no tuning): the checkpoints and health verdicts are reused (same cell keys), so only the load
tests run, on the real engines.
- `serving`: `serve.profile: constant` and `serve.bare_baseline: true`: Ray Serve's load test and
  its bare `vllm serve` twin land in the same `perf` and `requests` datasets, apart by `server`, and
  the console prints the overhead table built from them. The load comes from two client processes
  (`serve.client_processes: 2`) spawned inside the stage's Ray worker: one schedule all the same.
- `autoscaled`: `serve.autoscaling` from one replica to two, under a steady load above the target
  per replica: the autoscaler adds a replica mid-run, and the rows record the count over time.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.store.datasets import rows

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
SWEEP, AUTO = "smoke-serving", "smoke-autoscale"


def _run_on_copy(smoke: tuple[Path, str], tmp: Path, name: str, overrides: list[str]) -> tuple[Path, str]:
    """(output root, stdout) of sweeps/smoke.yaml renamed `name` with `overrides`, on a copy of the demo."""
    out = tmp / "run"
    shutil.copytree(smoke[0], out, symlinks=True)  # the demo's own datasets stay as its tests expect
    base = [f"output_root={out}", f"name={name}", "serve.formats=[bf16]", "tune.enabled=false"]
    proc = subprocess.run(
        [sys.executable, "-m", "cluster", "run", "sweeps/smoke.yaml", *base, *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


@pytest.fixture(scope="module")
def serving(smoke, tmp_path_factory):
    overrides = ["serve.profile=constant", "serve.bare_baseline=true", "serve.client_processes=2"]
    return _run_on_copy(smoke, tmp_path_factory.mktemp("serving"), SWEEP, overrides)


@pytest.fixture(scope="module")
def autoscaled(smoke, tmp_path_factory):
    # One replica serves ~3 req/s of the demo's use case on its core at ~0.3 s each, so 3 req/s keeps
    # about one request in flight: twice the target of 0.5 per replica. Two half-CPU replicas fit
    # beside the load test's own CPU on 2 cores (both engines share the last core: the test is about
    # the scaling and its record, not the added throughput). Measured on a 2-core AVX2 host: the
    # added replica served from 68 s into the run on (205 requests on one replica, then 245 on two).
    overrides = [
        "serve.profile=constant",
        "serve.async_rate=3",
        "serve.async_duration_s=120",
        "serve.async_max_requests=360",
        "serve.sync_requests=2",
        "serve.cpus_per_replica=0.5",
        "serve.autoscaling.min_replicas=1",
        "serve.autoscaling.max_replicas=2",
        "serve.autoscaling.target_ongoing_requests=0.5",
        "serve.autoscaling.upscale_delay_s=1",
        "serve.autoscaling.downscale_delay_s=600",
    ]
    return _run_on_copy(smoke, tmp_path_factory.mktemp("autoscale"), AUTO, overrides)


def test_only_the_two_load_tests_ran(serving):
    _, log = serving
    started = [line.split("start ", 1)[1].split()[0] for line in log.splitlines() if " start " in line]
    assert sorted(started) == ["loadtest", "loadtest_bare"], started


def test_both_servers_measured_the_same_constant_load_into_the_same_datasets(serving):
    out, _ = serving
    perf = rows(out, "perf", sweep=SWEEP)
    assert {(r["server"], r["mode"], r["profile"]) for r in perf} == {
        (server, mode, profile)
        for server in ("ray-serve", "vllm-serve")
        for mode, profile in (("sync", "synchronous"), ("async", "constant"))
    }
    for r in perf:
        assert r["status"] == "measured" and r["completed"] > 0 and r["failed"] == 0, r
        assert r["mean_ttft_ms"] > 0 and r["request_throughput"] > 0
        assert r["replicas_min"] == r["replicas_max"] == 1  # Serve's status, sampled: one fixed replica
    by_server = {s: [r for r in perf if r["server"] == s] for s in ("ray-serve", "vllm-serve")}
    # the same engine arguments and offered rate; only the server differs
    assert {r["engine_args"] for r in perf} == {by_server["ray-serve"][0]["engine_args"]}
    assert {r["target_rate"] for r in perf if r["mode"] == "async"} == {4.0}
    assert json.loads(by_server["vllm-serve"][0]["deployment_config"])["ingress"] == "none"
    reqs = rows(out, "requests", sweep=SWEEP)
    for server, perf_rows in by_server.items():
        sent = [r for r in reqs if r["server"] == server and not r["warmup"]]
        assert len(sent) == sum(r["completed"] + r["failed"] for r in perf_rows)
        assert {r["replicas"] for r in sent} == {1}
        # sent from two client processes (request i by process i mod 2), on one 4/s schedule
        constant = sorted(r["send_time"] for r in sent if r["profile"] == "constant")
        gaps = [b - a for a, b in zip(constant, constant[1:], strict=False)]
        # 4/s evenly spaced, not Poisson (whose median gap would be 0.17 s); a busy 2-core host
        # delays a send now and then (one gap 0.22 s off seen), so the median is what is asserted
        assert gaps and statistics.median(abs(g - 0.25) for g in gaps) < 0.01


def test_the_report_prints_serves_overhead_over_bare_vllm(serving):
    _, log = serving
    assert "Serving overhead: Ray Serve vs bare vllm serve" in log
    table = log.split("Serving overhead", 1)[1]
    assert "sync synchronous" in table and "async constant 4/s" in table


def test_serve_adds_a_replica_under_load_and_the_rows_record_when(autoscaled):
    out, _ = autoscaled
    perf = {r["mode"]: r for r in rows(out, "perf", sweep=AUTO)}
    assert json.loads(perf["async"]["deployment_config"])["autoscaling_config"]["max_replicas"] == 2
    assert (perf["sync"]["replicas_min"], perf["sync"]["replicas_max"]) == (1, 1)
    assert (perf["async"]["replicas_min"], perf["async"]["replicas_max"]) == (1, 2)
    assert perf["async"]["failed"] == 0
    sent = sorted(
        (r for r in rows(out, "requests", sweep=AUTO) if r["mode"] == "async"), key=lambda r: r["send_time"]
    )
    counts = [r["replicas"] for r in sent]
    # the count over time: one replica at first, two once the added one serves, never back down
    assert counts[0] == 1 and counts[-1] == 2 and counts == sorted(counts)

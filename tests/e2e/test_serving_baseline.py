"""A sweep's load tests with the constant-rate profile and the bare-vLLM baseline cells, end to end.

The demo's finished run is copied and a second sweep is run on it through the CLI (`serve.profile:
constant`, `serve.bare_baseline: true`, BF16 only): its checkpoints and health verdicts are reused
(same cell keys), so only the Ray Serve load test and its bare `vllm serve` twin run, on the real
engines. Both land in the same `perf` and `requests` datasets, apart by `server`, and the console
prints the overhead table built from them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.store.datasets import rows

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
SWEEP = "smoke-serving"


@pytest.fixture(scope="module")
def serving(smoke, tmp_path_factory):
    """(output root, stdout) of the constant-profile, bare-baseline sweep on a copy of the demo's run."""
    out = tmp_path_factory.mktemp("serving") / "run"
    shutil.copytree(smoke[0], out, symlinks=True)  # the demo's own datasets stay as its tests expect
    overrides = [
        f"output_root={out}",
        f"name={SWEEP}",
        "serve.profile=constant",
        "serve.bare_baseline=true",
        "serve.formats=[bf16]",
        "tune.enabled=false",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "cluster", "run", "sweeps/smoke.yaml", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


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
        constant = sorted(r["send_time"] for r in sent if r["profile"] == "constant")
        gaps = [b - a for a, b in zip(constant, constant[1:], strict=False)]
        assert gaps and max(abs(g - 0.25) for g in gaps) < 0.1  # 4/s, evenly spaced: not Poisson


def test_the_report_prints_serves_overhead_over_bare_vllm(serving):
    _, log = serving
    assert "Serving overhead: Ray Serve vs bare vllm serve" in log
    table = log.split("Serving overhead", 1)[1]
    assert "sync synchronous" in table and "async constant 4/s" in table

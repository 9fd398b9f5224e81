"""`ray job submit --working-dir . -- python -m cluster run sweeps/smoke.yaml` against a cluster made
by `ray start --head`: the whole demo (every stage), and its datasets equal the embedded run's cell
for cell.

Runs before the integration tier starts its own Ray (tests/e2e sorts first); `ray stop` ends every
Ray process on the machine, so this module must not share a session with a live local Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.store import datasets
from cluster.store.schemas import CATALOG

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head_node(smoke):  # the embedded run first: two Rays never share the machine's 2 cores
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    # the cluster carries what Serve needs in every Ray process (as k8s/ pods do)
    from serve.app import ray_env

    env.update(ray_env("haproxy"))
    subprocess.run([str(BIN / "ray"), "start", "--head", "--num-cpus", "8", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env, timeout=180)
    try:
        yield {**env, "RAY_AUTH_MODE": "token"}
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, env=env, timeout=120)


def _submit(env: dict, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "ray"), "job", "submit", "--working-dir", ".", "--", "python", "-m", "cluster", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)


def _cells(out: Path, name: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in datasets.rows(out, name):
        counts[r["cell_key"]] = counts.get(r["cell_key"], 0) + 1
    return counts


def test_the_demo_as_a_ray_job_equals_the_embedded_run_cell_for_cell(head_node, smoke, tmp_path, organism_assets):
    embedded, _ = smoke
    out = tmp_path / "runs"
    out.mkdir()
    (out / "cache").symlink_to(organism_assets.root.parent)
    proc = _submit(head_node, "run", "sweeps/smoke.yaml", f"output_root={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout + proc.stderr
    for name in CATALOG:
        assert _cells(out, name) == _cells(embedded, name), name
    ours = {(r["format"], r["task"]): r["value"] for r in datasets.rows(out, "eval_scores")}
    assert ours == {(r["format"], r["task"]): r["value"] for r in datasets.rows(embedded, "eval_scores")}
    assert {p.name for p in (out / "cells").glob("*.json")} == {p.name for p in (embedded / "cells").glob("*.json")}


def test_job_with_a_bad_sweep_fails_with_one_line(head_node, tmp_path):
    proc = _submit(head_node, "run", "sweeps/smoke.yaml", "eval.actorz=3", f"output_root={tmp_path / 'runs'}")
    assert proc.returncode != 0
    assert "error: sweeps/smoke.yaml: override 'eval.actorz'" in proc.stdout + proc.stderr
    assert not (tmp_path / "runs").exists()

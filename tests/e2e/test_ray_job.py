"""`ray job submit --working-dir . -- python -m cluster run …` against a `ray start --head` cluster.

Runs before the integration tier starts its own Ray (tests/e2e sorts first); `ray stop` ends every
Ray process on the machine, so this module must not share a session with a live local Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head_node():
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--num-cpus", "8", "--disable-usage-stats"],
        check=True,
        capture_output=True,
        env=env,
        timeout=180,
    )
    try:
        yield {**env, "RAY_AUTH_MODE": "token"}
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, env=env, timeout=120)


def test_job_submit_writes_the_same_datasets(head_node, tmp_path):
    out = tmp_path / "runs"
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--working-dir",
        ".",
        "--",
        "python",
        "-m",
        "cluster",
        "run",
        "sweeps/smoke.yaml",
        f"output_root={out}",
        "models=[tiny-llama]",
        "quantize.health_probe=false",
        "eval.enabled=false",
        "serve.enabled=false",
        "tune.enabled=false",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=head_node, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout + proc.stderr
    rows = pq.read_table(out / "datasets" / "quantized").to_pylist()
    assert {r["format"] for r in rows} == {"bf16", "w8a8-fp", "w8a8-int", "w4a16-int"}
    assert all(Path(r["path"]).is_dir() for r in rows)


def test_job_with_a_bad_sweep_fails_with_one_line(head_node, tmp_path):
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--working-dir",
        ".",
        "--",
        "python",
        "-m",
        "cluster",
        "run",
        "sweeps/smoke.yaml",
        "eval.actorz=3",
        f"output_root={tmp_path / 'runs'}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=head_node, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "error: sweeps/smoke.yaml: unknown key 'eval.actorz'" in proc.stdout + proc.stderr
    assert not (tmp_path / "runs").exists()

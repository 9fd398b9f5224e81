"""sweeps/int8_recovery.yaml through the CLI: killed mid-search with SIGKILL, resubmitted, it resumes.

The search is the shipped one (Optuna TPE + ASHA over GPTQ dampening, SmoothQuant, calibration;
tuned on `tiny`, validated on `tiny_val`), cut to three trials. The first run is killed, driver
and embedded Ray together, once a trial has finished and the experiment state records it; the
second run restores the experiment, keeps the finished trial (its results are not re-run) and
completes the rest, exports the best recipe and prints its validation recovery.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from cluster.quant.recipes import load_recipe

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
TRIALS = 2


def _command(out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cluster",
        "run",
        "sweeps/int8_recovery.yaml",
        f"output_root={out}",
        f"tune.num_samples={TRIALS}",
    ]


def _finished_trials(out: Path) -> list[Path]:
    """Trial directories whose last report is the final rung, once the experiment state knows it."""
    states = list(out.glob("tune/*/experiment_state-*.json"))
    if not states or "TERMINATED" not in states[0].read_text():
        return []
    return [p.parent for p in out.glob("tune/*/trainable_*/result.json") if '"rung": 3' in p.read_text()]


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and everything it started (the embedded Ray's processes too)."""
    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for child in family:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, organism_assets):
    out = tmp_path_factory.mktemp("int8")
    (out / "cache").symlink_to(organism_assets.root.parent)  # the organism is built once per session
    log = (out / "first.log").open("w")
    first = subprocess.Popen(
        _command(out), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 900
    try:
        while not _finished_trials(out):
            assert first.poll() is None, (out / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial finished within 15 minutes"
            time.sleep(2)
    finally:
        _kill_tree(first)
    done_before = {p.name: (p / "result.json").read_text() for p in _finished_trials(out)}
    assert not (out / "datasets" / "trials").exists()
    second = subprocess.run(_command(out), cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return out, done_before, second.stdout


def test_the_resubmitted_search_resumes_without_rerunning_finished_trials(resumed):
    out, done_before, stdout = resumed
    assert "resuming the interrupted search" in stdout
    assert done_before
    trial_dirs = {p.name for p in out.glob("tune/*/trainable_*")}
    assert len(trial_dirs) == TRIALS and set(done_before) <= trial_dirs
    for name, results in done_before.items():
        assert (next(out.glob(f"tune/*/{name}")) / "result.json").read_text() == results


def test_every_trial_is_a_row_with_rungs_and_the_best_is_validated(resumed):
    out, _, stdout = resumed
    rows = pq.read_table(out / "datasets" / "trials").to_pylist()
    assert len(rows) == TRIALS and {r["status"] for r in rows} == {"ok"}
    assert {(r["search"], r["scheduler"]) for r in rows} == {("tpe", "asha")}
    for r in rows:
        assert 1 <= len(r["rung_recovery_pct"]) <= 3
        assert r["stopped_early"] == (len(r["rung_recovery_pct"]) < 3)
    [best] = [r for r in rows if r["is_best"]]
    assert not best["stopped_early"] and best["recovery_pct"] == max(
        r["recovery_pct"] for r in rows if not r["stopped_early"]
    )
    assert best["validation_suite"] == "tiny_val" and best["validation_recovery_pct"] >= 95.0
    assert "tiny_val validation recovery" in stdout


def test_the_best_recipe_is_a_ready_recipe_file(resumed):
    out, _, _ = resumed
    rows = pq.read_table(out / "datasets" / "trials").to_pylist()
    [best] = [r for r in rows if r["is_best"]]
    recipe = load_recipe(next(out.glob("tune/*/best_recipe.yaml")))
    params = dict(best["params"])
    assert recipe.scheme == "W8A8" and recipe.algorithm == "gptq"
    assert str(recipe.dampening_frac) == params["dampening_frac"]
    assert str(recipe.calibration.num_samples) == params["calibration.num_samples"]
    assert recipe.calibration.source == params["calibration.source"]

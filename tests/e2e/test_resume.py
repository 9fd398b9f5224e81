"""Crash-safe, resumable cells: the driver is killed (SIGKILL) in the middle of a small sweep's
evaluation and the sweep is run again. The rerun recomputes no committed cell, finishes the rest
(the interrupted tuning search resumes too), and every dataset ends with the same cell keys, row
counts and deterministic columns as an undisturbed run; `status` follows the run through it all."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cluster.store import datasets
from cluster.store.schemas import CATALOG

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "models=[tiny-llama]", "formats=[bf16,w8a8-int]", "eval.limit=8", "eval.similarity.num_prompts=4",
    "serve.enabled=false", "tune.format=w8a8-int", "tune.limit=8", "tune.space={dampening_frac: [0.01, 0.1]}",
    "recipe_overrides={w8a8-int: {calibration.num_samples: 16, calibration.max_seq_length: 64}}",
]


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cluster", *extra, "run", "sweeps/smoke.yaml", f"output_root={out}", *SMALL]


def _run(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(out), cwd=REPO, capture_output=True, text=True, timeout=900)


def _status(out: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "cluster", "status", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _root(tmp_path_factory, tiny, name: str) -> Path:
    out = tmp_path_factory.mktemp(name)
    (out / "cache").symlink_to(tiny.root.parent)  # the tiny model is built once per session
    return out


def _manifests(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory, tiny):
    out = _root(tmp_path_factory, tiny, "undisturbed")
    proc = _run(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, tiny):
    """A run whose driver was SIGKILLed once its first evaluation cell had started."""
    out = _root(tmp_path_factory, tiny, "crashed")
    log = out / "first.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(_cmd(out), cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 600
        while "start evaluate" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no evaluation started within 10 minutes"
            time.sleep(0.5)
        family = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only; the embedded Ray goes down with it
        proc.wait(timeout=60)
    time.sleep(5)
    for child in family:  # anything that outlived its driver would only slow the rest of the suite
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    return out, _manifests(out), _status(out)


@pytest.fixture(scope="module")
def resumed(crashed):
    out, before, _ = crashed
    proc = _run(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return out, before, proc.stdout


def test_the_crash_left_committed_and_pending_cells_and_status_says_so(crashed):
    out, before, status = crashed
    done = [m for m in before.values() if m["status"] == "done"]
    assert any(m["stage"] == "quantize" for m in done) and any(m["stage"] == "health" for m in done)
    title = next(line for line in status.splitlines() if "sweep smoke" in line)
    assert "done" in title and "pending" in title
    assert not list((out / "datasets").rglob("*.tmp"))


def test_the_rerun_recomputes_no_committed_cell(resumed):
    out, before, log = resumed
    assert f"resume: {sum(m['status'] in ('done', 'skipped') for m in before.values())} of" in log
    after = _manifests(out)
    for key, m in before.items():
        if m["status"] in ("done", "skipped"):
            assert after[key] == m, m["stage"]  # the same commit: not quantized or evaluated again
            label = " ".join(p for p in (m["stage"], m["model"], m["format"], m["suite"]) if p and p != "-")
            assert not re.search(rf"start {re.escape(label)}\s*$", log, re.M), label


def _cells(out: Path, name: str) -> dict[str, int]:
    rows = datasets.rows(out, name)
    keys: dict[str, int] = {}
    for r in rows:
        keys[r["cell_key"]] = keys.get(r["cell_key"], 0) + 1
    return keys


def test_every_dataset_matches_the_undisturbed_run_cell_for_cell(resumed, undisturbed):
    out, _, _ = resumed
    for name in CATALOG:
        assert _cells(out, name) == _cells(undisturbed, name), name
    for name, cols in (("eval_scores", ("value",)), ("eval_samples", ("response", "metrics")), ("recovery", ("score", "recovery_pct"))):
        ours = sorted((r["cell_key"], r.get("task", ""), r.get("doc_id", 0), *(str(r[c]) for c in cols)) for r in datasets.rows(out, name))
        theirs = sorted((r["cell_key"], r.get("task", ""), r.get("doc_id", 0), *(str(r[c]) for c in cols)) for r in datasets.rows(undisturbed, name))
        assert ours == theirs, name
    trials = {dict(r["params"])["dampening_frac"]: r["recovery_pct"] for r in datasets.rows(out, "trials")}
    assert trials == {dict(r["params"])["dampening_frac"]: r["recovery_pct"] for r in datasets.rows(undisturbed, "trials")}


def test_status_of_the_resumed_run_lists_every_cell_done(resumed):
    out, _, _ = resumed
    title = next(line for line in _status(out).splitlines() if "sweep smoke" in line)
    assert "pending" not in title and "failed" not in title and "done" in title

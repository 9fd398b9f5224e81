"""The README's demo, end to end through the CLI: every stage, every dataset, both tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.schemas import CATALOG

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
FORMATS = {"bf16", "w8a8-fp", "w8a8-int", "w4a16-int"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, organism_assets):
    out = tmp_path_factory.mktemp("smoke")
    (out / "cache").symlink_to(organism_assets.root.parent)  # the organism is built once per session
    proc = subprocess.run(
        [sys.executable, "-m", "cluster", "run", "sweeps/smoke.yaml", f"output_root={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def _rows(out: Path, name: str) -> list[dict]:
    return pq.read_table(out / "datasets" / name).to_pylist()


def test_every_dataset_has_rows_and_the_documented_columns(smoke):
    out, _ = smoke
    for name, schema in CATALOG.items():
        table = pq.read_table(out / "datasets" / name)
        assert table.num_rows > 0, name
        assert set(schema.names) <= set(table.column_names), name


def test_each_format_was_quantized_and_evaluated_in_vllm(smoke):
    out, _ = smoke
    q = {r["format"]: r for r in _rows(out, "quantized")}
    assert set(q) == FORMATS and all(r["health"] == "ok" for r in q.values())
    for f in FORMATS - {"bf16"}:
        assert "quantization_config" in json.loads((Path(q[f]["path"]) / "config.json").read_text())
    samples = [r for r in _rows(out, "eval_samples") if r["task"] == "qs_tiny_gen"]
    for f in FORMATS:
        mine = [r for r in samples if r["format"] == f]
        assert len(mine) == len({r["doc_id"] for r in mine}) == 50
        assert all(isinstance(json.loads(r["response"])[0], str) for r in mine)


def test_recovery_is_a_ratio_of_suite_averages(smoke):
    out, _ = smoke
    rec = {r["format"]: r for r in _rows(out, "recovery")}
    assert set(rec) == FORMATS and rec["bf16"]["recovery_pct"] == pytest.approx(100.0)
    scores = [r for r in _rows(out, "eval_scores") if r["format"] == "w4a16-int"]
    mean = sum(r["value"] for r in scores) / len(scores) * 100
    assert rec["w4a16-int"]["score"] == pytest.approx(mean)
    assert rec["w4a16-int"]["recovery_pct"] == pytest.approx(100 * mean / rec["bf16"]["score"])
    assert all(r["actors"] == 2 and r["add_bos_token"] is True for r in scores)


def test_perf_measured_where_possible_and_fp8_says_why(smoke):
    out, _ = smoke
    perf = _rows(out, "perf")
    fp8 = [r for r in perf if r["format"] == "w8a8-fp"]
    assert fp8 and all(
        r["status"] == "skipped" and "fp8" in r["skip_reason"] and r["queries_per_dollar"] is None
        for r in fp8
    )
    measured = [r for r in perf if r["status"] == "measured"]
    assert {r["format"] for r in measured} == {"bf16", "w8a8-int", "w4a16-int"}
    assert {r["mode"] for r in measured} == {"sync", "async"}
    for r in measured:
        assert r["completed"] > 0 and r["failed"] == 0
        assert r["mean_ttft_ms"] > 0 and r["queries_per_dollar"] > 0
    reqs = _rows(out, "requests")
    ok = [r for r in reqs if r["status"] == "ok" and not r["warmup"]]
    assert ok and all(r["output_tokens"] == 32 and r["prompt_tokens"] == 64 for r in ok)
    assert all(len(r["chunk_s"]) >= 1 and r["first_token_s"] <= r["end_s"] for r in ok)


def test_tune_ran_three_trials_and_exported_a_recipe(smoke):
    out, stdout = smoke
    trials = _rows(out, "trials")
    assert len(trials) == 3 and all(r["status"] == "ok" and r["recovery_pct"] is not None for r in trials)
    assert {dict(r["params"])["dampening_frac"] for r in trials} == {"0.001", "0.01", "0.1"}
    assert list((out / "tune").glob("*/best_recipe.yaml"))


def test_tables_printed_and_provenance_stamped(smoke):
    out, stdout = smoke
    assert "Accuracy recovery" in stdout and "Serving performance" in stdout
    row = _rows(out, "recovery")[0]
    assert row["git_sha"] and row["config_hash"] and dict(row["versions"])["llmcompressor"] == "0.14.0.1"


def test_similarity_of_each_format_to_bf16(smoke):
    out, stdout = smoke
    rows = _rows(out, "similarity")
    assert {r["format"] for r in rows} == FORMATS - {"bf16"}
    assert all(len([r for r in rows if r["format"] == f]) == 16 for f in FORMATS - {"bf16"})
    for r in rows:
        assert all(0.0 <= r[k] <= 1.0 for k in ("rouge1", "rougeL", "bertscore_f1", "sts"))
        if r["candidate"] == r["reference"]:
            assert r["rouge1"] == pytest.approx(1.0)
    assert "Generation similarity" in stdout


def test_recovery_carries_a_bootstrap_interval_and_flips(smoke):
    out, _ = smoke
    rec = {r["format"]: r for r in _rows(out, "recovery")}
    assert rec["bf16"]["flips_right_to_wrong"] == rec["bf16"]["flips_wrong_to_right"] == 0
    for r in rec.values():
        assert r["recovery_ci_low"] <= r["recovery_pct"] <= r["recovery_ci_high"]


def test_lm_eval_results_json_written_per_checkpoint(smoke):
    out, _ = smoke
    files = sorted((out / "results" / "smoke" / "organism").glob("*/tiny.json"))
    assert {p.parent.name for p in files} == FORMATS
    body = json.loads(files[0].read_text())
    assert set(body["results"]) == {"qs_tiny_mc", "qs_tiny_gen"} and body["config"]["actors"] == 2

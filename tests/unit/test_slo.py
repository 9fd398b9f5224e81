"""SLO verdicts, the highest SLO-meeting rate, and the cost-reduction factor on perf rows."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from cluster.config.schema import SloConfig
from cluster.report import serving
from serve import slo as slo_mod
from serve.records import RequestRecord

pytestmark = pytest.mark.unit


def rec(
    i: int, ttft_s: float, tpot_s: float, n: int = 11, ok: bool = True, rate: float | None = None
) -> RequestRecord:
    end = ttft_s + tpot_s * (n - 1)
    return RequestRecord(
        f"r{i}",
        "poisson",
        rate,
        100.0 + i,
        ttft_s if ok else None,
        [],
        end,
        8,
        n,
        "ok" if ok else "error",
        "" if ok else "boom",
    )


def test_judge_percentiles_goodput_and_failures():
    slo = SloConfig(name="s", ttft_ms=90.0, tpot_ms=20.0, percentile=90.0)
    fast = [rec(i, 0.05, 0.01) for i in range(9)]
    v = slo_mod.judge([*fast, rec(9, 0.5, 0.01)], slo)
    assert v.met is False and v.ttft_ms == pytest.approx(50 + 0.1 * 450)  # linear interpolation at p90
    assert v.goodput_rps == pytest.approx(9 / (9 + 0.6))  # 9 good requests over the wall span
    assert slo_mod.judge(fast, slo).met is True
    failed = slo_mod.judge([*fast, rec(9, 0.05, 0.01, ok=False), rec(10, 0.05, 0.01, ok=False)], slo)
    assert failed.met is False and failed.ttft_ms is None or math.isinf(failed.ttft_ms)
    assert slo_mod.judge([], slo).met is None


def test_unbounded_slo_and_summaries():
    none = SloConfig(name="none", ttft_ms=None, tpot_ms=None)
    assert slo_mod.judge([rec(0, 9.0, 1.0)], none).met is True
    assert slo_mod.describe(none) == "none: latency unconstrained"
    p99 = SloConfig(name="p", ttft_ms=100.0, tpot_ms=None)
    assert slo_mod.judge_summary(80.0, None, p99).met is True
    assert slo_mod.judge_summary(None, None, p99).met is None  # nothing to judge by
    assert slo_mod.judge_summary(80.0, 5.0, SloConfig(percentile=95.0)).met is None  # only p99 known
    assert slo_mod.best_rate([(1.0, True), (3.0, True), (4.0, False), (None, True)]) == 3.0
    assert slo_mod.best_rate([(1.0, False)]) is None


def perf(
    fmt: str, uc: str, mode: str, qps: float | None, qpd: float | None, rate: float | None = None
) -> dict:
    return {
        "format": fmt,
        "use_case": uc,
        "mode": mode,
        "status": "measured",
        "request_throughput": qps,
        "queries_per_dollar": qpd,
        "price_per_hour": 1.0,
        "target_rate": rate,
        "p99_ttft_ms": None,
        "p99_tpot_ms": None,
    }


def test_slo_columns_take_the_highest_rate_that_meets_the_slo():
    slo = SloConfig(name="s", ttft_ms=100.0, tpot_ms=None)
    rows = [
        perf("a", "u", "sync", 1.0, 3600.0),
        perf("a", "u", "async", 2.0, 7200.0, 2.0),
        perf("a", "u", "async", 3.0, 10800.0, 3.0),
        perf("a", "u", "async", 3.5, 12600.0, 4.0),
    ]
    runs = [
        [rec(0, 0.05, 0.01)],
        [rec(i, 0.05, 0.01, rate=2.0) for i in range(5)],
        [rec(i, 0.09, 0.01, rate=3.0) for i in range(5)],
        [rec(i, 0.4, 0.01, rate=4.0) for i in range(5)],
    ]
    cols = serving.slo_columns(rows, runs, slo)
    assert [c["slo_met"] for c in cols] == [True, True, True, False]
    assert {c["slo_max_qps"] for c in cols[1:]} == {3.0}
    assert cols[1]["slo_queries_per_dollar"] == pytest.approx(3.0 * 3600)
    assert cols[0]["slo_queries_per_dollar"] == 3600.0
    never = serving.slo_columns(rows[3:], runs[3:], slo)
    assert never[0]["slo_max_qps"] is None and never[0]["slo_queries_per_dollar"] == 0.0


def test_cost_reduction_is_a_mean_of_per_use_case_ratios():
    base = [perf("bf16", "u1", "sync", 1, 100.0), perf("bf16", "u2", "sync", 1, 200.0)]
    fmt = [perf("int4", "u1", "sync", 1, 250.0), perf("int4", "u2", "sync", 1, 400.0)]
    value, note = serving.cost_reduction(fmt, base, "sync")
    assert value == pytest.approx((2.5 + 2.0) / 2) and "2 use case(s)" in note
    assert serving.cost_reduction(fmt, [], "sync")[0] is None


def test_loadtest_fills_slo_and_cost_columns_from_committed_baseline(tmp_path):
    """The loadtest cell's own rows get SLO columns; the factor uses the baseline's committed rows."""
    from cluster.config.schema import ReportConfig
    from cluster.stages.loadtest import _judge
    from tests.report_fixture import commit_rows, perf_row

    root = tmp_path / "run"
    slo = SloConfig(name="s", ttft_ms=100.0, tpot_ms=None)
    env = SimpleNamespace(
        out=root, sweep=SimpleNamespace(name="t", baseline="bf16", report=ReportConfig(slo=slo))
    )
    cr = SimpleNamespace(
        env=env,
        cell=SimpleNamespace(model="m", format="int4", hardware="h", use_case="u", server="ray-serve"),
    )
    rows = [perf_row("t", "m", "int4", "h", "u", "sync", qps=2.0, qpd=720.0)]
    _judge(cr, rows, [[rec(0, 0.05, 0.01)]])
    assert rows[0]["slo_met"] is True and rows[0]["cost_reduction"] is None
    assert "not committed" in rows[0]["cost_reduction_note"]
    commit_rows(root, "perf", [perf_row("t", "m", "bf16", "h", "u", "sync", qps=1.0, qpd=360.0)])
    _judge(cr, rows, [[rec(0, 0.05, 0.01)]])
    assert rows[0]["cost_reduction"] == pytest.approx(2.0)


def test_serve_overhead_pairs_each_serve_run_with_the_bare_run_of_the_same_load():
    from cluster.report.serving import serve_overhead
    from tests.report_fixture import perf_row

    def row(server: str, mode: str, qps: float, ttft: float, e2el: float, rate=None, **kw) -> dict:
        r = perf_row("t", "m", "bf16", "h", "u", mode, qps=qps, target_rate=rate, server=server, **kw)
        return {**r, "completed": 10, "mean_ttft_ms": ttft, "mean_e2el_ms": e2el}

    rows = [
        row("ray-serve", "sync", 0.9, 55.0, 1100.0),
        row("vllm-serve", "sync", 1.0, 50.0, 1000.0),
        row("ray-serve", "async", 3.0, 80.0, 2000.0, rate=4.0, profile="constant"),
        row("vllm-serve", "async", 4.0, 40.0, 1600.0, rate=4.0, profile="constant"),
        row("ray-serve", "async", 2.0, 80.0, 2000.0, rate=2.0, profile="constant"),  # no bare twin
        row("vllm-serve", "async", 9.0, 1.0, 1.0, rate=4.0, profile="poisson"),  # another profile
    ]
    got = {(r["mode"], r["target_rate"]): r for r in serve_overhead(rows)}
    assert set(got) == {("sync", None), ("async", 4.0)}
    assert got["sync", None]["throughput_ratio"] == pytest.approx(0.9)
    assert got["sync", None]["ttft_overhead_pct"] == pytest.approx(10.0)
    assert got["sync", None]["e2el_overhead_pct"] == pytest.approx(10.0)
    assert got["async", 4.0]["throughput_ratio"] == pytest.approx(0.75)
    assert got["async", 4.0]["ttft_overhead_pct"] == pytest.approx(100.0)

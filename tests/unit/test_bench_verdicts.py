"""Benchmarks never claim a result their anchor did not give: a crashed anchor is "not measured" and
a non-zero exit; bare `vllm serve`'s stalls are reported and left out of the paired medians."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_a_crashed_anchor_is_not_measured_and_exits_non_zero(capsys):
    lc = _bench("loadgen_capacity")
    ours = [lc.Step(r, int(r * 3), 0, 3.0) for r in (200, 400)]
    sigill = [lc.Step(200, 0, 600, 0.0, "exit -4: ")]  # vllm bench serve died of SIGILL (AVX2 host)
    guide = [lc.Step(200, 600, 0, 3.0), lc.Step(400, 100, 1100, 3.0)]
    code = lc.report(
        {"ours": ours, "vllm bench serve": sigill, "guidellm": guide},
        dict.fromkeys(("ours", "vllm bench serve", "guidellm"), 1.0),
        [200, 400],
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "ratio ours / vllm bench serve: not measured (vllm bench serve failed: exit -4" in out
    assert "inf" not in out and ": met" not in out
    assert "goal >= 3x the better one: not measured (vllm bench serve gave no measurement)" in out
    assert "ratio ours / guidellm: 2.00x" in out  # the comparison that was measured is still shown
    ok = [lc.Step(200, 600, 0, 3.0), lc.Step(400, 100, 1100, 3.0)]
    ours = [lc.Step(r, int(r * 3), 0, 3.0) for r in (200, 400, 600)]  # 3x the better anchor's 200
    assert (
        lc.report(
            {"ours": ours, "vllm bench serve": ok, "guidellm": guide},
            dict.fromkeys(("ours", "vllm bench serve", "guidellm"), 1.0),
            [200, 400],
        )
        == 0
    )
    assert "(vllm bench serve): met" in capsys.readouterr().out


def _run(thr: float, t50: float, t99: float) -> dict:
    return {"request_throughput": thr, "median_ttft_ms": t50, "p99_ttft_ms": t99}


def test_stalled_rounds_are_left_out_of_paired_medians_with_an_interval(capsys):
    so = _bench("serve_overhead")
    rounds = [{"bare": _run(50 + k, 20, 30), "haproxy": _run(49 + k, 20.5, 31)} for k in range(6)]
    rounds.append({"bare": _run(22.9, 20, 920), "haproxy": _run(40, 20.5, 31)})  # bare stalled
    assert so.summarize(rounds, ["bare", "haproxy"], []) == 0
    out = capsys.readouterr().out
    assert "stall: round 7 bare (TTFT p99 920 ms, over 5x the median run's 31 ms)" in out
    assert "over 6 paired round(s) (1 left out)" in out and "goal >= 0.97x: met" in out
    assert "TTFT p50 overhead median +2.5 % [+2.5, +2.5] (goal <= +5 %: met)" in out
    lo, hi = (float(x) for x in out.split("[95 % CI ")[1].split("]")[0].split(", "))
    assert lo < hi and lo <= 0.98 <= hi  # ratios 49/50 .. 54/55: the interval spans them


def test_a_baseline_that_stalls_in_most_rounds_is_still_caught(capsys):
    """Seen on 2026-12-02 (AVX-512 host, 3 rounds): bare `vllm serve` stalled in rounds 1 and 2 (its
    tokens arrived in one piece, TTFT ~245 ms). Against its own median those were not stalls, and the
    bench printed a -94 % TTFT overhead, goal met. Against every run's median they are."""
    so = _bench("serve_overhead")

    def run(thr: float, t50: float, t99: float, itl: float) -> dict:
        return {**_run(thr, t50, t99), "median_itl_ms": itl}

    rounds = [
        {"bare": run(27.81, 249.9, 408.0, 0.0), "haproxy": run(144.23, 14.0, 41.3, 1.3)},
        {"bare": run(41.18, 245.2, 283.2, 0.0), "haproxy": run(135.43, 13.5, 44.5, 1.5)},
        {"bare": run(146.02, 10.1, 44.4, 1.4), "haproxy": run(151.57, 12.5, 39.3, 1.3)},
    ]
    assert so.summarize(rounds, ["bare", "haproxy"], []) == 0
    out = capsys.readouterr().out
    assert "stall: round 1 bare (TTFT p99 408 ms, over 5x the median run's 44 ms)" in out
    assert "stall: round 2 bare" in out and "stall: round 3" not in out
    assert "over 1 paired round(s) (2 left out)" in out
    assert "TTFT p50 overhead median +23.8 %" in out and "(goal <= +5 %: not met)" in out

    one_piece = [{"bare": run(140.0, 60.0, 70.0, 0.0), "haproxy": run(150.0, 14.0, 40.0, 1.2)}]
    assert so.summarize(one_piece, ["bare", "haproxy"], []) == 1  # its only pair is a stall
    out = capsys.readouterr().out
    assert "stall: round 1 bare (ITL p50 0 ms: its tokens arrived in one piece" in out
    assert "haproxy / bare: not measured (stalls in every round)" in out


def test_the_ttft_overhead_is_split_into_the_engine_and_the_path_outside_it(capsys):
    """vLLM's own time-to-first-token (arrival in its API server -> first token) against the client's:
    what the serving layer adds is then either inside the engine or on the way to it."""
    so = _bench("serve_overhead")

    def run(thr: float, t50: float, client: float, engine: float) -> dict:
        return {**_run(thr, t50, 40), "client_ttft_ms": client, "engine_ttft_ms": engine}

    rounds = [  # 2026-12-02, AVX-512 host, concurrency 8: bare, then the haproxy path
        {"bare": run(132.5, 9.8, 12.41, 7.08), "haproxy": run(151.9, 14.3, 15.43, 9.22)},
        {"bare": run(140.0, 9.0, 12.0, 7.0), "haproxy": run(150.0, 13.0, 15.0, 9.0)},
    ]
    assert [pytest.approx(x) for x in so.where(rounds, "haproxy")] == [(2.14, 0.88), (2.0, 1.0)]
    assert so.summarize(rounds, ["bare", "haproxy"], []) == 0
    out = capsys.readouterr().out
    assert "haproxy - bare, TTFT mean over 2 paired round(s): +2.07 ms in vLLM's engine" in out
    assert "+0.94 ms outside it" in out
    del rounds[1]["bare"]["engine_ttft_ms"]  # no metrics from that server: the round has no split
    assert [pytest.approx(x) for x in so.where(rounds, "haproxy")] == [(2.14, 0.88)]


def test_a_failed_baseline_is_not_measured(capsys):
    so = _bench("serve_overhead")
    assert so.summarize([{"haproxy": _run(40, 30, 40)}], ["bare", "haproxy"], ["bare"]) == 1
    assert "haproxy / bare: not measured (bare `vllm serve` failed in every round)" in capsys.readouterr().out

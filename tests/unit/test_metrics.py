"""Metrics on hand-built records whose TTFT, TPOT, ITL and span are known in advance."""

import json
import math

import numpy as np
import pytest

from serve.metrics import goodput, request_latencies, summarize, to_vllm_bench_json
from serve.records import RequestRecord

pytestmark = pytest.mark.unit


def rec(rid, send, chunks, end, out, *, status="ok", warmup=False, prompt=10):
    return RequestRecord(
        request_id=rid,
        profile="poisson",
        target_rate=4.0,
        send_time=send,
        first_token_s=chunks[0] if chunks else None,
        chunk_s=list(chunks),
        end_s=end,
        prompt_tokens=prompt,
        output_tokens=out,
        status=status,
        error="" if status == "ok" else "HTTP 500",
        warmup=warmup,
    )


@pytest.fixture
def records():
    return [
        # ttft 100, e2e 300, 4 tokens: tpot (300-100)/3, incl-first 300/4, itls 50/100/50
        rec("a", 100.0, [0.10, 0.15, 0.25, 0.30], 0.30, 4),
        # failed: counted, never in latencies
        rec("c", 100.2, [0.01], 0.05, 0, status="error"),
        # ttft 200, e2e 400, 2 tokens: tpot 200, incl-first 200, itl 100
        rec("b", 100.5, [0.20, 0.30], 0.40, 2),
        # one token: no TPOT in vLLM's definition, incl-first 500, no ITL
        rec("d", 101.0, [0.50], 0.50, 1),
        # warm-up: slow and early, must not move latencies or the span
        rec("w", 90.0, [5.0, 9.0], 9.0, 2, warmup=True),
    ]


def test_counts_and_throughput(records):
    s = summarize(records)
    assert (s["completed"], s["failed"]) == (3, 1)
    assert s["error_rate"] == pytest.approx(0.25)
    assert s["duration"] == pytest.approx(1.5)  # first measured send 100.0 -> last end 101.5
    assert s["request_throughput"] == pytest.approx(3 / 1.5)
    assert s["total_output_tokens"] == 7
    assert s["output_throughput"] == pytest.approx(7 / 1.5)
    assert s["total_input_tokens"] == 30
    assert s["send_rate"] == pytest.approx(3 / 1.0)
    assert s["max_concurrent_requests"] == 2  # a and c overlap
    assert s["target_rate"] == 4.0


def test_latency_statistics(records):
    s = summarize(records)
    assert s["mean_ttft_ms"] == pytest.approx((100 + 200 + 500) / 3)
    assert s["median_ttft_ms"] == pytest.approx(200)
    assert s["p99_ttft_ms"] == pytest.approx(200 + 0.98 * 300)  # linear interpolation, as vLLM
    assert s["std_ttft_ms"] == pytest.approx(float(np.std([100, 200, 500])))
    assert s["mean_tpot_ms"] == pytest.approx((200 / 3 + 200) / 2)
    assert s["mean_itl_ms"] == pytest.approx(75)
    assert s["median_itl_ms"] == pytest.approx(75)
    assert s["mean_e2el_ms"] == pytest.approx(400)
    assert s["mean_tpot_incl_first_ms"] == pytest.approx((75 + 200 + 500) / 3)
    assert s["median_tpot_incl_first_ms"] == pytest.approx(200)


def test_tpot_definitions_differ_as_documented(records):
    a = request_latencies(records[0])
    assert a["tpot_ms"] == pytest.approx(200 / 3)  # vLLM: excludes the first token
    assert a["tpot_incl_first_ms"] == pytest.approx(75)  # GuideLLM: includes it, so it is larger here
    d = request_latencies(records[3])
    assert math.isnan(d["tpot_ms"]) and d["tpot_incl_first_ms"] == pytest.approx(500)


def test_failed_request_has_no_latencies(records):
    assert all(math.isnan(v) for v in request_latencies(records[1]).values())


def test_duration_override(records):
    assert summarize(records, duration_s=3.0)["request_throughput"] == pytest.approx(1.0)


def test_goodput(records):
    assert goodput(records, {"ttft_ms": 250, "tpot_ms": 100}) == pytest.approx(1 / 1.5)  # only a
    # d has one token, so a TPOT bound cannot fail it; b still fails on TPOT
    assert goodput(records, {"ttft_ms": 600, "tpot_ms": 100}) == pytest.approx(2 / 1.5)
    assert goodput(records, {}) == pytest.approx(3 / 1.5)
    with pytest.raises(ValueError, match="unknown SLO key"):
        goodput(records, {"latency": 1})


def test_empty_input_gives_nan_not_errors():
    s = summarize([])
    assert (s["completed"], s["failed"]) == (0, 0)
    for key in ("error_rate", "request_throughput", "mean_ttft_ms", "p99_itl_ms", "mean_tpot_incl_first_ms"):
        assert math.isnan(s[key]), key
    assert math.isnan(goodput([], {"ttft_ms": 1}))


def test_all_failed_keeps_counts():
    s = summarize([rec("x", 1.0, [], 0.5, 0, status="error"), rec("y", 1.5, [], 0.5, 0, status="error")])
    assert (s["completed"], s["failed"], s["error_rate"]) == (0, 2, 1.0)
    assert s["request_throughput"] == 0.0
    assert math.isnan(s["mean_e2el_ms"])


def test_vllm_bench_json_layout(records):
    out = to_vllm_bench_json(
        summarize(records), {"model_id": "m", "num_prompts": 4, "request_rate": 4.0, "format": "w4a16"}
    )
    for key in (
        "date",
        "backend",
        "model_id",
        "num_prompts",
        "request_rate",
        "completed",
        "failed",
        "request_throughput",
        "output_throughput",
        "mean_ttft_ms",
        "median_tpot_ms",
        "std_itl_ms",
        "p99_e2el_ms",
    ):
        assert key in out, key
    assert (out["completed"], out["failed"], out["request_rate"], out["format"]) == (3, 1, 4.0, "w4a16")
    assert out["tokenizer_id"] == "m"


def test_vllm_bench_json_is_strict_json_when_empty():
    out = to_vllm_bench_json(summarize([]), {"model_id": "m"})
    assert out["request_rate"] == "inf" and out["mean_ttft_ms"] is None
    json.dumps(out, allow_nan=False)

"""Derive serving metrics from raw `RequestRecord`s, with vLLM's and GuideLLM's definitions side by side.

TTFT is send to first text chunk. TPOT follows `vllm bench serve`: (e2e - ttft) / (output_tokens - 1),
defined only for outputs longer than one token; `tpot_incl_first` is GuideLLM's e2e / output_tokens,
which includes the first token and so is never smaller on the same request. ITL is every gap between
successive text chunks, pooled over requests, as vLLM does. Warm-up rows are left out; failed rows count
in `failed` and `error_rate` but never in latency statistics. Empty inputs give NaN, not exceptions, so a
sweep cell whose every request failed still produces a row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from serve.records import RequestRecord

NAN = float("nan")
LATENCIES = ("ttft", "tpot", "itl", "e2el")  # the `vllm bench serve` metrics, each with mean/median/std/p99
STATS = ("mean", "median", "std", "p99")
SLO_KEYS = ("ttft_ms", "tpot_ms", "tpot_incl_first_ms", "e2el_ms")


def measured(records: Iterable[RequestRecord]) -> list[RequestRecord]:
    """The records that count: everything except warm-up requests."""
    return [r for r in records if not r.warmup]


def request_latencies(rec: RequestRecord) -> dict[str, float]:
    """Per-request ttft/tpot/tpot_incl_first/e2el in ms; NaN where a metric is undefined for it."""
    if not rec.ok or rec.end_s is None:
        return {"ttft_ms": NAN, "tpot_ms": NAN, "tpot_incl_first_ms": NAN, "e2el_ms": NAN}
    e2el = rec.end_s * 1000.0
    ttft = rec.first_token_s * 1000.0 if rec.first_token_s is not None else NAN
    n = rec.output_tokens
    tpot = (e2el - ttft) / (n - 1) if n > 1 and math.isfinite(ttft) else NAN
    return {
        "ttft_ms": ttft,
        "tpot_ms": tpot,
        "tpot_incl_first_ms": e2el / n if n > 0 else NAN,
        "e2el_ms": e2el,
    }


def itls_ms(rec: RequestRecord) -> list[float]:
    """Gaps in ms between successive text chunks of one request."""
    return [(b - a) * 1000.0 for a, b in zip(rec.chunk_s, rec.chunk_s[1:], strict=False)]


def _stats(values: Sequence[float], name: str, stats: Sequence[str] = STATS) -> dict[str, float]:
    """mean/median/std/p99 of the finite values as `{stat}_{name}_ms`; NaN when there are none."""
    arr = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return {f"{s}_{name}_ms": NAN for s in stats}
    # np.percentile's linear interpolation is what `vllm bench serve` uses, so p99s are comparable.
    values_by_stat = {
        "mean": arr.mean(),
        "median": np.median(arr),
        "std": arr.std(),
        "p99": np.percentile(arr, 99),
    }
    return {f"{s}_{name}_ms": float(values_by_stat[s]) for s in stats}


def wall_span_s(records: Sequence[RequestRecord]) -> float:
    """Seconds from the first send to the last end (failures included: they occupied the run too)."""
    if not records:
        return NAN
    start = min(r.send_time for r in records)
    end = max(r.send_time + (r.end_s or 0.0) for r in records)
    return end - start


def _per_s(count: float, span_s: float) -> float:
    """count / span, NaN when the span is missing or not positive."""
    return count / span_s if math.isfinite(span_s) and span_s > 0 else NAN


def _send_rate(records: Sequence[RequestRecord]) -> float:
    """Requests per second the client actually sent: compare with the target to see if it kept up."""
    sends = sorted(r.send_time for r in records)
    return _per_s(len(sends) - 1, sends[-1] - sends[0]) if len(sends) > 1 else NAN


def max_concurrent(records: Sequence[RequestRecord]) -> int:
    """The most requests that were in flight at the same moment."""
    events = sorted(
        [(r.send_time, 1) for r in records] + [(r.send_time + (r.end_s or 0.0), -1) for r in records],
        key=lambda e: (e[0], e[1]),  # an end and a send at the same instant do not overlap
    )
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def summarize(records: Iterable[RequestRecord], duration_s: float | None = None) -> dict[str, Any]:
    """Counts, throughputs and latency statistics of a run, keyed like `vllm bench serve` results."""
    rows = measured(records)
    ok = [r for r in rows if r.ok]
    span = duration_s if duration_s is not None else wall_span_s(rows)
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    rates = {r.target_rate for r in rows}
    summary: dict[str, Any] = {
        "duration": span,
        "completed": len(ok),
        "failed": len(rows) - len(ok),
        "error_rate": (len(rows) - len(ok)) / len(rows) if rows else NAN,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": _per_s(len(ok), span),
        "output_throughput": _per_s(out_tokens, span),
        "total_token_throughput": _per_s(in_tokens + out_tokens, span),
        "target_rate": next(iter(rates)) if len(rates) == 1 and None not in rates else NAN,
        "send_rate": _send_rate(rows),
        "max_concurrent_requests": max_concurrent(rows),
    }
    per_request = [request_latencies(r) for r in ok]
    for name in ("ttft", "tpot", "e2el"):
        summary.update(_stats([p[f"{name}_ms"] for p in per_request], name))
    summary.update(_stats([gap for r in ok for gap in itls_ms(r)], "itl"))
    summary.update(
        _stats([p["tpot_incl_first_ms"] for p in per_request], "tpot_incl_first", ("mean", "median", "p99"))
    )
    return summary


def _meets(rec: RequestRecord, slo: dict[str, float]) -> bool:
    """Whether one completed request meets every SLO bound."""
    lat = request_latencies(rec)
    for key, bound in slo.items():
        if key == "tpot_ms" and rec.output_tokens <= 1:
            continue  # vLLM counts a one-token answer's TPOT as 0: it has no decode steps to be slow
        if not lat[key] <= bound:  # NaN (undefined) never meets a bound
            return False
    return True


def goodput(
    records: Iterable[RequestRecord], slo: dict[str, float], duration_s: float | None = None
) -> float:
    """Requests per second that completed within every SLO bound, e.g. {"ttft_ms": 500, "tpot_ms": 50}."""
    unknown = sorted(set(slo) - set(SLO_KEYS))
    if unknown:
        raise ValueError(f"unknown SLO key(s) {unknown}; allowed: {list(SLO_KEYS)}")
    rows = measured(records)
    span = duration_s if duration_s is not None else wall_span_s(rows)
    return _per_s(sum(1 for r in rows if r.ok and _meets(r, slo)), span)


def _json_value(value: Any) -> Any:
    """NaN becomes null so the export is strict JSON."""
    return None if isinstance(value, float) and math.isnan(value) else value


def to_vllm_bench_json(summary: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Lay a summary out like the JSON `vllm bench serve --save-result` writes; extra meta keys pass through."""
    rate = meta.get("request_rate")
    result: dict[str, Any] = {
        "date": meta.get("date") or datetime.now().strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": meta.get("backend", "openai"),
        "backend": meta.get("backend", "openai"),
        "label": meta.get("label"),
        "model_id": meta.get("model_id"),
        "tokenizer_id": meta.get("tokenizer_id", meta.get("model_id")),
        "num_prompts": meta.get("num_prompts", summary["completed"] + summary["failed"]),
        # vLLM writes "inf" when requests are not paced (synchronous or fixed concurrency here).
        "request_rate": "inf" if rate is None or rate == math.inf else rate,
        "burstiness": meta.get("burstiness", 1.0),
        "max_concurrency": meta.get("max_concurrency"),
    }
    for key in (
        "duration",
        "completed",
        "failed",
        "total_input_tokens",
        "total_output_tokens",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "max_concurrent_requests",
    ):
        result[key] = summary[key]
    if "request_goodput" in meta or "request_goodput" in summary:
        result["request_goodput"] = meta.get("request_goodput", summary.get("request_goodput"))
    for name in LATENCIES:
        for stat in STATS:
            result[f"{stat}_{name}_ms"] = summary[f"{stat}_{name}_ms"]
    result.update({k: v for k, v in meta.items() if k not in result})
    return {k: _json_value(v) for k, v in result.items()}

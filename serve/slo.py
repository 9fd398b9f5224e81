"""Judge a load-test run against a latency SLO: goodput, the bounded percentiles, met or not.

An SLO bounds TTFT and TPOT (vLLM's TPOT: the first token excluded) at a percentile, e.g. p99
TTFT <= 2 s and p99 TPOT <= 200 ms. A failed request counts as infinitely slow, so a run whose
failures exceed the percentile's tail never meets it; a one-token answer has no decode steps, so
its TPOT counts as 0 (as vLLM counts it). Goodput is `serve.metrics.goodput`: requests per second
that completed within every bound. Any object with `name`, `ttft_ms`, `tpot_ms` (None: unbounded)
and `percentile` is an SLO here (`cluster.config.schema.SloConfig` is one).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from serve.metrics import goodput, measured, request_latencies
from serve.records import RequestRecord

BOUNDED = ("ttft_ms", "tpot_ms")


class Slo(Protocol):
    """What an SLO gives: a name, bounds in ms (None: unbounded) and the percentile they hold at."""

    name: str
    ttft_ms: float | None
    tpot_ms: float | None
    percentile: float


@dataclass(frozen=True)
class Verdict:
    """One run against one SLO; `met` is None when the data cannot tell."""

    goodput_rps: float | None
    ttft_ms: float | None  # TTFT at the SLO's percentile (inf when failures reach the tail)
    tpot_ms: float | None
    met: bool | None


def bounds(slo: Slo) -> dict[str, float]:
    """The SLO's bounds as `serve.metrics.goodput` takes them (unbounded metrics left out)."""
    return {k: float(getattr(slo, k)) for k in BOUNDED if getattr(slo, k) is not None}


def describe(slo: Slo) -> str:
    """`name: p99 TTFT <= 2000 ms, TPOT <= 200 ms` (or `unconstrained`)."""
    parts = [f"{k.split('_')[0].upper()} <= {v:g} ms" for k, v in bounds(slo).items()]
    if not parts:
        return f"{slo.name}: latency unconstrained"
    return f"{slo.name}: p{slo.percentile:g} " + ", ".join(parts)


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (numpy's and vLLM's default) that lets +inf through."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * pct / 100.0
    lo, frac = int(math.floor(pos)), pos - math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    if math.isinf(xs[lo]) or (frac > 0 and math.isinf(xs[hi])):
        return math.inf
    return xs[lo] + (xs[hi] - xs[lo]) * frac


def _per_request(rec: RequestRecord) -> dict[str, float]:
    """TTFT and TPOT of one request: inf when it failed, TPOT 0 for a one-token answer."""
    if not rec.ok or rec.end_s is None:
        return {"ttft_ms": math.inf, "tpot_ms": math.inf}
    lat = request_latencies(rec)
    ttft = lat["ttft_ms"] if math.isfinite(lat["ttft_ms"]) else math.inf
    tpot = 0.0 if rec.output_tokens <= 1 else lat["tpot_ms"]
    return {"ttft_ms": ttft, "tpot_ms": tpot if math.isfinite(tpot) else math.inf}


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x


def judge(records: Iterable[RequestRecord], slo: Slo) -> Verdict:
    """Goodput, the percentiles the SLO bounds, and whether the run met it (None: no requests)."""
    rows = measured(records)
    if not rows:
        return Verdict(None, None, None, None)
    per = [_per_request(r) for r in rows]
    at = {k: percentile([p[k] for p in per], slo.percentile) for k in BOUNDED}
    met = all(at[k] <= bound for k, bound in bounds(slo).items())
    good = goodput(rows, bounds(slo))
    return Verdict(_finite(good), _finite(at["ttft_ms"]), _finite(at["tpot_ms"]), met)


def judge_summary(p99_ttft_ms: float | None, p99_tpot_ms: float | None, slo: Slo) -> Verdict:
    """A run known only by its p99s (imported summaries): judged when the SLO is at p99, else unknown."""
    at = {"ttft_ms": p99_ttft_ms, "tpot_ms": p99_tpot_ms}
    need = bounds(slo)
    if need and (slo.percentile != 99 or any(at[k] is None for k in need)):
        return Verdict(None, p99_ttft_ms, p99_tpot_ms, None)
    return Verdict(None, p99_ttft_ms, p99_tpot_ms, all(at[k] <= b for k, b in need.items()))  # type: ignore[operator]


def best_rate(runs: Iterable[tuple[float | None, bool | None]]) -> float | None:
    """The highest achieved throughput among runs that met the SLO (None when none did)."""
    ok = [qps for qps, met in runs if met and qps is not None and math.isfinite(qps)]
    return max(ok) if ok else None

"""Queries per dollar and the paper's cost-reduction factor.

Synchronous serving is priced by latency: one GPU set answers 3600 / latency_s queries an hour.
Asynchronous serving is priced by the highest sustainable QPS. The cost-reduction factor (CR) of a
format is the mean, over use cases, of its queries per dollar divided by BF16's; GPU counts are part of
the price, so a 70B INT4 on one A100 can be compared with BF16 on two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

SECONDS_PER_HOUR = 3600.0


def _check_positive(name: str, value: float) -> None:
    """Reject a non-positive or non-finite input with a message naming it."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def queries_per_dollar_sync(latency_s: float, price_per_hour: float) -> float:
    """Queries per dollar when requests run one at a time: 3600 / (latency_s * $/hour)."""
    _check_positive("latency_s", latency_s)
    _check_positive("price_per_hour", price_per_hour)
    return SECONDS_PER_HOUR / (latency_s * price_per_hour)


def queries_per_dollar_async(qps: float, price_per_hour: float) -> float:
    """Queries per dollar at a sustained throughput: qps * 3600 / $/hour."""
    _check_positive("price_per_hour", price_per_hour)
    if not (math.isfinite(qps) and qps >= 0):
        raise ValueError(f"qps must be a non-negative number, got {qps!r}")
    return qps * SECONDS_PER_HOUR / price_per_hour


def cost_reduction(format_qpd: Mapping[str, float], bf16_qpd: Mapping[str, float]) -> float:
    """Mean over the use cases present in both of (format queries/$) / (BF16 queries/$)."""
    shared = [u for u in format_qpd if u in bf16_qpd]
    if not shared:
        raise ValueError(
            f"no use case in common: format has {sorted(format_qpd)}, bf16 has {sorted(bf16_qpd)}"
        )
    for use_case in shared:
        _check_positive(f"bf16 queries per dollar for {use_case!r}", bf16_qpd[use_case])
    return sum(format_qpd[u] / bf16_qpd[u] for u in shared) / len(shared)

"""The sweep profile and the client-capacity check, against the local null server."""

from __future__ import annotations

import pytest

from serve import loadgen, metrics
from serve.config import ServeConfig
from serve.nullserver import null_server
from serve.sweep import client_bound, client_capacity, run_sweep, sweep_rates

pytestmark = pytest.mark.integration


def test_rates_lie_strictly_between_sync_and_peak():
    assert sweep_rates(2.0, 12.0, 4) == pytest.approx([4.0, 6.0, 8.0, 10.0])
    assert sweep_rates(5.0, 5.0, 3) == [] and sweep_rates(5.0, 1.0, 3) == []


def test_sweep_walks_from_sync_to_peak_and_stays_bounded():
    prompts = loadgen.make_prompts(256, 8, 32, seed=1)
    cfg = ServeConfig(
        sweep_points=3, sync_requests=3, async_duration_s=1.0, async_max_requests=20, request_timeout_s=10
    )
    with null_server(chunk_delay_s=0.01) as url:
        recs = run_sweep(url, "null-model", prompts, 4, cfg, peak_concurrency=4)
    profiles = [r.profile for r in recs if not r.warmup]
    assert profiles[:3] == ["synchronous"] * 3 and "concurrent" in profiles
    poisson = [r for r in recs if r.profile == "poisson"]
    rates = sorted({r.target_rate for r in poisson})
    assert 1 <= len(rates) <= 3 and rates == sorted(rates)
    assert all(len([r for r in poisson if r.target_rate == x]) <= 20 for x in rates)


def test_sweep_stops_past_the_error_budget():
    prompts = loadgen.make_prompts(256, 8, 32, seed=1)
    cfg = ServeConfig(
        sweep_points=4,
        sync_requests=2,
        async_duration_s=1.0,
        async_max_requests=20,
        error_budget=0.05,
        request_timeout_s=10,
    )
    with null_server(fail_every=2, chunk_delay_s=0.01) as url:
        recs = run_sweep(url, "null-model", prompts, 4, cfg, peak_concurrency=4)
    rates = {r.target_rate for r in recs if r.profile == "poisson"}
    assert len(rates) == 1  # the first rate already broke the budget
    s = metrics.summarize(recs)
    assert s["failed"] > 0 and s["completed"] + s["failed"] == len([r for r in recs if not r.warmup])


def test_client_capacity_is_measured_and_flags_near_capacity_runs():
    cap = client_capacity(max_tokens=8, duration_s=1.5)
    assert cap > 20  # an instant server: the generator alone sets this number
    assert client_bound(0.6 * cap, cap) and not client_bound(0.1 * cap, cap)

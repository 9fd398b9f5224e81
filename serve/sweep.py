"""The sweep profile and the load generator's own capacity: two guards on what a run may claim.

`run_sweep` finds the synchronous rate (one request at a time) and the throughput peak (a closed
loop at high concurrency), then offers Poisson load at rates spaced between them, stopping once
the server is over-saturated (it completes < 90 % of the offered rate) or past an error budget.
`client_capacity` measures how many streamed requests per second this generator itself can
sustain against a null server that answers instantly: a run whose offered load comes near it
measures the client, not the server (vLLM issue 39963), and is flagged.
"""

from __future__ import annotations

from serve import loadgen, metrics
from serve.config import ServeConfig
from serve.config import api_key as serve_api_key
from serve.records import RequestRecord

SATURATED = 0.9  # completed / offered below this: over-saturated


def sweep_rates(sync_rate: float, peak_rate: float, points: int) -> list[float]:
    """`points` rates spaced evenly strictly between the synchronous rate and the peak."""
    if points < 1 or not (0 < sync_rate) or peak_rate <= sync_rate:
        return []
    step = (peak_rate - sync_rate) / (points + 1)
    return [sync_rate + step * (i + 1) for i in range(points)]


def run_sweep(
    base_url: str,
    model: str,
    prompts: list[list[int]],
    max_tokens: int,
    cfg: ServeConfig,
    peak_concurrency: int,
    seed: int = 0,
) -> list[RequestRecord]:
    """Synchronous -> throughput peak (closed loop at `peak_concurrency`) -> Poisson rates between.

    Stops once a rate is over-saturated or past `cfg.error_budget`; bounded by the config's
    `async_duration_s` and `async_max_requests` per point.
    """
    api_key = serve_api_key(cfg)
    records = loadgen.run_synchronous(
        base_url,
        model,
        prompts,
        max_tokens,
        api_key=api_key,
        timeout_s=cfg.request_timeout_s,
        warmup=1,
        max_requests=cfg.sync_requests,
    )
    sync_rate = metrics.summarize(records)["request_throughput"]
    peak = loadgen.run_concurrent(
        base_url,
        model,
        prompts,
        max_tokens,
        concurrency=peak_concurrency,
        max_requests=cfg.async_max_requests,
        duration_s=cfg.async_duration_s,
        api_key=api_key,
        timeout_s=cfg.request_timeout_s,
        processes=cfg.client_processes,
    )
    records += peak
    peak_rate = metrics.summarize(peak)["request_throughput"]
    for rate in sweep_rates(sync_rate, peak_rate, cfg.sweep_points):
        run = loadgen.run_poisson(
            base_url,
            model,
            prompts,
            max_tokens,
            rate=rate,
            duration_s=cfg.async_duration_s,
            max_requests=cfg.async_max_requests,
            seed=seed,
            api_key=api_key,
            timeout_s=cfg.request_timeout_s,
            processes=cfg.client_processes,
        )
        records += run
        s = metrics.summarize(run)
        if s["error_rate"] > cfg.error_budget or s["request_throughput"] < SATURATED * rate:
            break
    return records


def client_capacity(
    max_tokens: int,
    prompt_tokens: int = 16,
    concurrency: int = 64,
    duration_s: float = 3.0,
    processes: int = 1,
) -> float:
    """Streamed requests/s this generator sustains against an instant null server (same output length),
    from `processes` client processes (as the load test it vouches for is run)."""
    from serve.nullserver import null_server

    prompts = loadgen.make_prompts(256, prompt_tokens, 64, seed=0)
    with null_server() as url:
        recs = loadgen.run_concurrent(
            url,
            "null-model",
            prompts,
            max_tokens,
            concurrency=concurrency,
            max_requests=100_000,
            duration_s=duration_s,
            timeout_s=30,
            processes=processes,
        )
    return float(metrics.summarize(recs)["request_throughput"])


def client_bound(offered_rps: float, capacity_rps: float, margin: float = 0.5) -> bool:
    """True when the load offered (or achieved) reaches `margin` of the generator's own capacity."""
    return capacity_rps > 0 and offered_rps >= margin * capacity_rps

"""Benchmark: the same checkpoint and load through Ray Serve and through bare `vllm serve`, in one run.

Both servers get the engine arguments of sweeps/smoke.yaml's serve stage and the tiny Llama; the
same load generator sends a closed loop at fixed concurrency to each. Prints throughput for both,
the ratio (goal >= 0.97x) and TTFT p50/p99 deltas (goal <= 5 % overhead).
Usage: .venv/bin/python bench/serve_overhead.py [--requests 64] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path


def _ttfts(records) -> list[float]:
    return sorted(r.first_token_s * 1000 for r in records if r.status == "ok" and not r.warmup)


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def _load(url: str, model: str, prompts, tokens: int, n: int, conc: int):
    from serve import loadgen, metrics

    recs = loadgen.run_concurrent(
        url, model, prompts, tokens, concurrency=conc, max_requests=n, warmup=2, timeout_s=120
    )
    return metrics.summarize(recs), _ttfts(recs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=32)
    args = parser.parse_args()
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    import ray

    from cluster import tinymodel
    from cluster.loader import load_sweep
    from serve import app, loadgen
    from serve.bare import vllm_serve

    sweep, _ = load_sweep(Path(__file__).resolve().parent.parent / "sweeps" / "smoke.yaml")
    assets = tinymodel.build(Path(tempfile.gettempdir()) / "qs-bench-cache")
    model = app.ServedModel("tiny", str(assets.model_dir))
    spec = app.ServeSpec(
        models=[model], engine=sweep.serve.engine, cpu_only=True, port=8311, app_name="bench"
    )
    prompts = loadgen.make_prompts(400, args.prompt_tokens, args.requests + 4, seed=0)
    with vllm_serve(spec, model, port=8312) as url:
        bare, bare_ttft = _load(url, "tiny", prompts, args.output_tokens, args.requests, args.concurrency)
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    url = app.start(spec)
    try:
        rs, rs_ttft = _load(url, "tiny", prompts, args.output_tokens, args.requests, args.concurrency)
    finally:
        app.stop("bench")
        ray.shutdown()
    ratio = rs["request_throughput"] / bare["request_throughput"]
    print(
        f"bare vllm serve: {bare['request_throughput']:.2f} req/s, {bare['output_throughput']:.0f} tok/s, "
        f"TTFT p50 {_pct(bare_ttft, 50):.1f} ms p99 {_pct(bare_ttft, 99):.1f} ms, failed {bare['failed']}"
    )
    print(
        f"Ray Serve:       {rs['request_throughput']:.2f} req/s, {rs['output_throughput']:.0f} tok/s, "
        f"TTFT p50 {_pct(rs_ttft, 50):.1f} ms p99 {_pct(rs_ttft, 99):.1f} ms, failed {rs['failed']}"
    )
    print(f"throughput ratio Ray Serve / bare: {ratio:.3f}x (goal >= 0.97x)")
    for q in (50, 99):
        d = _pct(rs_ttft, q) - _pct(bare_ttft, q)
        print(f"TTFT p{q} delta: {d:+.1f} ms ({100 * d / _pct(bare_ttft, q):+.1f} %, goal <= +5 %)")


if __name__ == "__main__":
    main()

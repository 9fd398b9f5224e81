"""Benchmark: the same checkpoint and load through Ray Serve and through bare `vllm serve`, in one run.

Every server gets the engine arguments of sweeps/smoke.yaml's serve stage and the same tiny Llama; the
same load generator sends a closed loop at fixed concurrency to each. Each variant runs in its own
process (Ray Serve reads its switches from the environment when it is imported):
  bare            `vllm serve` (vLLM's own OpenAI server), the baseline;
  haproxy         quantsweep's default `serve.ingress`: HAProxy in front, the LLM server replica
                  serving vLLM's own OpenAI app (one hop; serve/app.py);
  proxy           Ray Serve LLM's classic layout: HTTP proxy actor -> OpenAI ingress replica -> LLM
                  server replica (two hops), stream chunks batched every 50 ms;
  haproxy-unbatched, proxy-unbatched   the same with Ray Serve LLM's stream batching off.
All variants run in turn, `--rounds` times over, so each ratio pairs runs close in time (a shared
2-core machine drifts by tens of percent between minutes). Prints throughput, TTFT p50/p99 and ITL
p50 for every run, then per variant the median over rounds of the throughput ratio vs bare (goal
>= 0.97x) and of the TTFT deltas (goal <= 5 % overhead).
Usage: .venv/bin/python bench/serve_overhead.py [--requests 200] [--concurrency 8] [--variants bare,haproxy,proxy] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROXY_PORT, BARE_PORT = 8311, 8312
VARIANTS = {  # name -> (serve.ingress, stream batching interval in ms; None = Ray's default)
    "haproxy": ("haproxy", None),
    "proxy": ("proxy", None),
    "haproxy-unbatched": ("haproxy", 0.0),
    "proxy-unbatched": ("proxy", 0.0),
}
DEFAULT = "bare,haproxy,proxy"


def measure(variant: str, requests: int, concurrency: int, prompt_tokens: int, output_tokens: int) -> dict:
    """Child process: start one server variant, run the load, return its summary and URL."""
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    import dataclasses

    from cluster.config.loader import load_sweep
    from cluster.models import tinymodel
    from serve import app, loadgen, metrics
    from serve.host import detect

    sweep, _ = load_sweep(REPO / "sweeps" / "smoke.yaml")
    assets = tinymodel.build(Path(tempfile.gettempdir()) / "qs-bench-cache")
    model = app.ServedModel("tiny", str(assets.model_dir))
    ingress, interval = VARIANTS.get(variant, ("haproxy", None))
    cfg = dataclasses.replace(sweep.serve, port=PROXY_PORT, ingress=ingress)
    spec = app.Deployment(
        (model,), cpu=True, host=detect(), app_name="bench", stream_batching_interval_ms=interval
    )
    prompts = loadgen.make_prompts(400, prompt_tokens, requests + 8, seed=0)

    def load(url: str) -> dict:
        recs = loadgen.run_concurrent(
            url,
            "tiny",
            prompts,
            output_tokens,
            concurrency=concurrency,
            max_requests=requests,
            warmup=4,
            timeout_s=120,
        )
        return {**metrics.summarize(recs), "url": url}

    if variant == "bare":
        from serve.bare import vllm_serve

        with vllm_serve(cfg, sweep.engine, spec, model, port=BARE_PORT) as url:
            return load(url)
    import ray

    env = app.ray_env(ingress)
    os.environ.update(env)
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        url = app.start(cfg, sweep.engine, spec)["tiny"]
        try:
            return load(url)
        finally:
            app.stop(cfg, spec)
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--variants", default=DEFAULT, help=f"any of bare,{','.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=2, help="alternate all variants this many times")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = (args.requests, args.concurrency, args.prompt_tokens, args.output_tokens)
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, *sizes)))
        return
    names = args.variants.split(",")
    unknown = [n for n in names if n != "bare" and n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {['bare', *VARIANTS]}")
    print(
        f"{args.requests} requests at concurrency {args.concurrency}, "
        f"{args.prompt_tokens} -> {args.output_tokens} tokens",
        flush=True,
    )
    rounds: list[dict[str, dict]] = []
    failed: list[str] = []
    for k in range(args.rounds):
        results: dict[str, dict] = {}
        for name in names:
            s = _child(name, args)
            if s is None:
                failed.append(name)
                continue
            results[name] = s
            print(
                f"round {k + 1} {name:<20}{s['request_throughput']:7.2f} req/s {s['output_throughput']:6.0f} tok/s  "
                f"TTFT p50 {s['median_ttft_ms']:6.1f} ms p99 {s['p99_ttft_ms']:6.1f} ms  "
                f"ITL p50 {s['median_itl_ms']:5.1f} ms  failed {s['failed']}  ({s['url']})",
                flush=True,
            )
        rounds.append(results)
    if failed:
        sys.exit(f"error: variant(s) {sorted(set(failed))} failed")
    if "bare" not in names:
        return
    # Each ratio pairs a variant with the bare run of its own round (adjacent in time): the
    # machine's drift between rounds cancels; the median over rounds is the headline.
    for name in names:
        if name == "bare":
            continue
        ratios = [r[name]["request_throughput"] / r["bare"]["request_throughput"] for r in rounds]
        line = (
            f"{name} / bare over {len(rounds)} round(s): throughput median {statistics.median(ratios):.3f}x "
        )
        line += f"(per round {', '.join(f'{x:.3f}' for x in ratios)}; goal >= 0.97x)"
        for q, key in (("p50", "median_ttft_ms"), ("p99", "p99_ttft_ms")):
            pct = [100 * (r[name][key] - r["bare"][key]) / r["bare"][key] for r in rounds]
            ms = [r[name][key] - r["bare"][key] for r in rounds]
            line += f"; TTFT {q} median {statistics.median(ms):+.1f} ms ({statistics.median(pct):+.1f} %)"
        print(line + " (goal <= +5 %)")


def _child(name: str, args: argparse.Namespace) -> dict | None:
    """Run one variant in a fresh process; its summary, or None (error printed) if it failed."""
    cmd = [sys.executable, __file__, "--child", name, "--requests", str(args.requests)]
    cmd += ["--concurrency", str(args.concurrency), "--prompt-tokens", str(args.prompt_tokens)]
    cmd += ["--output-tokens", str(args.output_tokens)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(f"{name}: failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
        return None
    return json.loads(lines[-1][len("RESULT ") :])


if __name__ == "__main__":
    main()

"""Benchmark: the same checkpoint and load through Ray Serve and through bare `vllm serve`, in one run.

Every server gets the engine arguments of sweeps/smoke.yaml's serve stage and the same tiny Llama; the
same load generator sends a closed loop at fixed concurrency to each. Each variant runs in its own
process (Ray Serve reads its switches from the environment when it is imported):
  bare            `vllm serve` (vLLM's own OpenAI server), the baseline;
  haproxy         quantsweep's default `serve.ingress`: HAProxy in front, the LLM server replica
                  serving vLLM's own OpenAI app (one hop; serve/app.py);
  proxy           Ray Serve LLM's classic layout: HTTP proxy actor -> OpenAI ingress replica -> LLM
                  server replica (two hops), stream chunks batched every 50 ms;
  haproxy-unbatched, proxy-unbatched   the same with Ray Serve LLM's stream batching off;
  haproxy-mp      haproxy with the model in a worker process of its own (serve.engine_in_process:
                  false), as bare `vllm serve` runs it on CPU, instead of in vLLM's engine-core
                  process.
  haproxy-1t      haproxy with one HAProxy thread (RAY_SERVE_HAPROXY_NBTHREAD=1; Ray's default is 4,
                  on a 2-core host).
  bare-ray        a control: bare `vllm serve` while a local Ray with Serve started (controller,
                  HAProxy, no application) idles beside it, as it does beside every Serve variant.
All variants run in turn, `--rounds` times over, so each ratio pairs runs close in time (a shared
2-core machine drifts by tens of percent between minutes). Prints throughput, TTFT p50/p99 and ITL
p50 for every run, then per variant the median over rounds of the paired throughput ratio vs bare
(goal >= 0.97x) and of the paired TTFT p50 overhead (goal <= 5 %), each with a 95 % bootstrap
interval. A run whose TTFT p99 exceeds 5x the median of all runs (every variant's) is a stall (bare
`vllm serve` stalls now and then on this machine, at times in most of its rounds); so is a run whose
tokens arrived in one piece (ITL p50 0: not streamed). A stall is reported and its round's pair left
out. A variant that fails, or has no pair left, is "not measured" and the script exits 1.
Where a server answers `/metrics` (bare `vllm serve`, and the haproxy path's replica), each run's TTFT
mean is split into vLLM's own time-to-first-token (from the request's arrival in the engine's API
server) and the rest (HTTP path, proxy, client), and per variant the median paired difference of each
part against bare is printed: where the serving layer's TTFT overhead is spent.
Usage: .venv/bin/python bench/serve_overhead.py [--requests 200] [--concurrency 8] [--variants bare,haproxy,proxy] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROXY_PORT, BARE_PORT = 8311, 8312
# name -> (serve.ingress, stream batching interval in ms (None = Ray's default), the engine core in
# the replica's own process (CPU default) or in a process of its own, as bare `vllm serve` runs it)
VARIANTS = {
    "haproxy": ("haproxy", None, True),
    "proxy": ("proxy", None, True),
    "haproxy-unbatched": ("haproxy", 0.0, True),
    "proxy-unbatched": ("proxy", 0.0, True),
    "haproxy-mp": ("haproxy", None, False),
    "haproxy-1t": ("haproxy", None, True),
}
VARIANT_ENV = {"haproxy-1t": {"RAY_SERVE_HAPROXY_NBTHREAD": "1"}}  # read when Ray Serve is imported
BARE_BESIDE_RAY = "bare-ray"  # the control: bare `vllm serve` with an idle Ray + Serve beside it
DEFAULT = "bare,haproxy,proxy"
STALL = 5.0  # a run's TTFT p99 over this multiple of the median run's (all variants) is a stall


def median_ci(values: list[float], seed: int = 0, n: int = 4000) -> tuple[float, float, float]:
    """The median and a 95 % percentile-bootstrap interval for it."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    return statistics.median(values), meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def stalls(rounds: list[dict[str, dict]]) -> dict[tuple[int, str], str]:
    """(round, variant) -> why, for every stalled run: its TTFT p99 exceeds STALL x the median of all
    runs (every variant's: when most runs of one variant stall, its own median is a stall too), or
    its tokens arrived in one piece (ITL p50 0: the server did not stream them)."""
    runs = [(k, name, run) for k, r in enumerate(rounds) for name, run in r.items()]
    if not runs:
        return {}
    med = statistics.median(run["p99_ttft_ms"] for _, _, run in runs)
    out = {}
    for k, name, run in runs:
        if run["p99_ttft_ms"] > STALL * med:
            out[(k, name)] = (
                f"TTFT p99 {run['p99_ttft_ms']:.0f} ms, over {STALL:g}x the median run's {med:.0f} ms"
            )
        elif run.get("median_itl_ms", 1.0) == 0.0:
            out[(k, name)] = (
                f"ITL p50 0 ms: its tokens arrived in one piece (TTFT p50 {run['median_ttft_ms']:.0f} ms)"
            )
    return out


def pairs(rounds: list[dict[str, dict]], name: str) -> tuple[list[tuple[dict, dict]], list[int]]:
    """(variant's run, bare's run) of every round where both ran and neither stalled; the rounds left out."""
    bad = stalls(rounds)
    usable, dropped = [], []
    for k, r in enumerate(rounds):
        if name not in r or "bare" not in r or (k, name) in bad or (k, "bare") in bad:
            dropped.append(k)
        else:
            usable.append((r[name], r["bare"]))
    return usable, dropped


def paired(rounds: list[dict[str, dict]], name: str) -> tuple[list[float], list[float], list[int]]:
    """Throughput ratios and TTFT p50 overheads (%) vs bare per usable round; the rounds left out."""
    usable, dropped = pairs(rounds, name)
    ratios = [a["request_throughput"] / b["request_throughput"] for a, b in usable]
    ttft = [100 * (a["median_ttft_ms"] - b["median_ttft_ms"]) / b["median_ttft_ms"] for a, b in usable]
    return ratios, ttft, dropped


def engine_ttft(url: str) -> tuple[float, float] | None:
    """(sum of seconds, count) of vLLM's own time-to-first-token histogram at `url`/metrics: from the
    request's arrival in the engine's API server to its first token; None where nothing answers."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        resp = httpx.get(f"{url}/metrics", timeout=10)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    total, count, seen = 0.0, 0.0, False
    for family in text_string_to_metric_families(resp.text):
        if family.name != "vllm:time_to_first_token_seconds":
            continue
        for sample in family.samples:
            seen = True
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
    return (total, count) if seen else None


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
    ingress, interval, in_process = VARIANTS.get(variant, ("haproxy", None, True))
    cfg = dataclasses.replace(sweep.serve, port=PROXY_PORT, ingress=ingress, engine_in_process=in_process)
    spec = app.Deployment(
        (model,), cpu=True, host=detect(), app_name="bench", stream_batching_interval_ms=interval
    )
    prompts = loadgen.make_prompts(400, prompt_tokens, requests + 8, seed=0)

    def load(url: str) -> dict:
        before = engine_ttft(url)
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
        after, split = engine_ttft(url), {}
        if before is not None and after is not None and after[1] > before[1]:
            # the engine's mean TTFT over this run (warm-up included), and the client's over the same
            engine_ms = 1000 * (after[0] - before[0]) / (after[1] - before[1])
            client = [r.first_token_s for r in recs if r.ok and r.first_token_s is not None]
            split = {"engine_ttft_ms": engine_ms, "client_ttft_ms": 1000 * statistics.fmean(client)}
        return {**metrics.summarize(recs), **split, "url": url}

    from serve.bare import vllm_serve

    if variant == "bare":
        with vllm_serve(cfg, sweep.engine, spec, model, port=BARE_PORT) as url:
            return load(url)
    import ray

    env = {**app.ray_env(ingress), **VARIANT_ENV.get(variant, {})}
    os.environ.update(env)
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        if variant == BARE_BESIDE_RAY:
            from ray import serve

            serve.start(http_options={"host": cfg.host, "port": cfg.port})
            with vllm_serve(cfg, sweep.engine, spec, model, port=BARE_PORT) as url:
                return load(url)
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
    parser.add_argument(
        "--variants", default=DEFAULT, help=f"any of bare,{BARE_BESIDE_RAY},{','.join(VARIANTS)}"
    )
    parser.add_argument("--rounds", type=int, default=7, help="alternate all variants this many times")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = (args.requests, args.concurrency, args.prompt_tokens, args.output_tokens)
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, *sizes)))
        return
    names = args.variants.split(",")
    unknown = [n for n in names if n not in ("bare", BARE_BESIDE_RAY) and n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {['bare', BARE_BESIDE_RAY, *VARIANTS]}")
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
                f"ITL p50 {s['median_itl_ms']:5.1f} ms  failed {s['failed']}  ({s['url']})"
                + (
                    f"  TTFT mean {s['client_ttft_ms']:.2f} ms = in vLLM's engine {s['engine_ttft_ms']:.2f}"
                    f" + outside it {s['client_ttft_ms'] - s['engine_ttft_ms']:.2f}"
                    if "engine_ttft_ms" in s
                    else ""
                ),
                flush=True,
            )
        rounds.append(results)
    sys.exit(summarize(rounds, names, failed))


def where(rounds: list[dict[str, dict]], name: str) -> list[tuple[float, float]]:
    """Per usable round, the variant's TTFT mean minus bare's, split into (in vLLM's engine, outside it)."""
    out = []
    for a, b in pairs(rounds, name)[0]:
        if "engine_ttft_ms" in a and "engine_ttft_ms" in b:
            inside = a["engine_ttft_ms"] - b["engine_ttft_ms"]
            out.append((inside, (a["client_ttft_ms"] - b["client_ttft_ms"]) - inside))
    return out


def summarize(rounds: list[dict[str, dict]], names: list[str], failed: list[str]) -> int:
    """Print the paired medians with intervals; 1 when a comparison could not be measured."""
    if "bare" not in names:
        return 1 if failed else 0
    for (k, name), why in sorted(stalls(rounds).items()):
        print(f"stall: round {k + 1} {name} ({why}): its pair left out")
    code = 0
    # Each ratio pairs a variant with the bare run of its own round (adjacent in time): the
    # machine's drift between rounds cancels; the median over rounds is the headline.
    for name in (n for n in names if n != "bare"):
        ratios, ttft, dropped = paired(rounds, name)
        if not ratios:
            why = (
                "bare `vllm serve` failed"
                if "bare" in failed
                else f"{name} failed"
                if name in failed
                else "stalls"
            )
            print(f"{name} / bare: not measured ({why} in every round)")
            code = 1
            continue
        m, lo, hi = median_ci(ratios)
        t, tlo, thi = median_ci(ttft)
        print(
            f"{name} / bare over {len(ratios)} paired round(s) ({len(dropped)} left out): throughput "
            f"median {m:.3f}x [95 % CI {lo:.3f}, {hi:.3f}] (goal >= 0.97x: {'met' if m >= 0.97 else 'not met'}); "
            f"TTFT p50 overhead median {t:+.1f} % [{tlo:+.1f}, {thi:+.1f}] "
            f"(goal <= +5 %: {'met' if t <= 5 else 'not met'}); per round {', '.join(f'{x:.3f}' for x in ratios)}"
        )
        if split := where(rounds, name):
            inside, outside = (statistics.median(x) for x in zip(*split, strict=True))
            print(
                f"  {name} - bare, TTFT mean over {len(split)} paired round(s): {inside:+.2f} ms in vLLM's engine "
                f"(its own time-to-first-token metric), {outside:+.2f} ms outside it (HTTP path, proxy, client)"
            )
    if failed:
        print(f"failed runs: {', '.join(sorted(set(failed)))}")
        code = 1
    return code


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

"""Benchmark: plain lm-eval vs quantsweep's actor pool with 1 and 2 actors, in one run.

The same model (the tiny Llama, built with larger task files so compute dominates) and the same
tasks are evaluated three ways, each timed end to end including engine start-up:
  plain  - `lm_eval.simple_evaluate(model="vllm")` in a fresh process, as a user would run it;
  pool-1 - the Ray actor pool with 1 actor;  pool-2 - with 2 actors.
Prints wall times, speed-ups over plain and over pool-1, and whether all metrics are identical. It
also prints how many cores each run kept busy on average (from /proc/stat, the whole machine): a run
that already keeps b of the machine's n cores busy can be sped up at most n/b times by spreading the
same CPU work over more processes, which bounds what any pool can reach on a small CPU machine.
Usage: .venv/bin/python bench/eval_scaling.py [--mc-docs 600] [--gen-docs 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

TASKS = ["qs_tiny_mc", "qs_tiny_gen"]


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine so far, from /proc/stat's first line."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class Busy:
    """Average busy cores of the machine over a `with` block."""

    def __enter__(self) -> Busy:
        self.start = _cpu_jiffies()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = (b - a for a, b in zip(self.start, _cpu_jiffies(), strict=True))
        self.cores = (os.cpu_count() or 1) * busy / total if total else 0.0


def _metrics(out: dict) -> dict:
    return {t: {k: v for k, v in out["results"][t].items() if "," in k} for t in TASKS}


def _kwargs() -> dict:
    from serve.config import EngineConfig
    from serve.engine import lm_eval_kwargs
    from serve.host import detect

    return lm_eval_kwargs(EngineConfig(), detect(), tp=1, cpu=True, seed=1234)


def plain(model: str, include: str, seed: int) -> tuple[float, dict]:
    """Unsharded lm-eval with its own vLLM backend, in a fresh Ray worker process."""
    import ray

    from cluster.eval.harness import reference_evaluate
    from serve.config import EngineConfig
    from serve.engine import IN_PROCESS_ENV, cpu_env

    env = {**IN_PROCESS_ENV, **cpu_env(EngineConfig(), core=0), "VLLM_CPU_OMP_THREADS_BIND": "auto"}
    fn = ray.remote(num_cpus=1, max_calls=1)(reference_evaluate).options(runtime_env={"env_vars": env})
    start = time.perf_counter()
    out = ray.get(fn.remote(model, _kwargs(), TASKS, include, None, seed))
    return time.perf_counter() - start, _metrics(out)


def pool(model: str, include: str, n: int, seed: int) -> tuple[float, float, dict]:
    """n engine hosts: total time (start-up included), start-up time, metrics."""
    import ray

    from cluster.eval.engine_host import cpu_host
    from cluster.eval.harness import evaluate_suite
    from cluster.eval.pool import ShardedLM
    from cluster.stages.health import load_on_hosts
    from serve.config import EngineConfig

    start = time.perf_counter()
    hosts = [cpu_host(EngineConfig(), slot) for slot in range(n)]
    assert load_on_hosts(hosts, model, _kwargs())["ok"]
    ready = time.perf_counter() - start
    try:
        out = evaluate_suite(ShardedLM(hosts), [(t, None) for t in TASKS], include, None, False, False, seed)
    finally:
        for h in hosts:
            ray.kill(h)
    return time.perf_counter() - start, ready, _metrics(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mc-docs", type=int, default=600)
    parser.add_argument("--gen-docs", type=int, default=200)
    args = parser.parse_args()
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    import ray

    from cluster.models import tinymodel

    cache = Path(tempfile.mkdtemp(prefix="qs-bench-"))
    assets = tinymodel.build(cache, tinymodel.TinySpec(mc_docs=args.mc_docs, gen_docs=args.gen_docs))
    ray.init(
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}},
    )
    spec, include = str(assets.model_dir), str(assets.tasks_dir)
    with Busy() as b_plain:
        t_plain, m_plain = plain(spec, include, 1234)
    with Busy() as b1:
        t1, s1, m1 = pool(spec, include, 1, 1234)
    with Busy() as b2:
        t2, s2, m2 = pool(spec, include, 2, 1234)
    n = os.cpu_count() or 1
    print(f"tasks: {TASKS} ({args.mc_docs} multiple-choice docs x 4 choices, {args.gen_docs} generations)")
    print(f"plain lm-eval (vllm backend): {t_plain:7.1f}s, {b_plain.cores:.2f} of {n} cores busy")
    print(
        f"actor pool, 1 actor:          {t1:7.1f}s (engine start {s1:.1f}s, evaluation {t1 - s1:.1f}s), "
        f"{b1.cores:.2f} of {n} cores busy"
    )
    print(
        f"actor pool, 2 actors:         {t2:7.1f}s (engine start {s2:.1f}s, evaluation {t2 - s2:.1f}s), "
        f"{b2.cores:.2f} of {n} cores busy"
    )
    print(f"ceiling for the same CPU work as plain on {n} cores: {n / b_plain.cores:.2f}x")
    print(f"evaluation-only speed-up 2 actors / 1 actor: {(t1 - s1) / (t2 - s2):.2f}x")
    print(f"speed-up 2 actors / plain lm-eval: {t_plain / t2:.2f}x")
    print(f"speed-up 2 actors / 1 actor:       {t1 / t2:.2f}x")
    print(f"metrics identical (plain, 1, 2): {m_plain == m1 == m2}")
    ray.shutdown()


if __name__ == "__main__":
    main()

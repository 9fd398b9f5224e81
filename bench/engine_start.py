"""Benchmark: what a fresh CPU vLLM engine process spends before its first answers: with and
without compiled bytecode of the installed packages, and with vLLM's small torch.compile'd sampler
ops compiled by Inductor (cold or warm cache) or with torch.compile off.

Where `PYTHONDONTWRITEBYTECODE=1` is set (as on these machines), Python never caches the bytecode
of what it imports: unless the installer compiled it (`uv pip sync --compile-bytecode`, as the
Makefile does), every process that imports vLLM compiles some 4,000 modules from source again. And
vLLM's CPU build runs the model eagerly (`enforce_eager`), but a few sampler helpers stay wrapped in
`torch.compile` with the platform's Inductor backend (ranks of returned log-probabilities, random
sampling): without a compile cache, the first request of a new engine process waits for a C++
compiler. Each condition runs in fresh interpreters, interleaved, one at a time on one core, as
evaluation hosts, tuning trials and Serve replicas start: import, engine init, the first request
with log-probabilities (greedy), the first sampled request, the same two again. "No bytecode" hides
the installed bytecode (`PYTHONPYCACHEPREFIX` pointing at an empty directory). Also checked: the
greedy tokens and log-probabilities are identical in every condition.

    python bench/engine_start.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["1 2 3 4", "The capital of", "a b c d e f", "7 + 5 ="]
PHASES = ("import_s", "init_s", "logprobs_s", "sampled_s", "again_s")


def child(model: str) -> None:
    """One engine process: time each phase, print them and the greedy answers as JSON."""
    start = time.perf_counter()
    from serve.config import EngineConfig
    from serve.engine import engine_kwargs, prepare_process
    from serve.host import detect

    prepare_process()
    import vllm

    t = {"import_s": time.perf_counter() - start}
    engine = EngineConfig(max_num_seqs=8, max_model_len=512, cpu_kv_cache_gib=1)
    llm = vllm.LLM(model=model, **engine_kwargs(engine, detect()))
    t["init_s"] = time.perf_counter() - start - sum(t.values())
    greedy = vllm.SamplingParams(max_tokens=8, temperature=0, logprobs=5, prompt_logprobs=5)
    sampled = vllm.SamplingParams(max_tokens=8, temperature=0.8, seed=1)
    out = llm.generate(PROMPTS, greedy, use_tqdm=False)
    t["logprobs_s"] = time.perf_counter() - start - sum(t.values())
    llm.generate(PROMPTS, sampled, use_tqdm=False)
    t["sampled_s"] = time.perf_counter() - start - sum(t.values())
    llm.generate(PROMPTS, greedy, use_tqdm=False)
    llm.generate(PROMPTS, sampled, use_tqdm=False)
    t["again_s"] = time.perf_counter() - start - sum(t.values())
    answers = [
        [
            (tok, round(o.outputs[0].logprobs[i][tok].logprob, 5))
            for i, tok in enumerate(o.outputs[0].token_ids)
        ]
        for o in out
    ]
    print("RESULT " + json.dumps({**t, "answers": answers}), flush=True)


def run_child(model: str, env: dict[str, str]) -> dict:
    from serve.config import EngineConfig
    from serve.engine import IN_PROCESS_ENV, cpu_env

    full = {**os.environ, **IN_PROCESS_ENV, **cpu_env(EngineConfig(), core=0), **env}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", model], cwd=REPO, env=full, capture_output=True, text=True
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"engine process failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per condition")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    from cluster.models import tinymodel

    work = Path(tempfile.mkdtemp(prefix="qs-engine-start-"))
    model = str(tinymodel.build(work / "assets").model_dir)
    empty, warm = work / "no-bytecode", str(work / "inductor-warm")
    empty.mkdir()
    no_pyc = {"PYTHONPYCACHEPREFIX": str(empty), "PYTHONDONTWRITEBYTECODE": "1"}
    run_child(model, {"TORCHINDUCTOR_CACHE_DIR": warm})  # fills the warm compile cache
    conditions = {
        "no bytecode": lambda i: {**no_pyc, "TORCHINDUCTOR_CACHE_DIR": warm},
        "bytecode": lambda i: {"TORCHINDUCTOR_CACHE_DIR": warm},
        "bytecode, cold compile": lambda i: {"TORCHINDUCTOR_CACHE_DIR": str(work / f"cold{i}")},
        "bytecode, compile off": lambda i: {"TORCH_COMPILE_DISABLE": "1"},
    }
    results: dict[str, list[dict]] = {name: [] for name in conditions}
    for i in range(args.runs):  # interleaved, so a slow spell of the machine hits every condition
        for name, env in conditions.items():
            results[name].append(run_child(model, env(i)))
    print(f"{'condition':24} " + " ".join(f"{p:>11}" for p in PHASES) + f" {'total_s':>9}")
    totals = {}
    for name, rows in results.items():
        med = {p: statistics.median(r[p] for r in rows) for p in PHASES}
        totals[name] = statistics.median(sum(r[p] for p in PHASES) for r in rows)
        print(f"{name:24} " + " ".join(f"{med[p]:11.2f}" for p in PHASES) + f" {totals[name]:9.2f}")
    for name in conditions:
        if name != "bytecode":
            print(
                f"ratio {name} / bytecode: {totals[name] / totals['bytecode']:.2f}x (median of {args.runs})"
            )
    same = {json.dumps(r["answers"]) for rows in results.values() for r in rows}
    print(
        f"greedy tokens and log-probabilities identical in every process: {'yes' if len(same) == 1 else 'NO'}"
    )
    if len(same) != 1:
        sys.exit(1)


if __name__ == "__main__":
    main()

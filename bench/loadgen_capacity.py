"""Benchmark: the most streamed requests/s our load generator sustains, vs `vllm bench serve` and GuideLLM.

All three drive the same null server (serve.nullserver: instant answers, 16 streamed output tokens,
32-token prompts), started in this process; each client runs in its own process, so none shares
the server's interpreter. Each tool is offered the same ladder of rates, `--seconds` worth of
requests per step. A step is sustained when no request failed and completed / (last response end -
first request sent) >= 90 % of the offered rate. A tool's maximum sustained rate is that achieved
rate (at most the offered one) at its highest sustained step; its ladder stops at the first miss,
then `--refine` bisection steps between its last sustained rung and that miss narrow the maximum
down (ours and `vllm bench serve`; GuideLLM's is an order of magnitude lower and keeps its rung).
Ours and GuideLLM send at a constant rate; `vllm bench serve` has no constant mode, so it gets gamma
arrivals with burstiness 1000 (inter-arrival CV ~3 %). GuideLLM runs its ladder in one process (its
steps after a miss are dropped). Prints every step, each tool's maximum, ours/vllm and
ours/guidellm, and whether the goal (ours >= 3x the better one) is met. Past the listed rates every
ladder goes on climbing (x1.25 a rung) until the tool misses, so ours gets a maximum, not a bound.
"ours" runs with `--processes` client processes (serve.client_processes; default: one per core;
GuideLLM itself starts up to 10 worker processes, `vllm bench serve` is one asyncio process); "ours,
1 process" climbs the same ladder as one process, for comparison.

Then our generator's own accuracy: at --accuracy-rate (1,000 req/s) against a null server that plays an
engine (20 ms before the first token, 5 ms between tokens) and stamps when it read each request and
wrote each token (same monotonic clock as the client), each request's measured TTFT and each measured
inter-token gap are compared with what the server did. Prints |error| p50 and p99 in ms (goal <= 0.5
at p50, <= 2 at p99), and the error against the nominal delays too (that one includes the server's
own timer slack). The accuracy run is made with 1 process and with `--processes`.
Usage: .venv/bin/python bench/loadgen_capacity.py [--guidellm .venv-tools/bin/guidellm] [--rates 100,200] [--processes 2]
(`make tools` installs GuideLLM into .venv-tools.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUSTAINED = 0.9
PROMPT_TOKENS, OUTPUT_TOKENS = 32, 16
MODEL = "null-model"
GOAL = 3.0
ONE = "ours, 1 process"  # ours as a single client process, beside ours with --processes
GROWTH, TOP = 1.25, 100_000.0  # past the listed rates: the next rung, and where climbing stops
ACC_TTFT_S, ACC_ITL_S = 0.020, 0.005  # the engine timing the null server plays for the accuracy run
ACC_GOAL_MS = {"p50": 0.5, "p99": 2.0}


@dataclass
class Step:
    """One offered rate and what a tool made of it."""

    offered: float
    completed: int
    failed: int
    span_s: float
    note: str = ""

    @property
    def achieved(self) -> float:
        return self.completed / self.span_s if self.span_s > 0 else 0.0

    @property
    def sustained(self) -> bool:
        return self.failed == 0 and self.completed > 0 and self.achieved >= SUSTAINED * self.offered


def _span(starts: list[float], ends: list[float]) -> float:
    return max(ends) - min(starts) if starts and ends else 0.0


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}


def _constant(url: str, prompts: list[list[int]], rate: float, n: int, processes: int) -> list:
    """Our generator: `n` requests at a constant `rate` from `processes` client processes."""
    from serve import loadgen

    return loadgen.run_constant(
        url,
        MODEL,
        prompts,
        OUTPUT_TOKENS,
        rate=rate,
        duration_s=n / rate,
        max_requests=n,
        timeout_s=30,
        processes=processes,
    )


def worker(url: str, rate: float, n: int, processes: int) -> None:
    """Child process: our generator at a constant `rate` for `n` requests; prints one JSON line."""
    from serve import loadgen

    recs = _constant(url, loadgen.make_prompts(512, PROMPT_TOKENS, 256, seed=0), rate, n, processes)
    ok = [r for r in recs if r.ok]
    ends = [r.send_time + (r.end_s or 0.0) for r in recs]
    print(
        json.dumps(
            {
                "completed": len(ok),
                "failed": len(recs) - len(ok),
                "span": _span([r.send_time for r in recs], ends),
            }
        )
    )


def accuracy_worker(url: str, rate: float, n: int, processes: int) -> None:
    """Child process: `n` distinct prompts at a constant `rate`; prints the prompts and chunk times."""
    from serve import loadgen

    prompts = loadgen.make_prompts(512, PROMPT_TOKENS, n, seed=1)  # one per request: the server's key
    recs = _constant(url, prompts, rate, n, processes)
    print(json.dumps({"prompts": prompts, "records": [{"ok": r.ok, "chunk_s": r.chunk_s} for r in recs]}))


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


def accuracy(rate: float, seconds: float, processes: int) -> int:
    """Measure and print our TTFT / ITL error against a paced, stamping null server; 1 if not measured."""
    from serve.nullserver import Stamps, null_server

    n, stamps = max(1, round(rate * seconds)), Stamps()
    with null_server(ttft_s=ACC_TTFT_S, itl_s=ACC_ITL_S, stamps=stamps) as url:
        cmd = [sys.executable, __file__, "--accuracy-worker", url, str(rate), str(n), str(processes)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    print(
        f"\ngenerator accuracy at {rate:g} req/s with {processes} client process(es) ({n} requests; "
        f"server: TTFT {ACC_TTFT_S * 1e3:g} ms, ITL {ACC_ITL_S * 1e3:g} ms)"
    )
    if proc.returncode:
        print(
            f"accuracy: not measured (worker exit {proc.returncode}: {' '.join(proc.stderr.split())[-200:]})"
        )
        return 1
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    errs: dict[str, list[float]] = {"ttft": [], "itl": [], "ttft_nominal": [], "itl_nominal": []}
    lost = 0
    for prompt, rec in zip(out["prompts"], out["records"], strict=True):
        st, chunks = stamps.get(tuple(prompt)), rec["chunk_s"]
        if not rec["ok"] or not st or len(st) != OUTPUT_TOKENS + 1 or len(chunks) != OUTPUT_TOKENS:
            lost += 1
            continue
        recv, writes = st[0], st[1:]
        errs["ttft"].append(chunks[0] - (writes[0] - recv))
        errs["ttft_nominal"].append(chunks[0] - ACC_TTFT_S)
        for j in range(1, OUTPUT_TOKENS):
            gap = chunks[j] - chunks[j - 1]
            errs["itl"].append(gap - (writes[j] - writes[j - 1]))
            errs["itl_nominal"].append(gap - ACC_ITL_S)
    if not errs["ttft"]:
        print(f"accuracy: not measured (no request completed; {lost} lost)")
        return 1
    print(f"requests compared: {len(errs['ttft'])}, failed or incomplete: {lost}")
    met = True
    for name, xs in errs.items():
        ms = [abs(x) * 1e3 for x in xs]
        p50, p99 = _pct(ms, 50), _pct(ms, 99)
        line = f"{name:<13} |error| p50 {p50:.3f} ms  p99 {p99:.3f} ms  (signed median {_pct([x * 1e3 for x in xs], 50):+.3f} ms)"
        if not name.endswith("nominal"):
            ok = p50 <= ACC_GOAL_MS["p50"] and p99 <= ACC_GOAL_MS["p99"]
            met &= ok
            line += (
                f"  goal <= {ACC_GOAL_MS['p50']:g} / {ACC_GOAL_MS['p99']:g} ms: {'met' if ok else 'not met'}"
            )
        print(line)
    print(f"accuracy goal (vs what the server did): {'met' if met else 'not met'}")
    return 0


def ours_step(url: str, rate: float, n: int, processes: int) -> Step:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", url, str(rate), str(n), str(processes)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    if proc.returncode:
        return Step(rate, 0, n, 0.0, f"exit {proc.returncode}: {proc.stderr[-200:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return Step(rate, out["completed"], out["failed"], out["span"])


def vllm_step(url: str, tokenizer: str, out_dir: Path, rate: float, n: int) -> Step:
    name = f"vllm-{rate:g}.json"
    cmd = [sys.executable, "-m", "serve.vllm_cli", "bench", "serve", "--backend", "openai"]
    cmd += ["--base-url", url, "--model", MODEL, "--tokenizer", tokenizer, "--dataset-name", "random"]
    cmd += ["--random-input-len", str(PROMPT_TOKENS), "--random-output-len", str(OUTPUT_TOKENS)]
    cmd += ["--ignore-eos", "--request-rate", str(rate), "--burstiness", "1000", "--num-prompts", str(n)]
    cmd += ["--save-result", "--save-detailed", "--result-dir", str(out_dir), "--result-filename", name]
    proc = subprocess.run(cmd + ["--disable-tqdm"], capture_output=True, text=True, env=_env(), timeout=300)
    path = out_dir / name
    if proc.returncode or not path.is_file():
        return Step(rate, 0, n, 0.0, f"exit {proc.returncode}: {proc.stderr[-200:]}")
    res = json.loads(path.read_text())
    ok = [i for i, e in enumerate(res["errors"]) if not e]
    starts = res["start_times"]  # perf_counter seconds, same clock as latencies
    ends = [starts[i] + res["latencies"][i] for i in ok]
    return Step(rate, res["completed"], res["failed"], _span(starts, ends))


def guidellm_ladder(
    exe: str, url: str, tokenizer: str, out_dir: Path, rates: list[float], seconds: float
) -> list[Step]:
    """All rates in one GuideLLM run (a scenario file: its CLI's kind=... lists cannot carry commas)."""
    counts = [max(1, round(r * seconds)) for r in rates]
    result = out_dir / "guidellm.json"
    scenario = {
        "spec": {
            "backend": {
                "kind": "openai_http",
                "target": url,
                "model": MODEL,
                "request_format": "/v1/completions",
                "validate_backend": False,  # the null server has no /health
            },
            "profile": {"kind": "constant", "rate": rates},
            "data": [
                {"kind": "synthetic_text", "prompt_tokens": PROMPT_TOKENS, "output_tokens": OUTPUT_TOKENS}
            ],
            "tokenizer": {"kind": "huggingface_auto", "model": tokenizer},
            "constraints": [
                {"kind": "max_requests", "count": counts},
                {"kind": "max_duration", "seconds": 3 * seconds},
            ],
            "outputs": [{"kind": "json", "path": str(result)}],
        }
    }
    path = out_dir / "guidellm-scenario.json"
    path.write_text(json.dumps(scenario))
    cmd = [exe, "run", "--scenario", str(path), "--disable-console-interactive"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900)
    if proc.returncode or not result.is_file():
        return [
            Step(r, 0, n, 0.0, f"exit {proc.returncode}: {proc.stderr[-200:]}")
            for r, n in zip(rates, counts, strict=True)
        ]
    steps = []
    for bench in json.loads(result.read_text())["benchmarks"]:
        reqs = [r for kind in ("successful", "errored", "incomplete") for r in bench["requests"][kind]]
        state = bench["scheduler_state"]
        starts = [r["request_start_time"] for r in reqs if r.get("request_start_time")]
        ends = [r["request_end_time"] for r in bench["requests"]["successful"]]
        failed = state["errored_requests"] + state["cancelled_requests"]
        steps.append(
            Step(
                bench["config"]["strategy"]["rate"], state["successful_requests"], failed, _span(starts, ends)
            )
        )
    # Its ladder ran to the top in one process; as for the others, only the rungs up to its first
    # miss count (a later rung that happens to pass is not a sustained maximum).
    misses = [i for i, s in enumerate(steps) if not s.sustained]
    return steps[: misses[0] + 1] if misses else steps


def ladder(rates: list[float]) -> Iterator[float]:
    """The listed rates, then x`GROWTH` a rung until `TOP`: a tool climbs until it misses."""
    yield from rates
    rate = rates[-1] * GROWTH
    while rate <= TOP:
        yield round(rate)
        rate *= GROWTH


def climb(step: Callable[[float, int], Step], rates: list[float], seconds: float, refine: int) -> list[Step]:
    """Offer each rate in turn until one is not sustained, then bisect `refine` times below that miss."""
    steps: list[Step] = []
    ok, miss = 0.0, None
    for rate in ladder(rates):
        steps.append(step(rate, max(1, round(rate * seconds))))
        if not steps[-1].sustained:
            miss = rate
            break
        ok = rate
    # A coarse ladder credits a tool only with its last sustained rung: bisecting between that rung and
    # the miss finds each tool's maximum to within (miss - rung) / 2**refine, so the ratio is not an
    # artefact of where the rungs happen to lie.
    lo, hi = ok, miss
    for _ in range(refine if ok and hi else 0):
        mid = round((lo + hi) / 2)
        steps.append(step(mid, max(1, round(mid * seconds))))
        lo, hi = (mid, hi) if steps[-1].sustained else (lo, mid)
    return steps


def best(steps: list[Step]) -> float:
    """The highest rate sustained (achieved, at most the rate offered); every step offered is below the miss."""
    # A tool that dispatches its first requests late (GuideLLM) finishes the step in a shorter
    # span and "achieves" more than it was offered; the rate it sustained is still the offered one.
    return max((min(s.achieved, s.offered) for s in steps if s.sustained), default=0.0)


def crash(steps: list[Step]) -> str | None:
    """Why a tool gave no measurement: it exited non-zero or died of a signal on some rung."""
    bad = next((s for s in steps if s.note.startswith("exit ")), None)
    return " ".join(bad.note.split())[:160] if bad else None


def report(results: dict[str, list[Step]], walls: dict[str, float], rates: list[float]) -> int:
    """Print the table, ratios and goal; 1 when a comparison could not be measured (a tool crashed)."""
    print(f"{'tool':<18}{'offered/s':>10}{'done':>7}{'failed':>7}{'achieved/s':>12}  sustained")
    for tool, steps in results.items():
        for s in steps:
            print(
                f"{tool:<18}{s.offered:>10.0f}{s.completed:>7}{s.failed:>7}{s.achieved:>12.1f}  "
                f"{'yes' if s.sustained else 'no'} {s.note}"
            )
    tops = {tool: best(steps) for tool, steps in results.items()}
    for tool, top in tops.items():
        capped = all(s.sustained for s in results[tool])  # never missed: the ladder's top is a bound
        print(
            f"max sustained {tool}: {top:.1f} req/s{' (ladder top: at least)' if capped else ''} "
            f"[{walls[tool]:.0f} s]"
        )
    ours, crashed = tops["ours"], {tool: crash(steps) for tool, steps in results.items()}
    for me in (t for t in ("ours", ONE) if t in results):
        for tool in ("vllm bench serve", "guidellm"):
            why = crashed[me] or crashed[tool]
            if why:  # a comparison whose anchor (or ours) crashed measured nothing
                print(f"ratio {me} / {tool}: not measured ({me if crashed[me] else tool} failed: {why})")
            elif tops[tool] <= 0:
                print(f"ratio {me} / {tool}: not measured ({tool} sustained no rate)")
            else:
                print(f"ratio {me} / {tool}: {tops[me] / tops[tool]:.2f}x")
    anchors = ("vllm bench serve", "guidellm")
    missing = [t for t in (*anchors, "ours") if crashed[t] or tops[t] <= 0]
    if missing:
        print(f"goal >= {GOAL:g}x the better one: not measured ({', '.join(missing)} gave no measurement)")
        return 1
    better = max(anchors, key=lambda t: tops[t])
    met = ours >= GOAL * tops[better]
    print(f"goal >= {GOAL:g}x the better one ({better}): {'met' if met else 'not met'}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guidellm", default=str(REPO / ".venv-tools" / "bin" / "guidellm"))
    parser.add_argument(
        "--rates",
        default="50,100,200,400,800,1200,1600,2000,2400,2800,3200,3600,4000,4800,5600,6400",
        help="offered req/s, ascending",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="requests per step = rate x seconds")
    parser.add_argument(
        "--refine",
        type=int,
        default=3,
        help="bisection steps between a tool's last sustained rate and its miss",
    )
    parser.add_argument("--accuracy-rate", type=float, default=1000.0, help="req/s of the accuracy run")
    parser.add_argument("--accuracy-only", action="store_true", help="skip the capacity ladders")
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="client processes of ours (serve.client_processes); ours with 1 is measured too",
    )
    hidden = ("URL", "RATE", "N", "PROCESSES")
    parser.add_argument("--worker", nargs=4, metavar=hidden, help=argparse.SUPPRESS)
    parser.add_argument("--accuracy-worker", nargs=4, metavar=hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.processes < 1:
        parser.error(f"--processes must be >= 1, got {args.processes}")
    for role, fn in (("worker", worker), ("accuracy_worker", accuracy_worker)):
        if given := getattr(args, role):
            fn(given[0], float(given[1]), int(given[2]), int(given[3]))
            return
    counts = sorted({1, args.processes})
    if args.accuracy_only:
        sys.exit(max(accuracy(args.accuracy_rate, args.seconds, p) for p in counts))
    if not Path(args.guidellm).is_file():
        sys.exit(f"error: GuideLLM not found at {args.guidellm} (run `make tools` or pass --guidellm PATH)")
    from cluster.models import tinymodel
    from serve.nullserver import null_server

    rates = [float(r) for r in args.rates.split(",")]
    tokenizer = str(tinymodel.build(Path(tempfile.gettempdir()) / "qs-bench-cache").model_dir)
    results: dict[str, list[Step]] = {}
    walls: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, null_server() as url:
        out = Path(tmp)
        runs: dict[str, Callable[[], list[Step]]] = {
            "ours": lambda: climb(
                lambda r, n: ours_step(url, r, n, args.processes), rates, args.seconds, args.refine
            ),
            "vllm bench serve": lambda: climb(
                lambda r, n: vllm_step(url, tokenizer, out, r, n), rates, args.seconds, args.refine
            ),
            "guidellm": lambda: guidellm_ladder(args.guidellm, url, tokenizer, out, rates, args.seconds),
        }
        if args.processes > 1:
            runs[ONE] = lambda: climb(lambda r, n: ours_step(url, r, n, 1), rates, args.seconds, args.refine)
        for tool, run in runs.items():
            t0 = time.monotonic()
            results[tool] = run()
            walls[tool] = time.monotonic() - t0
    print(f"ours: {args.processes} client process(es) (serve.client_processes)")
    status = report(results, walls, rates)
    acc = [accuracy(args.accuracy_rate, args.seconds, p) for p in counts]
    sys.exit(max(acc) or status)


if __name__ == "__main__":
    main()

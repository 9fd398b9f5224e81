"""Benchmark: proxy-first ASHA, a KL prescreen (and plain ASHA) vs the full grid, on the organism.

All searches cover the same W4A16 grid (sweeps/w4a16_recovery.yaml's knobs, cut to 8 recipes that
fit a CPU) on an organism built with larger task files (`builder_args`: 1,000 documents per task,
so scoring a recipe costs more than making it, as with real suites), each in its own output
directory so none reuses another's quantized artifacts:
- full grid: every trial scored on the full budget, one report;
- proxy-first ASHA (`tune.proxy: kl`): the first rung is the quality gate's KL vs the baseline,
  measured right after quantizing; trials it stops never start an engine; then the document rungs;
- KL prescreen + ASHA (`tune.prescreen_keep: 1/4`): every recipe quantized and measured on KL first,
  the best quarter scored on the document rungs (async ASHA's first rung lets the first trials
  through whatever their KL, so it keeps about 3 of 8);
- plain ASHA (with --with-asha): document rungs only.
Compute is the sum of the trials' own wall times (trials run one at a time here, in reused trial
processes: each imports llmcompressor, vLLM and lm-eval once); the whole runs' wall times are
printed too. Prints each
search's compute, its best full-budget recovery and whether it came within 0.2 points of the grid's
best, the compute ratio against the grid (goal for proxy-first: <= 30 %), and the rank correlation
(Spearman's rho, bootstrap 95 % interval) of each proxy with full recovery over the grid's recipes.
Usage: .venv/bin/python bench/tune_efficiency.py [--rungs 50,200,1000] [--docs 1000] [--with-asha]
       [--searches proxy,prescreen] [--reuse DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parent.parent
REDUCTION = 4  # ASHA keeps the best quarter at each rung
SPACE = {
    "group_size": [32, 128],
    "observer": ["minmax", "mse"],
    "calibration.num_samples": [16, 256],
}


def _conf(root: Path, docs: int) -> Path:
    """A copy of conf/ whose organism has `docs` documents per task."""
    conf = root / "conf"
    shutil.copytree(REPO / "conf", conf)
    path = conf / "models" / "organism.yaml"
    model = yaml.safe_load(path.read_text())
    model["builder_args"] = {"mc_docs": docs, "gen_docs": docs}
    path.write_text(yaml.safe_dump(model))
    return conf


def _sweep(
    root: Path, name: str, scheduler: str, rungs: list[int], proxy: str = "none", keep: float | None = None
) -> Path:
    data = yaml.safe_load((REPO / "sweeps" / "w4a16_recovery.yaml").read_text())
    data["name"] = name
    data["conf_dir"] = str(root / "conf")
    data["tune"].update(
        search="grid",
        scheduler=scheduler,
        rungs=rungs,
        num_samples=1,
        space=SPACE,
        validation_suite=None,
        proxy=proxy,
        prescreen_keep=keep,
        reduction_factor=REDUCTION,
    )
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(sweep: Path, out: Path, cache: Path) -> tuple[list[dict], float]:
    """Run the sweep through the CLI; its trial rows and the wall time of the whole run."""
    out.mkdir(parents=True)
    (out / "cache").symlink_to(cache)  # the organism is built once and shared
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cluster", "run", str(sweep), f"output_root={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"{sweep.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return _read(out), time.perf_counter() - start


def _read(out: Path) -> list[dict]:
    """A finished run's trial rows, each with where its time went."""
    rows = pq.read_table(out / "datasets" / "trials").to_pylist()
    last: dict[str, dict] = {}  # artifact key -> its furthest report (a prescreened recipe has two logs)
    for log in out.glob("tune/**/result.json"):
        lines = log.read_text().splitlines()
        report = json.loads(lines[-1]) if lines else {}
        key = report.get("artifact_key")
        if key and (report.get("budget") or 0) >= (last.get(key, {}).get("budget") or 0):
            last[key] = report
    for r in rows:  # where each trial's time went
        found = last.get(r["artifact_key"], {})
        r["split"] = tuple(found.get(k) or 0.0 for k in ("quantize_s", "engine_start_s", "eval_s"))
    failed = [r["trial_id"] for r in rows if r["status"] != "ok"]
    if failed:
        sys.exit(f"trials {failed} failed; see {out / 'tune'}")
    return rows


def _compute(rows: list[dict]) -> float:
    return sum(r["wall_s"] or 0.0 for r in rows)


def _search_line(name: str, rows: list[dict], grid: list[dict], grid_best: float) -> None:
    full = [r for r in rows if not r["stopped_early"]]
    best = max(r["recovery_pct"] for r in full)
    ratio = _compute(rows) / _compute(grid)
    print(
        f"{name}: compute {_compute(rows):.0f}s = {100 * ratio:.1f}% of the grid's; "
        f"{len(rows) - len(full)} of {len(rows)} trials stopped early; best full-budget recovery "
        f"{best:.2f}% ({'within' if best >= grid_best - 0.2 else 'NOT within'} 0.2 points of the grid's best)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rungs", default="50,200,1000", help="documents per task at each ASHA rung")
    parser.add_argument("--docs", type=int, default=1000, help="documents per organism task")
    parser.add_argument("--with-asha", action="store_true", help="also run plain ASHA (no proxy rung)")
    parser.add_argument(
        "--searches",
        default="proxy,prescreen",
        help="searches to run against the grid: proxy (KL as ASHA's first rung), prescreen (KL screens "
        "every recipe, the best 1/reduction go on to ASHA's document rungs); empty: the grid alone",
    )
    parser.add_argument(
        "--reuse", help="an earlier run's directory: reuse its built organism and full-grid run"
    )
    args = parser.parse_args()
    rungs = [int(x) for x in args.rungs.split(",")]
    root = Path(tempfile.mkdtemp(prefix="qs-tune-bench-"))
    _conf(root, args.docs)
    cache = root / "cache"
    walls: dict[str, float] = {}
    if args.reuse:  # same organism, same grid: only the searches under test run again
        cache.symlink_to(Path(args.reuse) / "cache")
        grid = _read(Path(args.reuse) / "grid")
    else:
        cache.mkdir()
        grid, walls["grid"] = _run(_sweep(root, "bench_grid", "fifo", [rungs[-1]]), root / "grid", cache)
    searches = {}
    chosen = [x for x in args.searches.split(",") if x]
    if "proxy" in chosen:
        searches["proxy-first ASHA"], walls["proxy-first ASHA"] = _run(
            _sweep(root, "bench_proxy", "asha", rungs, "kl"), root / "proxy", cache
        )
    if "prescreen" in chosen:
        searches["KL prescreen + ASHA"], walls["KL prescreen + ASHA"] = _run(
            _sweep(root, "bench_prescreen", "asha", rungs, "kl", keep=1 / REDUCTION),
            root / "prescreen",
            cache,
        )
    if args.with_asha:
        searches["plain ASHA"], walls["plain ASHA"] = _run(
            _sweep(root, "bench_asha", "asha", rungs), root / "asha", cache
        )

    grid_best = max(r["recovery_pct"] for r in grid)
    spread = grid_best - min(r["recovery_pct"] for r in grid)
    print(
        f"grid: {len(grid)} recipes, {grid[0]['budget']} docs each; space {SPACE}; ASHA rungs {rungs}, x{REDUCTION}"
    )
    print(
        f"full grid: compute {_compute(grid):.0f}s, best recovery {grid_best:.2f}%, spread {spread:.2f} points"
    )
    for name, rows in searches.items():
        _search_line(name, rows, grid, grid_best)
    if "grid" in walls:  # the whole `cluster run`: Ray start, the baseline, every trial, commits
        for name in searches:
            print(
                f"{name}: whole run {walls[name]:.0f}s vs the grid's {walls['grid']:.0f}s = {walls[name] / walls['grid']:.2f}x"
            )
    from cluster.report.proxies import spearman, trial_pairs

    for proxy, (xs, ys) in trial_pairs(grid).items():
        rho, lo, hi = spearman(xs, ys)
        print(
            f"proxy {proxy} vs full recovery over the grid's {len(xs)} recipes: rho {rho:+.2f} (95% CI {lo:+.2f} to {hi:+.2f})"
        )
    for name, rows in (("grid", grid), *searches.items()):
        q, e, v = (sum(r["split"][i] for r in rows) / len(rows) for i in range(3))
        print(f"{name} mean per trial: quantize {q:.1f}s, engine start {e:.1f}s, scoring {v:.1f}s")
        for r in sorted(rows, key=lambda r: -(r["recovery_pct"] or 0)):
            params = ", ".join(f"{k}={v}" for k, v in r["params"])
            rung = " ".join(f"{x:.1f}" for x in r["rung_recovery_pct"])
            rec = "-" if r["recovery_pct"] is None else f"{r['recovery_pct']:.2f}%"
            print(f"  {params}: recovery {rec} KL {r['proxy_kl']:.4f} rungs [{rung}] {r['wall_s']:.0f}s")


if __name__ == "__main__":
    main()

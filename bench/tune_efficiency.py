"""Benchmark: multi-fidelity search (ASHA over eval-sample rungs) vs the full grid, on the organism.

Both searches cover the same W4A16 grid (sweeps/w4a16_recovery.yaml's knobs, cut to a grid that
fits a CPU) on an organism built with larger task files (`builder_args`: 1,000 documents per task,
so scoring a recipe costs more than making it, as with real suites), each in its own output
directory so neither reuses the other's quantized artifacts:
- full grid: every trial scored on the full budget, one report;
- ASHA: the same grid, trials report at growing document budgets and poor ones stop early.
Compute time is the sum of the trials' own wall times (trials run one at a time here). Prints both,
the best recoveries, whether ASHA's best full-budget trial came within 0.2 points of the grid's
best, and the ratio grid / ASHA compute time.
Usage: .venv/bin/python bench/tune_efficiency.py [--rungs 50,200,1000] [--docs 1000]
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


def _sweep(root: Path, name: str, scheduler: str, rungs: list[int]) -> Path:
    data = yaml.safe_load((REPO / "sweeps" / "w4a16_recovery.yaml").read_text())
    data["name"] = name
    data["conf_dir"] = str(root / "conf")
    data["tune"].update(
        search="grid", scheduler=scheduler, rungs=rungs, num_samples=1, space=SPACE, validation_suite=None
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
    rows = pq.read_table(out / "datasets" / "trials").to_pylist()
    for r in rows:  # where each trial's time went (the last report of its Ray Tune result log)
        [log] = out.glob(f"tune/*/trainable_{r['trial_id']}*/result.json")
        last = json.loads(log.read_text().splitlines()[-1])
        r["split"] = (last["quantize_s"], last["engine_start_s"], last["eval_s"])
    failed = [r["trial_id"] for r in rows if r["status"] != "ok"]
    if failed:
        sys.exit(f"{sweep.name}: trials {failed} failed; see {out / 'tune'}")
    return rows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rungs", default="50,200,1000", help="documents per task at each ASHA rung")
    parser.add_argument("--docs", type=int, default=1000, help="documents per organism task")
    args = parser.parse_args()
    rungs = [int(x) for x in args.rungs.split(",")]
    root = Path(tempfile.mkdtemp(prefix="qs-tune-bench-"))
    _conf(root, args.docs)
    cache = root / "cache"
    cache.mkdir()
    grid, grid_wall = _run(_sweep(root, "bench_grid", "fifo", [rungs[-1]]), root / "grid", cache)
    asha, asha_wall = _run(_sweep(root, "bench_asha", "asha", rungs), root / "asha", cache)

    def compute(rows: list[dict]) -> float:
        return sum(r["wall_s"] or 0.0 for r in rows)

    grid_best = max(r["recovery_pct"] for r in grid)
    full = [r for r in asha if not r["stopped_early"]]
    asha_best = max(r["recovery_pct"] for r in full)
    reached = asha_best >= grid_best - 0.2
    print(f"grid: {len(grid)} trials, {grid[0]['budget']} docs each; space {SPACE}")
    print(
        f"full grid: compute {compute(grid):.0f}s (run wall {grid_wall:.0f}s), best recovery {grid_best:.2f}%"
    )
    print(
        f"ASHA rungs {rungs}: compute {compute(asha):.0f}s (run wall {asha_wall:.0f}s), "
        f"{sum(r['stopped_early'] for r in asha)} of {len(asha)} trials stopped early, "
        f"best full-budget recovery {asha_best:.2f}%"
    )
    print(f"ASHA reached the grid's best within 0.2 points: {'yes' if reached else 'NO'}")
    print(f"ratio full-grid compute / ASHA compute: {compute(grid) / compute(asha):.2f}x")
    for name, rows in (("grid", grid), ("asha", asha)):
        q, e, v = (sum(r["split"][i] for r in rows) / len(rows) for i in range(3))
        print(f"{name} mean per trial: quantize {q:.1f}s, engine start {e:.1f}s, scoring {v:.1f}s")
    for name, rows in (("grid", grid), ("asha", asha)):
        for r in sorted(rows, key=lambda r: -r["recovery_pct"]):
            params = ", ".join(f"{k}={v}" for k, v in r["params"])
            rung = " ".join(f"{x:.1f}" for x in r["rung_recovery_pct"])
            print(f"  {name} {params}: recovery {r['recovery_pct']:.2f}% rungs [{rung}] {r['wall_s']:.0f}s")


if __name__ == "__main__":
    main()

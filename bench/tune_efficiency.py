"""Benchmark: multi-fidelity search (ASHA over eval-sample rungs) vs the full grid, on the organism.

Both searches cover the same W4A16 grid (sweeps/w4a16_recovery.yaml's knobs, cut to a grid that
fits a CPU), each in its own output directory so neither reuses the other's quantized artifacts:
- full grid: every trial scored on the full budget, one report;
- ASHA: the same grid, trials report at growing document budgets and poor ones stop early.
Compute time is the sum of the trials' own wall times (trials run one at a time here). Prints both,
the best recoveries, whether ASHA's best full-budget trial came within 0.2 points of the grid's
best, and the ratio grid / ASHA compute time.
Usage: .venv/bin/python bench/tune_efficiency.py [--rungs 25,50,200]
"""

from __future__ import annotations

import argparse
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


def _sweep(root: Path, name: str, scheduler: str, rungs: list[int]) -> Path:
    data = yaml.safe_load((REPO / "sweeps" / "w4a16_recovery.yaml").read_text())
    data["name"] = name
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
    return pq.read_table(out / "datasets" / "trials").to_pylist(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rungs", default="25,50,200", help="documents per task at each ASHA rung")
    args = parser.parse_args()
    rungs = [int(x) for x in args.rungs.split(",")]
    root = Path(tempfile.mkdtemp(prefix="qs-tune-bench-"))
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
        for r in sorted(rows, key=lambda r: -r["recovery_pct"]):
            params = ", ".join(f"{k}={v}" for k, v in r["params"])
            rung = " ".join(f"{x:.1f}" for x in r["rung_recovery_pct"])
            print(f"  {name} {params}: recovery {r['recovery_pct']:.2f}% rungs [{rung}] {r['wall_s']:.0f}s")


if __name__ == "__main__":
    main()

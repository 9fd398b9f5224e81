"""Benchmark: how long `python -m cluster plan` takes, side by side with importing the heavy stack.

Prints the median wall time of planning the full study (sweeps/full_family.yaml) in a fresh
interpreter, the median time of `import vllm, lm_eval, llmcompressor` alone, their ratio, and the
ratio to the 2 s goal (< 1.0 meets it).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL_S = 2.0


def wall(cmd: list[str], runs: int) -> float:
    """Median wall time of a command over `runs` runs."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    plan_s = wall([sys.executable, "-m", "cluster", "plan", "sweeps/full_family.yaml"], runs=5)
    heavy_s = wall([sys.executable, "-c", "import vllm, lm_eval, llmcompressor"], runs=2)
    print(f"plan full_family: {plan_s:.2f}s (median of 5)")
    print(f"import vllm+lm_eval+llmcompressor: {heavy_s:.2f}s (median of 2)")
    print(f"ratio plan / heavy imports: {plan_s / heavy_s:.3f}")
    print(
        f"ratio plan / {GOAL_S:.0f}s goal: {plan_s / GOAL_S:.2f} ({'meets' if plan_s < GOAL_S else 'misses'} the goal)"
    )


if __name__ == "__main__":
    main()

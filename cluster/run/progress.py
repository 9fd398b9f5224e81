"""Progress people can see, in a terminal or in a log file: cells done / running / pending, time
elapsed and left, and the current step of each running cell.

Output of Ray tasks is not forwarded to the driver, so cells report their step (quantization
layer k of n, evaluation requests done of total) to `ProgressBoard`, a small actor; the executor
reads it and prints plain lines (no spinners, so a log shows them too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


class ProgressBoard:
    """A Ray actor holding the latest step text per running cell."""

    def __init__(self) -> None:
        self.steps: dict[str, str] = {}

    def set(self, key: str, text: str) -> None:
        self.steps[key] = text

    def clear(self, key: str) -> None:
        self.steps.pop(key, None)

    def snapshot(self) -> dict[str, str]:
        return dict(self.steps)


def start_board():
    """The progress board actor for this run."""
    import ray

    return ray.remote(num_cpus=0)(ProgressBoard).remote()


def clock(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class Tally:
    """Counts and timings for the summary line."""

    total: int
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    failed: int = 0
    walls: dict[str, list[float]] = field(default_factory=dict)  # stage -> wall times of finished cells

    def add(self, stage: str, wall_s: float) -> None:
        self.walls.setdefault(stage, []).append(wall_s)

    def _guess(self, stage: str) -> float | None:
        own = self.walls.get(stage)
        pool = own or [w for ws in self.walls.values() for w in ws]
        return sorted(pool)[len(pool) // 2] if pool else None

    def line(self, running: int, pending: list[str], parallel: int) -> str:
        """`cells: 5/17 done, 0 failed, 2 running, 10 pending; 3m10s elapsed, ~4m left`."""
        elapsed = time.monotonic() - self.started
        guesses = [self._guess(s) for s in pending]
        left = ""
        if pending and all(g is not None for g in guesses):
            left = f", ~{clock(sum(g for g in guesses if g) / max(1, parallel))} left (median cell times)"
        return (
            f"cells: {self.done}/{self.total} done, {self.failed} failed, {running} running, "
            f"{len(pending)} pending; {clock(elapsed)} elapsed{left}"
        )

"""How many replicas served a model while load ran: Ray Serve's status, sampled in a thread.

With `serve.autoscaling` the replica count is part of the measurement (a run that started on one
replica and ended on two measured both), so the load test samples it about once a second and every
`requests` row gets the count when it was sent, every `perf` row the least and most its run saw.
A replica counts once it is RUNNING (serving), not while it starts.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from types import TracebackType


def running_replicas(app_names: list[str], model_id: str) -> int:
    """RUNNING replicas of the model's LLM server deployment(s) across the given Serve apps."""
    from ray import serve

    status, n = serve.status(), 0
    for name in app_names:
        app = status.applications.get(name)
        servers = {d: dep for d, dep in (app.deployments if app else {}).items() if d.startswith("LLMServer")}
        # haproxy layout: an app per model, one server in it; proxy layout: a server per model
        mine = [dep for d, dep in servers.items() if model_id in d] or (
            list(servers.values()) if len(servers) == 1 else []
        )
        for dep in mine:
            n += sum(v for k, v in dep.replica_states.items() if str(getattr(k, "value", k)) == "RUNNING")
    return n


class ReplicaWatch:
    """Sample a replica count every `interval_s` between `with` entry and exit; look counts up by time."""

    def __init__(self, count: Callable[[], int], interval_s: float = 1.0) -> None:
        self.count, self.interval_s = count, interval_s
        self.times: list[float] = []  # time.time() of each sample
        self.counts: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="replica-watch", daemon=True)

    def _sample(self) -> None:
        try:
            n = self.count()
        except Exception:  # a status call that fails leaves a gap, not a crashed load test
            return
        self.times.append(time.time())
        self.counts.append(n)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> ReplicaWatch:
        self._sample()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._sample()

    def at(self, t: float) -> int | None:
        """The count sampled last at or before epoch time `t` (the first sample before any)."""
        if not self.counts:
            return None
        return self.counts[max(0, bisect.bisect_right(self.times, t) - 1)]

    def span(self, start: float, end: float) -> tuple[int, int] | None:
        """(least, most) replicas seen from `start` to `end` (epoch seconds), the count at `start` included."""
        first = self.at(start)
        if first is None:
            return None
        inside = [n for t, n in zip(self.times, self.counts, strict=True) if start < t <= end]
        return min([first, *inside]), max([first, *inside])

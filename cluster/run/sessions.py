"""Sessions: what cells of one checkpoint share while they run.

`engines`: evaluation-side cells of a checkpoint (health probe, every suite, similarity
generations) lease `eval.actors` engine hosts (`cluster.eval.engine_host`); each host keeps vLLM
imported and loads the checkpoint once. On CPU machines hosts are recycled between checkpoints
(a host is bound to one core, and importing vLLM and lm-eval is most of an engine's start-up here);
on GPUs each checkpoint gets fresh hosts with its tensor-parallel GPUs.
`serve`: load-test cells on one hardware target share one Ray Serve deployment: on CPU every
measurable format of a model is deployed at once (replicas start side by side), on GPUs one format
at a time (all formats of a large model do not fit the GPUs at once).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from cluster.plan.cells import Cell
from cluster.run.env import RunEnv


def session_key(cell: Cell, kind: str, gpu: bool) -> str:
    """Cells with the same key share a session."""
    if kind == "engines":
        return f"engines:{cell.model}:{cell.format}" + (f":{cell.session}" if cell.session else "")
    return f"serve:{cell.model}:{cell.format if gpu else '*'}:{cell.hardware}"


@dataclass
class Session:
    """A live session and its state in the executor."""

    key: str
    kind: str  # engines | serve
    handle: Any = None  # engines: the leased host actors; serve: {model_id: base_url}
    opening: Any = None  # serve: the ObjectRef of the deploy task while it runs
    busy: bool = False  # a cell is running on it (cells of one session run one at a time)
    opened_at: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)


class HostPool:
    """Engine host actors, leased to engine sessions and (on CPU) recycled between them."""

    def __init__(self, env: RunEnv) -> None:
        self.env = env
        self.idle: list[tuple[int, Any]] = []  # (core slot, actor)
        self.leased: dict[str, list[tuple[int, Any]]] = {}
        self.next_slot = 0

    def _new(self, slot: int, cell: Cell) -> Any:
        from cluster.eval.engine_host import start_host

        return start_host(self.env, cell, slot)

    def lease(self, key: str, cell: Cell, n: int) -> list[Any]:
        """n hosts for a session (idle ones first on CPU; fresh ones on GPU)."""
        got: list[tuple[int, Any]] = []
        while self.idle and len(got) < n and not self.env.gpu:
            got.append(self.idle.pop(0))
        while len(got) < n:
            got.append((self.next_slot, self._new(self.next_slot, cell)))
            self.next_slot += 1
        self.leased[key] = got
        return [a for _, a in got]

    def replace(self, key: str, dead: set[int], cell: Cell) -> list[Any]:
        """Swap the session's dead hosts (by index) for new ones; return the session's hosts."""
        from cluster.eval.engine_host import stop_host

        hosts = self.leased[key]
        for i in dead:
            slot, actor = hosts[i]
            stop_host(actor)
            hosts[i] = (slot, self._new(slot, cell))
        return [a for _, a in hosts]

    def release(self, key: str) -> None:
        """Return a session's hosts: to the idle list on CPU, killed on GPU."""
        from cluster.eval.engine_host import stop_host

        for slot, actor in self.leased.pop(key, []):
            if self.env.gpu:
                stop_host(actor)
            else:
                self.idle.append((slot, actor))

    def close(self) -> None:
        """Kill every host."""
        from cluster.eval.engine_host import stop_host

        for key in list(self.leased):
            self.release(key)
        for _, actor in self.idle:
            stop_host(actor)
        self.idle.clear()


def dead_hosts(hosts: list[Any], timeout_s: float = 30.0) -> set[int]:
    """Indices of hosts that no longer answer."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    dead = set()
    for i, h in enumerate(hosts):
        try:
            ray.get(h.pid.remote(), timeout=timeout_s)
        except (RayActorError, GetTimeoutError):
            dead.add(i)
    return dead

"""Benchmark: replay a sweep on a declared cluster in virtual time, through the real scheduling policy.

    python bench/schedule_sim.py [SWEEP] [--cluster FILE] [key=value ...]
    (defaults: sweeps/full_family.yaml on conf/clusters/study.yaml)

Every cell lasts what the plan's cost model says (cluster/plan/cost.py); the policy
(cluster/run/schedule.py: order, admission on a node model, feasibility) decides what starts, as
the executor does on a cluster: a checkpoint's evaluation cells share its engine session and a
load test's use cases share its Serve deployment (the session starts once, holds its GPUs until
its last cell ends, runs one cell at a time); other cells hold their own GPUs. No Ray, no GPUs.
Prints the makespan, the lower bound (the larger of the longest dependency chain and GPU-hours /
GPUs per GPU kind) and their ratio, and how busy each GPU kind was.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cluster.config.capacity import ClusterConfig  # noqa: E402
from cluster.plan.cells import Cell  # noqa: E402
from cluster.plan.cost import Estimate, session_of  # noqa: E402
from cluster.plan.dag import lower_bound  # noqa: E402
from cluster.plan.fit import demand_of, nodes_from, place  # noqa: E402
from cluster.run.schedule import Policy  # noqa: E402


@dataclass
class _Session:
    unit: str
    ready_at: float  # the engines have loaded / the deployment answers
    busy_until: float = 0.0
    open: bool = True


@dataclass
class Result:
    """How the replay ended."""

    makespan_h: float
    bound_h: float
    chain_h: float
    per_kind_h: dict[str, float]
    busy_gpu_h: dict[str, float]
    gpus: dict[str, int]
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Makespan / lower bound (1.0 is optimal)."""
        return self.makespan_h / self.bound_h if self.bound_h else float("nan")


class Greedy(Policy):
    """For comparison: plan order, every cell that fits starts, no reservations (what Ray's queue does)."""

    def order(self, ready, live=lambda c: False, state=None):  # type: ignore[no-untyped-def, override]
        self.heads = {}
        return sorted(ready, key=lambda c: not live(c))

    def admit(self, unit: str, cell: Cell) -> bool:
        """Start it wherever it fits now (a cell that does not fit reserves nothing)."""
        if unit in self.grants:
            return True
        demand = demand_of(cell.resources)
        grant = place(self.nodes, demand)
        if grant is not None:
            self.hold(unit, demand, grant)
        return grant is not None


class Sim:
    """A virtual-time executor: cells, their estimates, a policy over the declared nodes."""

    def __init__(
        self,
        cells: list[Cell],
        est: dict[str, Estimate],
        cluster: ClusterConfig,
        policy: type[Policy] = Policy,
    ) -> None:
        self.cells = [c for c in cells if c.status == "planned"]
        self.est, self.now = est, 0.0
        hours = {c.key: est[c.key].hours for c in self.cells}
        nodes = nodes_from(cluster)
        self.policy = policy(
            self.cells,
            hours,
            nodes,
            declared=nodes_from(cluster),
            clock=lambda: self.now * 3600.0,
            unit_of=self.unit,
        )
        self.state = {c.key: "pending" for c in self.cells}
        self.ends: dict[str, float] = {}  # running cell -> its end
        self.sessions: dict[str, _Session] = {}
        self.busy: dict[str, float] = {}
        self.failed: dict[str, str] = {}

    def unit(self, c: Cell) -> str:
        group = session_of(c)
        return ":".join(group) if group else c.key

    def _ready(self) -> list[Cell]:
        """Pending cells whose inputs are all done."""
        ok = {k for k, s in self.state.items() if s == "done"}
        return [
            c
            for c in self.cells
            if self.state[c.key] == "pending" and all(d in ok or d not in self.state for d in c.deps)
        ]

    def _block(self) -> None:
        bad = {k for k, s in self.state.items() if s in ("failed", "blocked")}
        for c in self.cells:
            if self.state[c.key] == "pending" and any(d in bad for d in c.deps):
                self.state[c.key] = "blocked"
                bad.add(c.key)

    def _start(self, c: Cell, at: float) -> None:
        e = self.est[c.key]
        self.state[c.key] = "running"
        self.ends[c.key] = at + (e.hours - e.start_hours)
        if e.hardware:
            self.busy[e.hardware] = self.busy.get(e.hardware, 0.0) + e.gpus * (e.hours - e.start_hours)

    def _dispatch(self) -> None:
        ready = self._ready()
        for c in ready:
            if why := self.policy.reject(c):
                self.state[c.key], self.failed[c.key] = "failed", why
        self._block()
        live = {u for u, s in self.sessions.items() if s.open}
        for c in self.policy.order(ready, live=lambda c: self.unit(c) in live, state=self.state):
            unit, group = self.unit(c), session_of(c)
            s = self.sessions.get(unit)
            if group is None:
                if self.policy.admit(unit, c):
                    self._start(c, self.now)
            elif s is not None and s.open:
                if max(s.ready_at, s.busy_until) <= self.now:
                    self._start(c, self.now)
                    s.busy_until = self.ends[c.key]
            elif self.policy.admit(unit, c):
                start = self._session_start(c)
                self.sessions[unit] = _Session(unit, self.now + start)
                self._start(c, self.now + start)
                self.sessions[unit].busy_until = self.ends[c.key]

    def _session_start(self, c: Cell) -> float:
        """The session's start (charged to one of its cells by the cost model)."""
        group = session_of(c)
        starts = [self.est[x.key].start_hours for x in self.cells if session_of(x) == group]
        e = self.est[c.key]
        hw = e.hardware
        if hw:
            self.busy[hw] = self.busy.get(hw, 0.0) + e.gpus * max(starts, default=0.0)
        return max(starts, default=0.0)

    def _finish(self, key: str) -> None:
        self.state[key] = "done"
        del self.ends[key]
        c = next(x for x in self.cells if x.key == key)
        unit = self.unit(c)
        if unit not in self.sessions:
            self.policy.release(unit)
            return
        left = [x for x in self.cells if self.unit(x) == unit and self.state[x.key] in ("pending", "running")]
        if not left:
            self.sessions[unit].open = False
            self.policy.release(unit)

    def run(self) -> float:
        """Replay until every cell is done, failed or blocked; return the makespan in hours."""
        while any(s in ("pending", "running") for s in self.state.values()):
            self._dispatch()
            if not self.ends:
                stuck = [k for k, s in self.state.items() if s == "pending"]
                for k in stuck:
                    self.state[k], self.failed[k] = "failed", "could not be scheduled"
                break
            self.now = min(self.ends.values())
            for key in [k for k, t in self.ends.items() if t <= self.now + 1e-12]:
                self._finish(key)
        return self.now


def replay(
    cells: list[Cell], est: dict[str, Estimate], cluster: ClusterConfig, policy: type[Policy] = Policy
) -> Result:
    """Replay and compare with the lower bound."""
    from cluster.plan.dag import longest_chain

    sim = Sim(cells, est, cluster, policy)
    makespan = sim.run()
    planned = sim.cells
    hours = {c.key: est[c.key].hours for c in planned}
    gpus: dict[str, int] = {}
    accel = {c.resources.accelerator: est[c.key].hardware for c in planned if est[c.key].hardware}
    for g in cluster.nodes:
        if g.gpus and g.accelerator_type in accel:
            gpus[accel[g.accelerator_type]] = gpus.get(accel[g.accelerator_type], 0) + g.gpus * g.count
    gh = {c.key: (est[c.key].hardware, est[c.key].gpu_hours) for c in planned}
    bound, per_kind = lower_bound(planned, hours, gh, gpus)
    chain, _ = longest_chain(planned, hours)
    return Result(makespan, bound, chain, per_kind, sim.busy, gpus, sim.failed)


def main(argv: list[str] | None = None) -> int:
    """Plan, cost and replay a sweep; print the makespan against the lower bound."""
    from cluster.config.clusters import load_cluster
    from cluster.config.loader import load_sweep
    from cluster.plan.cells import plan
    from cluster.plan.cost import estimate
    from serve.host import gpu_driver

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", nargs="?", default=str(REPO / "sweeps" / "full_family.yaml"))
    ap.add_argument("--cluster", default=str(REPO / "conf" / "clusters" / "study.yaml"))
    ap.add_argument(
        "--greedy", action="store_true", help="replay with plan order and no reservations instead"
    )
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    sweep, catalog = load_sweep(args.sweep, args.overrides)
    cluster = load_cluster(args.cluster, catalog)
    cells = plan(sweep, catalog, gpu_driver(), cluster)
    r = replay(cells, estimate(cells, sweep, catalog), cluster, Greedy if args.greedy else Policy)
    which = "greedy (plan order, no reservations)" if args.greedy else "cluster.run.schedule.Policy"
    print(
        f"sweep {sweep.name} on cluster '{cluster.name}' ({cluster.description}): {len(cells)} cells; policy {which}"
    )
    for kind, n in sorted(r.gpus.items()):
        busy = r.busy_gpu_h.get(kind, 0.0)
        print(
            f"  {kind}: {n} GPUs, {busy:.1f} GPU·h held, GPU·h/GPUs {r.per_kind_h.get(kind, 0.0):.1f} h, "
            f"busy {100 * busy / (n * r.makespan_h):.0f}% of the makespan"
        )
    print(f"longest chain: {r.chain_h:.2f} h")
    print(
        f"lower bound: {r.bound_h:.2f} h; makespan: {r.makespan_h:.2f} h; ratio {r.ratio:.3f} (goal <= 1.05)"
    )
    for key, why in r.failed.items():
        print(f"  failed {key}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The scheduling policy on a Ray cluster: which ready cells start, in which order, and which fail
because no node can ever host them. The executor (cluster/run/executor.py) asks it; the schedule
simulator (bench/schedule_sim.py) replays whole sweeps through the same object in virtual time.

- Order: cells on an open session first (its GPUs are already held), then by the longest path of
  estimated hours from the cell's unit to the end of the plan (cluster/plan/dag.py `unit_tails`:
  a session runs its cells one at a time, so it lasts their summed hours), so long chains (a 405B
  quantization, a tuning search, a checkpoint's whole evaluation) start first and short cells fill
  the gaps; inside a session, the cell on the longest path of cells goes first.
- Backfilling (EASY, with one step of lookahead): per GPU kind, the most urgent cell that does not
  fit, or that is about to become ready (its inputs are running), gets a reservation at the
  earliest time the estimated ends of running work free room for it; a later cell starts now only
  if that reservation stays intact (it ends first, or leaves the room), or if it could never run
  beside the reserved cell and going first ends both paths sooner than waiting for the reserved
  cell to end (`_swap_pays`: a tuning search that holds a whole GPU kind for a day waits a few
  hours for work that would otherwise wait that day). Everything else that fits starts: no format
  of one model blocks another model's cells, and a job that needs two whole nodes is not starved
  by small ones.
- Admission: a model of the live nodes (cluster/plan/fit.py) with what every running cell or open
  session holds; a unit (a cell, or a session: a checkpoint's engine hosts, a Serve deployment)
  starts only where its pieces fit, so formats that do not fit a node at once take turns.
- Nothing waits forever: with a declared cluster (`placement.cluster`), a cell it cannot host fails
  at once with the reason; a cell no live node can host waits at most `placement.pending_timeout_s`
  (asking an autoscaler for the nodes meanwhile) and then fails with the reason.
Heavy imports (ray) only inside the functions that talk to the cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cluster.plan.cells import Cell
from cluster.plan.dag import tails, unit_tails
from cluster.plan.fit import Demand, Grant, Node, demand_of, give_back, place, why_not

REFRESH_S = 5.0  # how often the live nodes are read again


@dataclass(frozen=True)
class _Head:
    """A reservation for the cell at the head of a GPU kind's queue (times in clock seconds)."""

    at: float  # earliest estimated start
    demand: Demand
    ready_at: float  # when its inputs should be done
    priority: tuple[float, float, float]


class Policy:
    """Order, admission and feasibility of cells on one cluster."""

    def __init__(
        self,
        cells: list[Cell],
        hours: dict[str, float],
        nodes: list[Node],
        declared: list[Node] | None = None,
        timeout_s: float = 1800.0,
        clock: Callable[[], float] = time.monotonic,
        unit_of: Callable[[Cell], str] = lambda c: c.key,
    ) -> None:
        self.rank = unit_tails(cells, hours, unit_of)  # a session lasts its cells' summed hours
        self.within = tails(cells, hours)  # which of a session's cells goes first
        self.hours = hours
        self.cells, self.unit_of = {c.key: c for c in cells}, unit_of
        self.nodes = {n.name: n for n in nodes}
        self.declared, self.timeout_s, self.clock = declared, timeout_s, clock
        self.unit_hours: dict[str, float] = {}  # a unit's cells' estimated hours, together
        for c in cells:
            self.unit_hours[unit_of(c)] = self.unit_hours.get(unit_of(c), 0.0) + hours.get(c.key, 0.0)
        self.grants: dict[str, Grant] = {}
        self.demands: dict[str, Demand] = {}
        self.ends: dict[str, float] = {}  # unit -> when its estimate says it lets go (clock seconds)
        self.heads: dict[str | None, _Head] = {}  # GPU kind -> this round's reservation
        self.since: dict[str, float] = {}  # cell key -> when it was first found with no node to host it
        self.wanted: dict[str, Demand] = {}  # what waiting cells need that no live node has
        self.ask: Callable[[list[Demand]], None] | None = None  # tells an autoscaler what is missing
        self.source: Callable[[], list[Node]] | None = None  # reads the live nodes (None: they never change)
        self.read_at = clock()
        self._why: dict[tuple[bool, Demand], str] = {}

    # --- order and admission ------------------------------------------------------------------

    def order(
        self,
        ready: Iterable[Cell],
        live: Callable[[Cell], bool] = lambda c: False,
        state: dict[str, str] | None = None,
    ) -> list[Cell]:
        """Ready cells, those on an open session first, then the longest remaining path first.

        Each call starts a dispatch round: the cells are then offered to `admit` in this order.
        `state` (cell key -> pending | running | done | skipped | ...) shows what is about to be
        ready: pending cells whose inputs are done or running. The most urgent of each GPU kind gets
        a reservation from when its inputs should end, so that short work does not take the room it
        is about to need (a ready cell more urgent than it replaces it).
        """
        ready = list(ready)
        self.heads = {}
        for c in sorted(self._upcoming(ready, state or {}), key=self.priority):
            demand = demand_of(c.resources)
            if demand.gpus and demand.accelerator not in self.heads:
                self.heads[demand.accelerator] = self._head(c, demand, self._ready_at(c))
        return sorted(ready, key=lambda c: (not live(c), self.priority(c)))

    def priority(self, cell: Cell) -> tuple[float, float, float]:
        """Sort key, most urgent first: the longest path of hours from the cell's unit on (a session
        counts as its cells together), then from the cell itself, then its own hours."""
        return (
            -self.rank.get(cell.key, 0.0),
            -self.within.get(cell.key, 0.0),
            -self.hours.get(cell.key, 0.0),
        )

    def _upcoming(self, ready: list[Cell], state: dict[str, str]) -> list[Cell]:
        keys = {c.key for c in ready}
        soon = ("done", "skipped", "running")
        return [
            c
            for k, c in self.cells.items()
            if state.get(k) == "pending"
            and k not in keys
            and all(state.get(d, "done") in soon for d in c.deps)
        ]

    def _ready_at(self, cell: Cell) -> float:
        """When a cell's running inputs should end, by their estimates."""
        now = self.clock()
        ends = [self.ends.get(self.unit_of(self.cells[d]), now) for d in cell.deps if d in self.cells]
        return max([now, *ends])

    def _head(self, cell: Cell, demand: Demand, ready_at: float) -> _Head:
        """A reservation for `cell` from when its inputs should be done."""
        at = max(ready_at, self._reserve(self._copy(), dict(self.ends), demand, now=ready_at))
        return _Head(at, demand, ready_at, self.priority(cell))

    def admit(self, unit: str, cell: Cell) -> bool:
        """Hold room for `unit` (a cell key or a session key) if its pieces fit now without delaying
        this round's reservation for its GPU kind; True if it holds it."""
        if unit in self.grants:
            return True
        demand = demand_of(cell.resources)
        hours, prio = self.unit_hours.get(unit, 0.0), self.priority(cell)
        head = self.heads.get(demand.accelerator)
        if (
            head is not None
            and demand.gpus
            and prio > head.priority
            and not self._keeps(head, demand, hours, -prio[0])
        ):
            return False
        grant = place(self.nodes, demand)
        if grant is None:
            if demand.gpus and (head is None or prio < head.priority):
                self.heads[demand.accelerator] = self._head(cell, demand, self.clock())
            return False
        self.hold(unit, demand, grant)
        return True

    def hold(self, unit: str, demand: Demand, grant: Grant) -> None:
        """Record that `unit` holds `grant` (for `demand`) until its estimated hours have passed."""
        self.grants[unit], self.demands[unit] = grant, demand
        self.ends[unit] = self.clock() + self.unit_hours.get(unit, 0.0) * 3600.0

    def release(self, unit: str) -> None:
        """Give back what `unit` held (nothing if it held nothing)."""
        grant = self.grants.pop(unit, None)
        self.demands.pop(unit, None)
        self.ends.pop(unit, None)
        if grant:
            give_back(self.nodes, grant)

    # --- backfilling --------------------------------------------------------------------------

    def _copy(self) -> dict[str, Node]:
        return self._clone(self.nodes)

    @staticmethod
    def _clone(nodes: dict[str, Node]) -> dict[str, Node]:
        return {
            n.name: Node(
                n.name, n.accelerator, n.gpus, n.cpus, n.memory_gb, n.free_gpus, n.free_cpus, n.free_memory_gb
            )
            for n in nodes.values()
        }

    def _reserve(
        self,
        free: dict[str, Node],
        ends: dict[str, float],
        demand: Demand,
        extra: Grant | None = None,
        now: float | None = None,
    ) -> float:
        """The earliest estimated time (from `now`) `demand` fits `free` as held work (and `extra`)
        ends; inf: never."""
        now = self.clock() if now is None else now
        if place(self._clone(free), demand) is not None:
            return now
        grants = {**self.grants, **({"": extra} if extra is not None else {})}
        for end, unit in sorted((max(now, t), u) for u, t in ends.items()):
            give_back(free, grants[unit])
            if place(self._clone(free), demand) is not None:
                return end
        return float("inf")

    def _keeps(self, head: _Head, demand: Demand, hours: float, tail: float) -> bool:
        """Starting `demand` now (for `hours`, `tail` hours to the end of its path) is all right by
        the reservation `head`: it ends first, or the reserved cell still fits when the estimates
        say it starts, or delaying the reserved cell ends both paths sooner (`_swap_pays`)."""
        end = self.clock() + hours * 3600.0
        if head.at == float("inf") or end <= head.at:
            return True
        free = self._copy()
        grant = place(free, demand)
        if grant is None:
            return False
        later = max(
            head.ready_at, self._reserve(free, {**self.ends, "": end}, head.demand, grant, head.ready_at)
        )
        return later <= head.at or self._swap_pays(head, later, demand, tail)

    def _swap_pays(self, head: _Head, later: float, demand: Demand, tail: float) -> bool:
        """Two paths, the reserved cell's and a less urgent one's, and room for one at a time: which
        goes first? The one that ends both sooner (an exchange argument on their estimated ends).
        Going now delays the reserved cell to `later`; waiting means starting when the reserved cell
        does if both fit its GPU kind's nodes at once (then waiting costs nothing: never swap),
        else when it ends. A reservation that holds a whole GPU kind for a day is worth delaying
        for a few hours of work that would otherwise wait a day; a short one is not."""
        empty = _all_free(self.nodes.values())
        if place(empty, head.demand) is None or place(empty, demand) is not None:
            return False
        head_tail, head_hours = -head.priority[0] * 3600.0, -head.priority[2] * 3600.0
        now, tail = self.clock(), tail * 3600.0
        return max(now + tail, later + head_tail) < max(head.at + head_tail, head.at + head_hours + tail)

    # --- feasibility --------------------------------------------------------------------------

    def _reason(self, declared: bool, demand: Demand) -> str:
        key = (declared, demand)
        if key not in self._why:
            nodes = self.declared if declared else list(self.nodes.values())
            self._why[key] = why_not(nodes or [], demand)
        return self._why[key]

    def reject(self, cell: Cell) -> str:
        """Why `cell` must fail now ('' while it may still run): the declared cluster cannot host it,
        or no live node could for `timeout_s`."""
        demand = demand_of(cell.resources)
        if self.declared is not None and (why := self._reason(True, demand)):
            return f"infeasible on the declared cluster: {why}"
        why = self._reason(False, demand)
        if not why:
            self.since.pop(cell.key, None)
            self.wanted.pop(cell.key, None)
            return ""
        first = self.since.setdefault(cell.key, self.clock())
        if self.clock() - first >= self.timeout_s:
            self.since.pop(cell.key, None)
            self.wanted.pop(cell.key, None)
            return f"no node able to host it joined within {self.timeout_s:.0f}s: {why}"
        if self.ask is not None and cell.key not in self.wanted:
            self.wanted[cell.key] = demand
            self.ask(list(self.wanted.values()))
        return ""  # it waits: admit() keeps it back until a node that fits it joins

    def waiting(self) -> bool:
        """Cells are waiting for a node that can host them (the run must not give up yet)."""
        return bool(self.since)

    # --- the live cluster ---------------------------------------------------------------------

    def tick(self) -> None:
        """Read the live nodes again when `REFRESH_S` has passed (nodes join, leave or die)."""
        if self.source is not None and self.clock() - self.read_at >= REFRESH_S:
            self.read_at = self.clock()
            self.refresh(self.source())

    def refresh(self, nodes: list[Node]) -> None:
        """The live nodes changed: keep grants on surviving nodes, re-fit those that lost a node."""
        fresh = _all_free(nodes)
        moved = []
        for unit, grant in self.grants.items():
            if all(name in fresh for name, *_ in grant):
                for name, gpus, cpus, mem in grant:
                    node = fresh[name]
                    node.free_gpus, node.free_cpus, node.free_memory_gb = (
                        node.free_gpus - gpus,
                        node.free_cpus - cpus,
                        node.free_memory_gb - mem,
                    )
            else:
                moved.append(unit)
        for unit in moved:  # its work was lost with the node and is retried: hold room for it elsewhere
            self.grants[unit] = place(fresh, self.demands[unit]) or []
        self.nodes = fresh
        self._why = {k: v for k, v in self._why.items() if k[0]}


def _all_free(nodes: Iterable[Node]) -> dict[str, Node]:
    """The same nodes with nothing held on them."""
    return {n.name: Node(n.name, n.accelerator, n.gpus, n.cpus, n.memory_gb) for n in nodes}


def live_nodes() -> list[Node]:
    """The alive nodes of the connected Ray cluster, with their GPUs, accelerator type, CPUs, memory."""
    import ray

    out = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        r = n.get("Resources", {})
        accel = next((k.split(":", 1)[1] for k in r if k.startswith("accelerator_type:")), None)
        out.append(
            Node(n["NodeID"], accel, int(r.get("GPU", 0)), float(r.get("CPU", 0)), r.get("memory", 0) / 1e9)
        )
    return out


def ask_autoscaler(demands: list[Demand]) -> None:
    """Ask Ray's autoscaler for nodes that can host these demands (a request, not a reservation)."""
    from ray.autoscaler.sdk import request_resources

    bundles = []
    for d in demands:
        for p in d.pieces:
            bundle = {"GPU": float(p.gpus), "CPU": p.cpus} if p.gpus else {"CPU": p.cpus}
            if d.accelerator and p.gpus:
                bundle[f"accelerator_type:{d.accelerator}"] = 0.001
            bundles += [bundle] * p.nodes
    try:
        request_resources(bundles=bundles)
    except Exception:  # no autoscaler (a static cluster): the timeout decides
        pass


def for_cluster(env: Any, cells: list[Cell]) -> Policy:
    """The policy of a run on a Ray cluster: cost-model hours, live nodes, the declared cluster if any.

    What holds resources is a cell's session (the executor's session key) or the cell itself.
    """
    from cluster.config.clusters import load_cluster
    from cluster.plan.cost import estimate
    from cluster.plan.fit import nodes_from
    from cluster.run import registry
    from cluster.run.sessions import session_key

    def unit_of(cell: Cell) -> str:
        kind = registry.STAGES[cell.stage].session
        return session_key(cell, kind, env.gpu) if kind else cell.key

    p = env.sweep.placement
    hours = {k: e.hours for k, e in estimate(cells, env.sweep, env.catalog).items()}
    declared = nodes_from(load_cluster(p.cluster, env.catalog)) if p.cluster else None
    planned = [c for c in cells if c.status == "planned"]
    policy = Policy(planned, hours, live_nodes(), declared, p.pending_timeout_s, unit_of=unit_of)
    policy.source, policy.ask = live_nodes, ask_autoscaler
    return policy

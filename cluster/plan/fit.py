"""Fitting cells onto nodes: the one model of a cluster that `plan --cluster`, the scheduler
(cluster/run/schedule.py) and the schedule simulator (bench/schedule_sim.py) share.

A node has GPUs of one accelerator type (or none), CPUs and schedulable host memory. A cell asks
for `processes` pieces (engines, trials or its one task); a piece needs `gpus / pp` GPUs on each of
`pp` distinct nodes of the cell's accelerator type, its share of the cell's CPUs, and its host
memory on its first node. `place` finds room best-fit (the fullest node that still fits, so whole
nodes stay free for engines that need them) and `why_not` says in words why a cell can never fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.config.capacity import ClusterConfig
from cluster.plan.cells import Resources

GIB = 2**30 / 1e9  # GB per GiB


@dataclass
class Node:
    """One node and what is free on it."""

    name: str
    accelerator: str | None
    gpus: int
    cpus: float
    memory_gb: float
    free_gpus: int = -1
    free_cpus: float = -1.0
    free_memory_gb: float = -1.0

    def __post_init__(self) -> None:
        if self.free_gpus < 0:
            self.free_gpus, self.free_cpus, self.free_memory_gb = self.gpus, self.cpus, self.memory_gb


@dataclass(frozen=True)
class Piece:
    """One process of a cell: `gpus` GPUs on each of `nodes` nodes, CPUs and host memory."""

    gpus: int
    nodes: int
    cpus: float
    memory_gb: float


@dataclass(frozen=True)
class Demand:
    """What a cell holds at once, on nodes of one accelerator type (None: any node, no GPUs)."""

    accelerator: str | None
    pieces: tuple[Piece, ...] = field(default_factory=tuple)

    @property
    def gpus(self) -> int:
        """GPUs in all."""
        return sum(p.gpus * p.nodes for p in self.pieces)


Grant = list[tuple[str, int, float, float]]  # (node, gpus, cpus, memory_gb) taken


def demand_of(res: Resources) -> Demand:
    """The pieces a cell's resources ask for."""
    n = res.processes
    if not res.gpus:
        return Demand(None, (Piece(0, 1, res.cpus, res.memory_gb),))
    per_node = res.gpus // max(1, res.pp)
    piece = Piece(per_node, max(1, res.pp), res.cpus / n, res.memory_gb)
    return Demand(res.accelerator, (piece,) * n)


def nodes_from(cluster: ClusterConfig) -> list[Node]:
    """Every node of a cluster file, all free."""
    return [
        Node(
            f"{g.name}-{i}", g.accelerator_type if g.gpus else None, g.gpus, float(g.cpus), g.memory_gib * GIB
        )
        for g in cluster.nodes
        for i in range(g.count)
    ]


def _fits(node: Node, accel: str | None, gpus: int, cpus: float, memory_gb: float) -> bool:
    if gpus and node.accelerator != accel:
        return False
    return (
        node.free_gpus >= gpus and node.free_cpus + 1e-9 >= cpus and node.free_memory_gb + 1e-9 >= memory_gb
    )


def _take(node: Node, gpus: int, cpus: float, memory_gb: float, grant: Grant) -> None:
    node.free_gpus -= gpus
    node.free_cpus -= cpus
    node.free_memory_gb -= memory_gb
    grant.append((node.name, gpus, cpus, memory_gb))


def give_back(nodes: dict[str, Node], grant: Grant) -> None:
    """Return what a grant took (nodes that left the cluster are skipped)."""
    for name, gpus, cpus, memory_gb in grant:
        node = nodes.get(name)
        if node is not None:
            node.free_gpus += gpus
            node.free_cpus += cpus
            node.free_memory_gb += memory_gb


def place(nodes: dict[str, Node], demand: Demand) -> Grant | None:
    """Take room for every piece (best fit), or take nothing and return None."""
    grant: Grant = []
    for piece in sorted(demand.pieces, key=lambda p: -p.gpus * p.nodes):
        used: set[str] = set()
        for i in range(piece.nodes):
            cpus, mem = (piece.cpus, piece.memory_gb) if i == 0 else (0.0, 0.0)
            fit = [
                n
                for n in nodes.values()
                if n.name not in used and _fits(n, demand.accelerator, piece.gpus, cpus, mem)
            ]
            if not fit:
                give_back(nodes, grant)
                return None
            best = min(fit, key=lambda n: (n.free_gpus - piece.gpus, n.free_cpus, n.name))
            used.add(best.name)
            _take(best, piece.gpus, cpus, mem, grant)
    return grant


def why_not(nodes: list[Node], demand: Demand) -> str:
    """Why `demand` cannot fit these nodes even when all are free ('' when it can)."""
    fresh = {n.name: Node(n.name, n.accelerator, n.gpus, n.cpus, n.memory_gb) for n in nodes}
    if place(fresh, demand) is not None:
        return ""
    kind = demand.accelerator
    mine = [n for n in nodes if not demand.gpus or n.accelerator == kind]
    piece = max(demand.pieces, key=lambda p: (p.gpus, p.memory_gb))
    need = f"{piece.gpus} x {kind}" if piece.gpus else "CPUs"
    if not mine:
        have = sorted({f"{n.accelerator}" for n in nodes if n.gpus}) or ["none"]
        return f"no {kind} nodes (GPU kinds: {', '.join(have)})"
    if piece.gpus and max(n.gpus for n in mine) < piece.gpus:
        return f"one engine needs {piece.gpus} GPUs on a node; {kind} nodes have {max(n.gpus for n in mine)}"
    if piece.nodes > len([n for n in mine if n.gpus >= piece.gpus]):
        return (
            f"one engine spans {piece.nodes} nodes of {piece.gpus} x {kind} (pipeline parallel); "
            f"the cluster has {len(mine)}"
        )
    roomiest = max(n.memory_gb for n in mine)
    if piece.memory_gb > roomiest:
        return f"needs {piece.memory_gb:.0f} GB host memory beside {need}; the largest such node has {roomiest:.0f} GB"
    if piece.cpus > max(n.cpus for n in mine):
        return f"needs {piece.cpus:g} CPUs beside {need}; such nodes have {max(n.cpus for n in mine):g}"
    return f"needs {len(demand.pieces)} x ({need}) at once; {kind} nodes hold {sum(n.gpus for n in mine)} GPUs in all"


def rejections(cells: list, cluster: ClusterConfig) -> dict[str, str]:
    """cell key -> why the cluster can never host it, for every planned cell that cannot fit."""
    nodes = nodes_from(cluster)
    seen: dict[Demand, str] = {}
    out: dict[str, str] = {}
    for c in cells:
        if c.status != "planned":
            continue
        demand = demand_of(c.resources)
        if demand not in seen:
            seen[demand] = why_not(nodes, demand)
        if seen[demand]:
            out[c.key] = f"infeasible on cluster '{cluster.name}': {seen[demand]}"
    return out

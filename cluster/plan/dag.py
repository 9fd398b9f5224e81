"""The plan as a graph with durations: each cell's longest path to the end (the scheduler's
priority), the longest chain of a plan, and the lower bound on any schedule's makespan.

The lower bound is the larger of the longest dependency chain and, for every GPU kind, the
GPU-hours its cells hold divided by the GPUs of that kind: no schedule beats either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from graphlib import CycleError, TopologicalSorter

from cluster.plan.cells import Cell


def tails(cells: list[Cell], hours: Mapping[str, float]) -> dict[str, float]:
    """cell key -> its hours plus the longest path of hours after it (cells come upstream first)."""
    children: dict[str, list[str]] = {c.key: [] for c in cells}
    for c in cells:
        for d in c.deps:
            children.setdefault(d, []).append(c.key)
    out: dict[str, float] = {}
    for c in reversed(cells):
        out[c.key] = hours.get(c.key, 0.0) + max((out[k] for k in children[c.key] if k in out), default=0.0)
    return out


def unit_tails(
    cells: list[Cell], hours: Mapping[str, float], unit_of: Callable[[Cell], str]
) -> dict[str, float]:
    """cell key -> the longest path of hours from its unit on, where a unit (a session: a checkpoint's
    engines, a Serve deployment) runs its cells one at a time and so lasts their summed hours.

    `tails` treats a session's cells as parallel branches: a checkpoint's evaluation, or seven load
    tests of one deployment, then look as short as their longest cell and lose to shorter chains.
    """
    unit = {c.key: unit_of(c) for c in cells}
    own: dict[str, float] = {}
    after: dict[str, set[str]] = {}
    for c in cells:
        u = unit[c.key]
        own[u] = own.get(u, 0.0) + hours.get(c.key, 0.0)
        for d in c.deps:
            if d in unit and unit[d] != u:
                after.setdefault(unit[d], set()).add(u)
    try:  # successors first
        order = list(TopologicalSorter({u: after.get(u, set()) for u in own}).static_order())
    except CycleError:  # sessions that wait on each other: no unit order; fall back to the cells'
        return tails(cells, hours)
    out: dict[str, float] = {}
    for u in order:
        out[u] = own[u] + max((out[v] for v in after.get(u, ())), default=0.0)
    return {c.key: out[unit[c.key]] for c in cells}


def longest_chain(cells: list[Cell], hours: Mapping[str, float]) -> tuple[float, list[Cell]]:
    """(hours, cells) of the longest dependency chain."""
    if not cells:
        return 0.0, []
    tail = tails(cells, hours)
    by = {c.key: c for c in cells}
    children: dict[str, list[Cell]] = {c.key: [] for c in cells}
    for c in cells:
        for d in c.deps:
            if d in children:
                children[d].append(c)
    roots = [c for c in cells if not any(d in by for d in c.deps)]
    node = max(roots, key=lambda c: tail[c.key])
    chain = [node]
    while children[node.key]:
        node = max(children[node.key], key=lambda c: tail[c.key])
        chain.append(node)
    return tail[chain[0].key], chain


def lower_bound(
    cells: list[Cell],
    hours: Mapping[str, float],
    gpu_hours: Mapping[str, tuple[str, float]],
    gpus: Mapping[str, int],
) -> tuple[float, dict[str, float]]:
    """(makespan lower bound, hours per GPU kind): max of the chain and GPU-hours / GPUs per kind.

    `gpu_hours`: cell key -> (GPU kind, GPU-hours held); `gpus`: GPU kind -> GPUs of that kind.
    """
    per_kind: dict[str, float] = {}
    for kind, gh in gpu_hours.values():
        if kind:
            per_kind[kind] = per_kind.get(kind, 0.0) + gh
    bound = {k: v / gpus[k] for k, v in per_kind.items() if gpus.get(k)}
    chain, _ = longest_chain(cells, hours)
    return max([chain, *bound.values()]), bound

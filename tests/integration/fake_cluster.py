"""A fake GPU cluster (`ray.cluster_utils.Cluster`: nodes that declare GPUs and accelerator types
they do not have) on which quantsweep's placement runs with trivial Ray tasks and actors standing in
for cells' processes: no vLLM, no model. Run by tests/integration/test_fake_cluster.py in its own
process (it needs a Ray of its own); prints one JSON object of what it observed.

    python -m tests.integration.fake_cluster
"""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace
from typing import Any

# a light cluster on a small machine: no idle workers started ahead, no usage reports
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from cluster.plan.cells import Cell, Resources
from cluster.run.schedule import Policy, live_nodes

GIB = 2**30


@ray.remote(num_cpus=0)
def where(seconds: float = 0.0) -> dict[str, Any]:
    """The node a process landed on, the GPUs it was given, after sleeping `seconds`."""
    time.sleep(seconds)
    return {"node": ray.get_runtime_context().get_node_id(), "gpus": len(ray.get_gpu_ids())}


@ray.remote(num_cpus=0, max_restarts=0)
class Host:
    """An engine host stand-in: it only says where it runs (and can be kept busy)."""

    def where(self, seconds: float = 0.0) -> dict[str, Any]:
        time.sleep(seconds)
        return {"node": ray.get_runtime_context().get_node_id(), "gpus": len(ray.get_gpu_ids())}

    def own(self) -> list[Any]:
        """An object this actor owns (it is lost with the actor's node)."""
        return [ray.put(b"x" * 1024)]


@ray.remote(num_cpus=0, max_retries=0)
def read(refs: list[Any]) -> int:
    return len(ray.get(refs[0]))


@ray.remote(num_cpus=0, max_retries=0)
def broken() -> None:
    raise ValueError("a bug in the cell")


def cell(key: str, gpus: int, accel: str | None, pp: int = 1, engines: int = 0, mem: float = 0.0) -> Cell:
    res = Resources(cpus=0.25, gpus=gpus, accelerator=accel, pp=pp, engines=engines, memory_gb=mem)
    return Cell("quantize", key, key=key, resources=res)


def _node(accel: str, mem: int) -> dict[str, Any]:
    return {"num_cpus": 1, "num_gpus": 8, "resources": {f"accelerator_type:{accel}": 1}, "memory": mem}


def start(tries: int = 3) -> tuple[Any, dict[str, list[Any]]]:
    """Three nodes: the head an 8 x A100 one (the driver's; never removed), two 8 x H100 ones.

    Ray gives a raylet 30 s to register; on a small machine busy with other work that can pass,
    so a start that times out is tried again (the cluster, not the code under test, failed).
    """
    from ray.cluster_utils import Cluster

    for attempt in range(tries):
        c = Cluster(initialize_head=False)
        try:
            c.add_node(**_node("A100", GIB), include_dashboard=False)
            kinds = {"A100": [c.head_node], "H100": [c.add_node(**_node("H100", 3 * GIB)) for _ in range(2)]}
        except Exception:
            c.shutdown()
            if attempt == tries - 1:
                raise
            continue
        ray.init(address=c.address, log_to_driver=False)
        return c, kinds
    raise AssertionError("unreachable")


def placement(kinds: dict[str, list[Any]]) -> dict[str, Any]:
    """Cells admitted by the policy, launched with the executor's option builders, land where they should."""
    from cluster.eval.engine_host import engine_options
    from cluster.run.remote import cell_options

    node_kind = {n.node_id: k for k, ns in kinds.items() for n in ns}
    env = SimpleNamespace(gpu=True)
    quant = cell(
        "quantize-405b", 1, "H100", mem=2 * GIB / 1e9
    )  # ~810 GB scaled down: only H100 nodes hold it
    engines = cell("engines-70b", 4, "A100", engines=2)
    policy = Policy([quant, engines], {}, live_nodes())
    out: dict[str, Any] = {"admitted": [policy.admit(c.key, c) for c in (quant, engines)]}
    q = where.options(**cell_options(quant, env)).remote()
    hosts = [
        Host.options(**engine_options(0.25, 4, 1, "A100")[0]).remote()
        for _ in range(engines.resources.engines)
    ]
    got = ray.get([q] + [h.where.remote() for h in hosts], timeout=60)
    out["quantize"] = {"kind": node_kind[got[0]["node"]], "gpus": got[0]["gpus"]}
    out["engines"] = [{"kind": node_kind[g["node"]], "gpus": g["gpus"]} for g in got[1:]]
    for h in hosts:
        ray.kill(h)
    out["spanning"] = spanning(node_kind)
    return out


def spanning(node_kind: dict[str, str]) -> dict[str, Any]:
    """A 16-GPU engine (tp 8 x pp 2) in its placement group: both H100 nodes, eight GPUs each."""
    from ray.util.placement_group import placement_group_table, remove_placement_group

    from cluster.eval.engine_host import engine_options

    opts, pg = engine_options(0.25, 8, 2, "H100")
    host = Host.options(**opts).remote()
    ray.get(pg.ready(), timeout=60)
    driver = ray.get(host.where.remote(), timeout=60)
    bundles = placement_group_table(pg)["bundles_to_node_id"]
    per_node: dict[str, int] = {}
    for i, node in bundles.items():
        if i > 0:
            per_node[node_kind[node]] = per_node.get(node_kind[node], 0) + 1
    nodes = {node for i, node in bundles.items() if i > 0}
    ray.kill(host)
    remove_placement_group(pg)
    return {"driver_kind": node_kind[driver["node"]], "gpu_bundles": per_node, "nodes": len(nodes)}


def infeasible() -> dict[str, Any]:
    """Cells no node can host: failed at once against a declared cluster, after the timeout on live nodes."""
    too_big, unknown = cell("too-big", 16, "H100"), cell("b200", 1, "B200")
    declared = Policy([too_big], {}, live_nodes(), declared=live_nodes())
    start_s = time.monotonic()
    live = Policy([unknown], {}, live_nodes(), timeout_s=2.0)
    why = ""
    while not why and time.monotonic() - start_s < 30:
        why = live.reject(unknown)
        time.sleep(0.2)
    return {"declared": declared.reject(too_big), "live": why, "live_s": time.monotonic() - start_s}


def node_loss(c: Any, kinds: dict[str, list[Any]]) -> dict[str, Any]:
    """Remove an H100 node while work runs on it: the work elsewhere finishes, the task on it is
    retried on the other node, and the executor files every loss as infrastructure (retried)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Pin

    from cluster.eval.engine_host import engine_options
    from cluster.run.remote import cell_options

    gone, stays = kinds["H100"]
    opts = cell_options(cell("work", 4, "H100"), SimpleNamespace(gpu=True))
    hosts = engine_options(0.25, 4, 1, "H100")[0]
    host = Host.options(**hosts, scheduling_strategy=Pin(gone.node_id, soft=False)).remote()
    owned = ray.get(host.own.remote(), timeout=60)  # the host owns an object: lost with its node
    long = where.options(**opts, scheduling_strategy=Pin(gone.node_id, soft=True)).remote(3.0)
    short = where.options(**opts, scheduling_strategy=Pin(stays.node_id, soft=True)).remote(2.0)
    busy = host.where.remote(30.0)
    policy = Policy([], {}, live_nodes())
    for unit in ("long", "host", "short"):
        policy.admit(unit, cell(unit, 4, "H100"))
    time.sleep(1.0)  # everything is running
    t0 = time.monotonic()
    c.remove_node(gone)
    out: dict[str, Any] = {"short": ray.get(short, timeout=60)["node"] == stays.node_id}
    out["long_retried_on_other_node"] = ray.get(long, timeout=60)["node"] == stays.node_id
    out["recovered_s"] = time.monotonic() - t0
    policy.refresh(live_nodes())
    out["grants_on_gone"] = sum(1 for g in policy.grants.values() for name, *_ in g if name == gone.node_id)
    out["classified"] = classify([(busy, True), (read.remote(owned), False), (broken.remote(), False)])
    return out


def classify(refs: list[tuple[Any, bool]]) -> list[str]:
    """How the executor's completion path files each ref's outcome (lost: retried; failed: committed)."""
    from cluster.run.executor import Executor, _Running
    from cluster.run.sessions import Session

    seen: list[str] = []
    ex = object.__new__(Executor)
    ex.policy = None
    ex._lost = lambda r, e: seen.append(f"lost {type(e).__name__}")  # type: ignore[method-assign]
    ex._failed = lambda r, e: seen.append(f"failed {type(e).__name__}")  # type: ignore[method-assign]
    for ref, on_session in refs:
        session = Session("engines:m:f", "engines") if on_session else None
        ray.wait([ref], timeout=60)
        ex._completed(ref, _Running(cell("c", 0, None), time.time(), session))
    return seen


def main() -> None:
    """Run every scenario on one fake cluster and print what happened as JSON."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # unwind: the cluster's processes are shut down
    t0 = time.monotonic()
    c, kinds = start()
    report: dict[str, Any] = {"start_s": time.monotonic() - t0}
    try:
        for name, run in (
            ("placement", lambda: placement(kinds)),
            ("infeasible", infeasible),
            ("node_loss", lambda: node_loss(c, kinds)),
        ):
            t = time.monotonic()
            report[name] = run()
            report[f"{name}_s"] = time.monotonic() - t
    finally:
        ray.shutdown()
        c.shutdown()
    report["total_s"] = time.monotonic() - t0
    print("FAKE-CLUSTER " + json.dumps(report))


if __name__ == "__main__":
    main()

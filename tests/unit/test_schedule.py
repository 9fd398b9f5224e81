"""The scheduling policy (cluster/run/schedule.py) on hand-made cells and nodes: order, best-fit
admission, reservations that keep a two-node job from starving, feasibility, nodes that leave;
the schedule simulator on the full study; and `plan --cluster` with its rejections."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cluster.plan.cells import Cell, Resources
from cluster.plan.fit import Node
from cluster.run.schedule import Policy

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
H100 = "H100"


def cell(
    key: str, gpus: int = 1, deps: tuple[str, ...] = (), pp: int = 1, engines: int = 0, mem: float = 0
) -> Cell:
    res = Resources(
        cpus=1, gpus=gpus, pp=pp, accelerator=H100 if gpus else None, engines=engines, memory_gb=mem
    )
    return Cell("quantize", key, key=key, deps=deps, resources=res)


def nodes(n: int = 2, gpus: int = 8, mem: float = 1000) -> list[Node]:
    return [Node(f"n{i}", H100, gpus, 32, mem) for i in range(n)]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_longest_path_first_and_open_sessions_before_anything():
    a, b, c = cell("a"), cell("b"), cell("c", deps=("b",))
    p = Policy([a, b, c], {"a": 5.0, "b": 1.0, "c": 9.0}, nodes())
    assert [x.key for x in p.order([a, b])] == ["b", "a"]  # b leads to c: 10 h of path vs 5
    assert [x.key for x in p.order([a, b], live=lambda x: x.key == "a")] == ["a", "b"]


def test_a_session_ranks_by_its_cells_hours_together_and_runs_the_longest_path_in_it_first():
    """A session (one checkpoint's engines, one Serve deployment) runs its cells one at a time: four
    1 h evaluations of one checkpoint are a 4 h path, not four 1 h branches. Inside it, the cell whose
    results feed the longest path goes first."""
    root = cell("root", 0)
    evals = [cell(f"e{i}", deps=("root",)) for i in range(4)]
    alone = cell("alone", deps=("root",))
    feeds = cell("feeds", 0, deps=("e3",))  # what e3's results feed
    hours = {**{f"e{i}": 1.0 for i in range(4)}, "alone": 2.5, "feeds": 0.5}
    session = {f"e{i}": "engines:m" for i in range(4)}
    p = Policy([root, *evals, alone, feeds], hours, nodes(), unit_of=lambda c: session.get(c.key, c.key))
    assert [x.key for x in p.order([*evals, alone])] == ["e3", "e0", "e1", "e2", "alone"]


def test_sessions_that_wait_on_each_other_fall_back_to_per_cell_paths():
    from cluster.plan.dag import tails, unit_tails

    a1, b1 = cell("a1"), cell("b1", deps=("a1",))
    a2 = cell("a2", deps=("b1",))  # session a feeds session b, which feeds a again: no unit order
    cells, hours = [a1, b1, a2], {"a1": 1.0, "b1": 2.0, "a2": 3.0}
    sessions = {"a1": "a", "a2": "a", "b1": "b"}
    assert (
        unit_tails(cells, hours, lambda c: sessions[c.key])
        == tails(cells, hours)
        == {
            "a1": 6.0,
            "b1": 5.0,
            "a2": 3.0,
        }
    )


def test_best_fit_keeps_a_whole_node_free_for_an_engine_that_needs_it():
    small, other, whole = cell("s", 1), cell("o", 2), cell("w", 8)
    p = Policy([small, other, whole], {}, nodes())
    assert p.admit("s", small) and p.admit("o", other)
    assert {name for name, *_ in p.grants["o"]} == {name for name, *_ in p.grants["s"]}  # packed together
    assert p.admit("w", whole)


def test_a_two_node_engine_gets_a_reservation_that_long_small_work_cannot_take():
    clock = Clock()
    run1, run2, big, long, short = (
        cell("r1", 4),
        cell("r2", 8),
        cell("big", 16, pp=2),
        cell("long", 4),
        cell("short", 4),
    )
    after = cell("after", 0, deps=("big",))  # what big's results feed: its path is 14 h
    hours = {"r1": 1.0, "r2": 2.0, "big": 10.0, "after": 4.0, "long": 5.0, "short": 0.5}
    p = Policy([run1, run2, big, after, long, short], hours, nodes(), clock=clock)
    assert p.admit("r1", run1) and p.admit("r2", run2)  # n0: 4 of 8 taken, n1: full
    ready = p.order([big, long, short])
    assert [x.key for x in ready] == ["big", "long", "short"]
    assert not p.admit("big", big)  # needs both nodes whole: reserved for when r2 ends (2 h)
    # long would hold n0 past the reservation, to 5 h: both paths would end at 19 h, against 17 h
    # with long after big (beside `after`)
    assert not p.admit("long", long)
    assert p.admit("short", short)  # ends in 0.5 h, before it: backfilled


def test_a_reservation_of_a_whole_gpu_kind_yields_to_work_that_would_otherwise_wait_for_its_end():
    """Swapping two paths that cannot run at once pays when both end sooner: a 20 h job on both nodes
    (ready in 2 h) against a 3 h one that fits now. First the short one: 3 + 20 = 23 h; first the
    long one: 2 + 20 + 3 = 25 h. Work that could run beside the reserved job gets no such swap: it
    loses nothing by waiting."""
    clock = Clock()
    run, big, medium, beside = cell("r", 8), cell("big", 16, pp=2), cell("m", 4), cell("b", 4)
    hours = {"r": 2.0, "big": 20.0, "m": 3.0, "b": 3.0}
    p = Policy([run, big, medium], hours, nodes(), clock=clock)
    assert p.admit("r", run)
    p.order([big, medium])
    assert not p.admit("big", big) and p.admit("m", medium)

    one_node, r4, x = cell("big", 8), cell("r", 4), cell("x", 6)  # `b` could run beside this one
    p = Policy([r4, one_node, beside, x], {**hours, "x": 3.0}, nodes(), clock=clock)
    assert p.admit("r", r4) and p.admit("x", x)  # n0: 4 of 8 taken (2 h), n1: 6 of 8 (3 h)
    p.order([one_node, beside])
    assert not p.admit("big", one_node)  # reserved on n0 for when r ends (2 h)
    assert not p.admit("b", beside)  # would hold n0's other 4 GPUs to 3 h: it waits


def test_work_about_to_be_ready_is_not_crowded_out():
    clock = Clock()
    dep, later, filler = cell("dep", 0), cell("later", 16, deps=("dep",), pp=2), cell("filler", 8)
    report = cell("report", 0, deps=("later",))
    hours = {"dep": 0.2, "later": 20.0, "report": 3.0, "filler": 5.0}
    p = Policy([dep, later, report, filler], hours, nodes(), clock=clock)
    assert p.admit("dep", dep)
    state = {"dep": "running", "later": "pending", "filler": "pending"}
    p.order([filler], state=state)
    assert not p.admit("filler", filler)  # `later` is ready in 0.2 h and needs both nodes


def test_the_declared_cluster_rejects_at_once_and_live_nodes_after_the_timeout():
    clock = Clock()
    huge, fits = cell("huge", 16), cell("fits", 8)  # 16 GPUs on one node: never
    p = Policy([huge, fits], {}, nodes(), declared=nodes(), clock=clock)
    assert "one engine needs 16 GPUs on a node; H100 nodes have 8" in p.reject(huge)
    assert p.reject(fits) == ""
    live = Policy([huge], {}, nodes(), timeout_s=30, clock=clock)
    assert live.reject(huge) == "" and live.waiting()
    clock.t = 31
    assert "no node able to host it joined within 30s" in live.reject(huge) and not live.waiting()


def test_host_memory_is_part_of_the_fit():
    q = cell("q", 1, mem=852)
    p = Policy([q], {}, [Node("small", H100, 8, 32, 601), Node("big", H100, 8, 32, 1503)])
    assert p.admit("q", q) and p.grants["q"][0][0] == "big"
    assert "852 GB host memory" in Policy(
        [q], {}, [Node("small", H100, 8, 32, 601)], declared=[Node("small", H100, 8, 32, 601)]
    ).reject(q)


def test_a_node_that_leaves_takes_its_grants_elsewhere():
    a, b = cell("a", 8), cell("b", 8)
    p = Policy([a, b], {}, nodes(3))
    assert p.admit("a", a) and p.admit("b", b)
    gone = p.grants["a"][0][0]
    p.refresh([n for n in nodes(3) if n.name != gone])
    assert p.grants["a"] and p.grants["a"][0][0] != gone
    assert sum(n.free_gpus for n in p.nodes.values()) == 0  # both held on the two nodes left


def test_the_study_replays_within_5_percent_of_its_lower_bound_and_beats_plain_greedy():
    sys.path.insert(0, str(REPO / "bench"))
    from schedule_sim import Greedy, replay

    from cluster.config.clusters import load_cluster
    from cluster.config.loader import load_sweep
    from cluster.plan.cells import plan
    from cluster.plan.cost import estimate
    from serve.host import gpu_driver

    sweep, catalog = load_sweep(REPO / "sweeps" / "full_family.yaml")
    cluster = load_cluster(REPO / "conf" / "clusters" / "study.yaml", catalog)
    cells = plan(sweep, catalog, gpu_driver(), cluster)
    est = estimate(cells, sweep, catalog)
    ours, greedy = replay(cells, est, cluster), replay(cells, est, cluster, Greedy)
    assert not ours.failed
    assert 1.0 <= ours.ratio <= 1.05 and ours.makespan_h < greedy.makespan_h  # the goal


def test_plan_cluster_prints_costs_and_rejections_with_reasons(tmp_path, capsys):
    from cluster.__main__ import main

    assert (
        main(["plan", "sweeps/full_family.yaml", "--cluster", "conf/clusters/study.yaml", "--summary"]) == 0
    )
    out = capsys.readouterr().out
    assert "GPU·h:" in out and "makespan lower bound on 'study'" in out and "rejected" not in out
    small = tmp_path / "small.yaml"
    small.write_text(
        "name: small\nnodes:\n  - {name: h100, count: 1, gpus: 8, accelerator_type: H100, memory_gib: 1400}\n"
    )
    assert main(["plan", "sweeps/full_family.yaml", "--cluster", str(small)]) == 0
    out = capsys.readouterr().out
    assert "no A100 nodes (GPU kinds: H100)" in out and "no RTX-A6000 nodes" in out
    assert "blocked: a cell it needs is infeasible" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nnodes:\n  - {name: x, gpus: 8, accelerator_type: A6000}\n")
    assert main(["plan", "sweeps/full_family.yaml", "--cluster", str(bad)]) == 2
    assert (
        "accelerator_type 'A6000' is not one of conf/hardware.yaml's (A100, H100, RTX-A6000)"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize("gpu", [False, True])
def test_a_cluster_of_cpu_engines_runs_no_more_at_once_than_the_cores(monkeypatch, gpu):
    """CPU engine hosts ask Ray for no CPU (they are pinned to cores), so on a `ray start` cluster
    of CPU nodes the executor counts them as it does on one host; on GPUs Ray's resources decide."""
    from rich.console import Console

    from cluster.config.loader import load_sweep
    from cluster.plan.cells import plan
    from cluster.run import executor
    from cluster.run.env import RunEnv
    from cluster.store.provenance import Provenance
    from tests.helpers import host_profile

    monkeypatch.setattr(executor, "for_cluster", lambda env, cells: None)  # no live Ray here
    sweep, cat = load_sweep(REPO / "sweeps" / "smoke.yaml", [])
    env = RunEnv(sweep, cat, "/nonexistent", host_profile(), Provenance("t", "t", 0), gpu=gpu)
    cells = plan(sweep, cat, env.host)
    ex = executor.Executor(env, cells, Console(), fresh=True, on_cluster=True)
    for i in range(env.host.cores):  # one quantization per core already runs
        ex.running[f"q{i}"] = executor._Running(cell(f"q{i}", gpus=0), 0.0)
    assert ex._can_start(next(c for c in cells if c.stage == "quantize"), 1) is gpu
    assert ex.capacity == (10**6 if gpu else env.host.cores)


def test_a_bare_vllm_measurement_waits_for_serves_deployment_to_start_and_go(monkeypatch):
    """On one host a measurement runs alone: the bare `vllm serve` cell neither overlaps a Serve
    replica starting (its engine load takes the cores) nor runs beside a live Serve app."""
    from rich.console import Console

    from cluster.config.loader import load_sweep
    from cluster.plan.cells import plan
    from cluster.run import executor
    from cluster.run.env import RunEnv
    from cluster.run.sessions import Session
    from cluster.store.provenance import Provenance
    from tests.helpers import host_profile

    monkeypatch.setattr(executor, "for_cluster", lambda env, cells: None)
    sweep, cat = load_sweep(REPO / "sweeps" / "smoke.yaml", ["serve.bare_baseline=true"])
    env = RunEnv(sweep, cat, "/nonexistent", host_profile(), Provenance("t", "t", 0), gpu=False)
    cells = plan(sweep, cat, env.host)
    ex = executor.Executor(env, cells, Console(), fresh=True, on_cluster=False)
    bare = next(c for c in cells if c.stage == "loadtest_bare" and c.format == "bf16")
    serve = next(c for c in cells if c.stage == "loadtest" and c.format == "bf16")
    assert ex._can_start(bare, 0)
    ex.sessions["serve:a"] = Session("serve:a", "serve", opening=object())  # a deployment starting
    assert not ex._can_start(bare, 0) and not ex._can_start(serve, 0)
    ex.sessions["serve:a"].opening = None  # up: its own load tests may run, the bare one waits
    assert ex._can_start(serve, 0) and not ex._can_start(bare, 0)
    del ex.sessions["serve:a"]
    assert ex._can_start(bare, 0)


def test_a_stopping_deployment_holds_back_measurements_only(monkeypatch):
    """Deleting a Serve app takes half a minute on a CPU host: the executor asks and goes on. Light
    cells start meanwhile; a measurement or a new deployment waits until Serve no longer lists it."""
    from rich.console import Console

    from cluster.config.loader import load_sweep
    from cluster.plan.cells import plan
    from cluster.run import executor
    from cluster.run.env import RunEnv
    from cluster.run.sessions import Session
    from cluster.stages import loadtest
    from cluster.store.provenance import Provenance
    from serve import app
    from tests.helpers import host_profile

    monkeypatch.setattr(executor, "for_cluster", lambda env, cells: None)
    sweep, cat = load_sweep(REPO / "sweeps" / "smoke.yaml", ["serve.bare_baseline=true"])
    env = RunEnv(sweep, cat, "/nonexistent", host_profile(), Provenance("t", "t", 0), gpu=False)
    cells = plan(sweep, cat, env.host)
    ex = executor.Executor(env, cells, Console(), fresh=True, on_cluster=False)
    asked: list[str] = []
    listed = {"quantsweep-a"}
    monkeypatch.setattr(loadtest, "close_session", lambda env, s: asked.append(s.key) or ["quantsweep-a"])
    monkeypatch.setattr(app, "remaining", lambda names: sorted(listed & set(names)))
    bare = next(c for c in cells if c.stage == "loadtest_bare")
    light = next(c for c in cells if c.stage == "recovery")

    ex._close(Session("serve:a", "serve", handle={"served": {}, "hardware": "cpu-local"}))
    assert asked == ["serve:a"] and "serve:a" in ex.closing and "serve:a" not in ex.sessions
    ex._reap()  # still listed: still closing
    assert not ex._can_start(bare, 0) and not ex._can_open("serve", 1)
    assert ex._can_start(light, 1)
    listed.clear()
    ex._reap()
    assert not ex.closing and ex._can_start(bare, 0) and ex._can_open("serve", 1)


def test_a_failing_shutdown_does_not_hide_the_error_that_ended_the_run(monkeypatch):
    """After an interrupted run Ray may already be gone: closing the sessions, polling Serve's deletes
    and stopping the hosts then raise too. Each is tried and logged in one line; the run's own error
    is the one that propagates."""
    from rich.console import Console

    from cluster.config.loader import load_sweep
    from cluster.plan.cells import plan
    from cluster.run import executor
    from cluster.run.env import RunEnv
    from cluster.run.sessions import Session
    from cluster.stages import loadtest
    from cluster.store.provenance import Provenance
    from serve import app
    from tests.helpers import host_profile

    def gone(*_: object) -> None:
        raise ConnectionError("Ray is not running")

    monkeypatch.setattr(executor, "for_cluster", lambda env, cells: None)
    monkeypatch.setattr(executor, "start_board", lambda: None)
    monkeypatch.setattr(loadtest, "close_session", gone)
    monkeypatch.setattr(app, "remaining", gone)
    sweep, cat = load_sweep(REPO / "sweeps" / "smoke.yaml")
    env = RunEnv(sweep, cat, "/nonexistent", host_profile(), Provenance("t", "t", 0), gpu=False)
    console = Console(record=True, width=200)
    ex = executor.Executor(env, plan(sweep, cat, env.host), console, fresh=True, on_cluster=False)
    monkeypatch.setattr(ex.pool, "close", gone)
    ex.sessions["serve:a"] = Session("serve:a", "serve", handle={"served": {}, "hardware": "cpu-local"})

    def interrupted() -> None:
        ex.closing["serve:b"] = (["quantsweep-b"], float("inf"))  # a delete asked for before the loss
        raise RuntimeError("the driver lost its connection")

    monkeypatch.setattr(ex, "_settle", interrupted)
    with pytest.raises(RuntimeError, match="lost its connection"):
        ex.run()
    log = console.export_text()
    for step in ("close serve:a", "wait for Serve's deletes", "stop engine hosts"):
        assert f"shutdown: {step} failed: ConnectionError: Ray is not running" in log
    assert not ex.sessions and not ex.closing

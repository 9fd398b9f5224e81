"""Placement decisions the plan makes per cell: pipeline parallel across nodes for 405B BF16, the
A6000 as Ray names it, accelerator constraints on every GPU load test, formats taking turns when
they do not fit at once, host memory for quantization, and GPU cells planned (and waiting, not
failing at once) on a cluster that starts with no GPU node."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from cluster.config.capacity import ClusterConfig, NodeGroupConfig
from cluster.config.clusters import load_cluster
from cluster.config.loader import load_sweep
from cluster.plan.cells import plan
from cluster.plan.fit import Node, nodes_from, rejections
from cluster.plan.placement import engine_shape, host_memory_gb
from cluster.run.schedule import Policy
from serve.engine import engine_kwargs, lm_eval_kwargs
from serve.host import gpu_driver

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
M8, M70, M405 = (f"llama-3.1-{s}-instruct" for s in ("8b", "70b", "405b"))


@pytest.fixture(scope="module")
def full():
    sweep, catalog = load_sweep(REPO / "sweeps" / "full_family.yaml")
    cluster = load_cluster(REPO / "conf" / "clusters" / "study.yaml", catalog)
    return sweep, catalog, cluster, plan(sweep, catalog, gpu_driver(), cluster)


def _one(cells, stage, model, fmt, **kw):
    return next(
        c
        for c in cells
        if (c.stage, c.model, c.format) == (stage, model, fmt)
        and all(getattr(c, k) == v for k, v in kw.items())
    )


def _cluster(*groups: tuple[str, int, int, str | None, float]) -> ClusterConfig:
    return ClusterConfig(
        name="t",
        nodes=[NodeGroupConfig(n, count, gpus, accel, 64, mem) for n, count, gpus, accel, mem in groups],
    )


def test_405b_bf16_spans_two_8_gpu_nodes_with_pipeline_parallelism(full):
    sweep, catalog, _, cells = full
    m, bf16, a100 = catalog.models[M405], catalog.formats["bf16"], catalog.hardware["a100"]
    assert (engine_shape(m, bf16, a100, 8).tp, engine_shape(m, bf16, a100, 8).pp) == (8, 2)
    ev = _one(cells, "evaluate", M405, "bf16", suite="leaderboard_v1")
    assert (ev.resources.gpus, ev.resources.pp, ev.resources.engines, ev.resources.accelerator) == (
        16,
        2,
        1,
        "A100",
    )
    kw = lm_eval_kwargs(sweep.engine, gpu_driver(), 8, False, 0, pp=2)
    assert kw["pipeline_parallel_size"] == 2 and kw["tensor_parallel_size"] == 8
    assert kw["distributed_executor_backend"] == "ray"  # workers in the host's own placement group
    assert "pipeline_parallel_size" not in engine_kwargs(sweep.engine, gpu_driver(), 8, False)


def test_405b_bf16_is_rejected_with_the_reason_where_one_node_of_its_kind_is_all_there_is(full):
    sweep, catalog, _, _ = full
    small = _cluster(("h100", 1, 8, "H100", 1400), ("a100", 1, 8, "A100", 560))
    cells = plan(sweep, catalog, gpu_driver(), small)
    why = rejections(cells, small)
    ev = _one(cells, "evaluate", M405, "bf16", suite="leaderboard_v1")
    assert "spans 2 nodes of 8 x A100 (pipeline parallel); the cluster has 1" in why[ev.key]
    assert _one(cells, "evaluate", M405, "w8a8-int", suite="leaderboard_v1").key not in why


def test_a6000_is_named_as_ray_names_it_and_its_replicas_are_priced(full):
    from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager

    _, catalog, cluster, cells = full
    a6000 = catalog.hardware["a6000"]
    assert (
        NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type("NVIDIA RTX A6000")
        == a6000.accelerator_type
    )
    assert "RTX-A6000" in {g.accelerator_type for g in cluster.nodes}
    measured = [c for c in cells if c.stage == "loadtest" and c.hardware == "a6000" and c.status == "planned"]
    assert measured
    for c in measured:  # every replica the plan deploys there has a price and fits a node
        assert c.resources.gpus in a6000.price_per_hour and c.resources.gpus <= a6000.gpus_per_node
    assert {c.resources.gpus for c in measured if c.model == M70 and c.format == "bf16"} == {4}


def test_every_gpu_load_test_is_pinned_to_its_accelerator(full):
    from cluster.stages.loadtest import served_model

    _, catalog, _, cells = full
    env = SimpleNamespace(catalog=catalog)
    for c in (c for c in cells if c.stage == "loadtest"):
        hw = catalog.hardware[c.hardware]
        assert c.resources.accelerator == hw.accelerator_type and c.resources.gpus >= 1
        served = served_model(env, c, "/ckpt")
        assert served.accelerator == hw.accelerator_type
        assert served.tensor_parallel_size * served.pipeline_parallel_size == c.resources.gpus


def test_formats_that_do_not_fit_a_node_together_take_turns(full):
    sweep, catalog, _, cells = full
    node = [Node("h100-0", "H100", 8, 64, 1500)]
    unit = lambda c: f"serve:{c.model}:{c.format}:{c.hardware}"  # noqa: E731 - the executor's session key
    big = [
        c
        for c in cells
        if c.stage == "loadtest"
        and c.model == M405
        and c.hardware == "h100"
        and c.use_case == "rag"
        and c.status == "planned"
    ]
    policy = Policy(cells, {}, node, unit_of=unit)
    admitted = [c.format for c in big if policy.admit(unit(c), c)]
    assert sorted(c.format for c in big) == ["w4a16-int", "w8a8-fp", "w8a8-int"]
    assert admitted == ["w8a8-fp"]  # 8 GPUs: the node; the others wait their turn
    policy.release(unit(big[0]))
    assert [c.format for c in big[1:] if policy.admit(unit(c), c)] == ["w8a8-int"]
    small = [
        c
        for c in cells
        if c.stage == "loadtest" and c.model == M8 and c.hardware == "h100" and c.use_case == "rag"
    ]
    fresh = Policy(cells, {}, [Node("h100-0", "H100", 8, 64, 1500)], unit_of=unit)
    assert all(fresh.admit(unit(c), c) for c in small) and len(small) == 4  # 8B: every format at once


def test_quantization_asks_for_host_memory_and_goes_where_a_node_holds_it(full):
    _, catalog, _, cells = full
    q405 = _one(cells, "quantize", M405, "w8a8-int")
    assert q405.resources.memory_gb == pytest.approx(
        host_memory_gb(catalog.models[M405], catalog.formats["w8a8-int"])
    )
    assert 810 <= q405.resources.memory_gb < 900
    # A100 comes first in full_family's placement, but the study's A100 nodes hold 601 GB: H100 it is
    assert q405.resources.accelerator == "H100"
    assert _one(cells, "quantize", M70, "w8a8-int").resources.accelerator == "A100"
    base = _one(cells, "quantize", M405, "bf16")
    assert base.resources.gpus == 0 and base.resources.memory_gb == 0  # the baseline is passed through


def test_a_cluster_with_no_gpu_node_yet_still_gets_gpu_cells_that_wait_then_fail_with_the_reason(full):
    sweep, catalog, study, _ = full
    cells = plan(sweep, catalog, gpu_driver())  # no cluster file: placed from the sweep alone
    gpu_cells = [c for c in cells if c.status == "planned" and c.resources.gpus]
    assert len(gpu_cells) > 200 and all(c.resources.accelerator for c in gpu_cells)
    now = [0.0]
    head = [Node("head", None, 0, 8, 32)]
    live = Policy(cells, {}, head, timeout_s=600, clock=lambda: now[0])
    ev = _one(cells, "evaluate", M8, "bf16", suite="leaderboard_v1")
    assert live.reject(ev) == "" and live.waiting()  # nodes may still join (an autoscaler)
    now[0] = 601.0
    assert "no node able to host it joined within 600s: no A100 nodes" in live.reject(ev)
    asked: list = []
    declared = Policy(cells, {}, head, declared=nodes_from(study), clock=lambda: now[0])
    declared.ask = asked.extend
    assert declared.reject(ev) == "" and asked and asked[0].accelerator == "A100"  # the autoscaler is asked
    assert "no RTX-A6000 nodes" in Policy(cells, {}, head, declared=[Node("x", "H100", 8, 64, 1500)]).reject(
        _one(cells, "loadtest", M8, "bf16", hardware="a6000", use_case="rag")
    )

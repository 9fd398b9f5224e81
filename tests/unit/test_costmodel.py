"""The plan's cost model: token arithmetic, engine rates against the paper's one known latency,
GPU-hours and dollars from the price table, ASHA's trial counts, and assumptions that never touch a
cell's key."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cluster.config.capacity import CostConfig, TaskCost
from cluster.config.clusters import load_cluster
from cluster.config.loader import load_sweep
from cluster.config.schema import SuiteConfig, TaskSpec
from cluster.plan.cells import plan
from cluster.plan.cost import estimate
from cluster.plan.placement import price_per_hour
from cluster.plan.rates import Engine, suite_tokens, trial_count
from serve.host import gpu_driver

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study():
    sweep, catalog = load_sweep(REPO / "sweeps" / "full_family.yaml")
    cluster = load_cluster(REPO / "conf" / "clusters" / "study.yaml", catalog)
    cells = plan(sweep, catalog, gpu_driver(), cluster)
    return sweep, catalog, cells, estimate(cells, sweep, catalog)


def test_suite_tokens_count_shots_choices_and_generations():
    suite = SuiteConfig(
        name="s", tasks=[TaskSpec(name="mc", num_fewshot=4), TaskSpec(name="gen", max_gen_toks=50)]
    )
    cost = CostConfig(
        tasks={
            "mc": TaskCost(docs=10, doc_tokens=100, choices=4, choice_tokens=5),
            "gen": TaskCost(docs=3, doc_tokens=20, gen_tokens=80),
        }
    )
    prefill, gen = suite_tokens(suite, cost, None)
    assert prefill == 10 * (100 * 5 + 4 * 5) + 3 * 20
    assert gen == 3 * 50  # generation stops at the task's max_gen_toks
    assert suite_tokens(suite, cost, 2) == (2 * (100 * 5 + 4 * 5) + 2 * 20, 2 * 50)  # a budget per task


def test_one_request_on_an_a6000_matches_the_papers_8b_bf16_latency():
    _, catalog = load_sweep(REPO / "sweeps" / "full_family.yaml")
    engine = Engine(
        catalog.cost,
        catalog.models["llama-3.1-8b-instruct"],
        catalog.formats["bf16"],
        catalog.hardware["a6000"],
        1,
    )
    # REFERENCE.md: code completion (256 in, 1024 out) took 24.5 s on 1 x A6000 in BF16
    assert engine.latency_s(256, 1024) == pytest.approx(24.5, rel=0.1)


def test_gpu_hours_and_dollars_follow_what_a_cell_holds_and_the_price_table(study):
    _, catalog, cells, est = study
    for c in cells:
        e = est[c.key]
        if c.status != "planned" or not e.hardware:
            continue
        hw = catalog.hardware[e.hardware]
        assert e.gpus == c.resources.total_gpus
        assert e.gpu_hours == pytest.approx(e.hours * e.gpus)
        assert e.dollars == pytest.approx(
            e.hours * c.resources.processes * price_per_hour(hw, c.resources.gpus)
        )


def test_the_baseline_passes_through_and_quantizing_405b_costs_hours(study):
    _, _, cells, est = study
    by = {(c.stage, c.model, c.format): est[c.key] for c in cells}
    assert by[("quantize", "llama-3.1-405b-instruct", "bf16")].gpu_hours == 0
    big = by[("quantize", "llama-3.1-405b-instruct", "w8a8-int")]
    small = by[("quantize", "llama-3.1-8b-instruct", "w8a8-int")]
    assert 1 < big.hours < 6 and big.hours > 20 * small.hours
    assert big.memory_gb >= 810  # the BF16 weights on the host


def test_price_beyond_the_table_scales_the_largest_entry():
    _, catalog = load_sweep(REPO / "sweeps" / "full_family.yaml")
    h100 = catalog.hardware["h100"]
    assert price_per_hour(h100, 8) == 23.92
    assert price_per_hour(h100, 16) == pytest.approx(2 * 23.92)


def test_asha_keeps_one_in_reduction_factor_per_rung():
    assert trial_count(24, 3, 2, asha=True) == [24, 12, 6]
    assert trial_count(24, 3, 2, asha=False) == [24, 24, 24]
    assert trial_count(3, 3, 4, asha=True) == [3, 1, 1]


def test_the_search_takes_longer_with_fewer_trials_at_once(study):
    sweep, catalog, cells, _ = study
    tune = next(c for c in cells if c.stage == "tune" and c.model == "llama-3.1-70b-instruct")
    one = replace(tune, key="one-at-a-time", resources=replace(tune.resources, trials=1))
    est = estimate([tune, one], sweep, catalog)
    assert est[tune.key].hours * 4 < est[one.key].hours  # 8 trials at once vs 1


def test_cost_assumptions_never_change_a_key():
    sweep, catalog = load_sweep(REPO / "sweeps" / "full_family.yaml")
    before = [c.key for c in plan(sweep, catalog, gpu_driver())]
    catalog.hardware["h100"] = replace(
        catalog.hardware["h100"], hbm_gbps=1.0, peak_tflops={}, gpus_per_node=4
    )
    catalog.cost = replace(catalog.cost, prefill_mfu=0.01)
    assert [c.key for c in plan(sweep, catalog, gpu_driver())] == before

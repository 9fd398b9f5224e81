"""Sweep expansion: every cell planned with its dependencies, keys stable and derived from their
inputs, impossible cells skipped with a reason, and the host deciding how each format is scored."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cluster.config.loader import load_catalog, load_sweep
from cluster.plan.cells import device_count, plan
from serve import host

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
AVX2 = host.detect(frozenset({"avx", "avx2", "fma"}))
AMX = host.detect(
    frozenset({"avx2", "avx512f", "avx512vl", "avx512bw", "avx512dq", "avx512_bf16", "amx_bf16"})
)


def _cells(sweep: str = "smoke.yaml", overrides=None, profile=AMX):
    s, cat = load_sweep(REPO / "sweeps" / sweep, overrides)
    return plan(s, cat, profile)


def test_full_family_expands_every_combination():
    cells = _cells("full_family.yaml")
    stages = Counter(c.stage for c in cells)
    assert stages["prepare"] == 3 and stages["quantize"] == stages["health"] == 3 * 4
    assert stages["evaluate"] == stages["recovery"] == 3 * 4 * 2
    assert stages["loadtest"] == 3 * 4 * 3 * 7
    assert stages["tune"] == 3
    assert len({c.key for c in cells}) == len(cells)


def test_the_bare_vllm_baseline_twins_every_load_test_and_leaves_serves_keys_alone():
    plain = _cells("full_family.yaml")
    cells = _cells("full_family.yaml", ["serve.bare_baseline=true"])
    serve = [c for c in cells if c.stage == "loadtest"]
    bare = {(c.model, c.format, c.hardware, c.use_case): c for c in cells if c.stage == "loadtest_bare"}
    assert len(bare) == len(serve) == 3 * 4 * 3 * 7
    assert {c.key for c in plain} == {c.key for c in cells if c.stage != "loadtest_bare"}
    for c in serve:
        twin = bare[(c.model, c.format, c.hardware, c.use_case)]
        # the same checkpoint, GPUs, GPU kind and skip verdict; rows apart by the `server` partition
        assert (twin.deps, twin.resources, twin.status, twin.reason) == (
            c.deps,
            c.resources,
            c.status,
            c.reason,
        )
        assert (c.server, twin.server) == ("ray-serve", "vllm-serve") and twin.key != c.key


def test_client_processes_key_the_load_tests_only_when_not_the_default():
    plain = {c.label: c.key for c in _cells()}
    one = {c.label: c.key for c in _cells(overrides=["serve.client_processes=1"])}
    two = {c.label: c.key for c in _cells(overrides=["serve.client_processes=2"])}
    assert one == plain  # the default keeps the keys results were committed under
    changed = {label for label in plain if two[label] != plain[label]}
    assert changed and all(label.startswith("loadtest") for label in changed)


def test_dependencies_point_upstream_and_exist():
    cells = _cells()
    seen: set[str] = set()
    for c in cells:
        assert set(c.deps) <= seen, f"{c.label} depends on a cell planned after it"
        seen.add(c.key)
    by = {(c.stage, c.format, c.suite): c for c in cells}
    rec = by[("recovery", "w8a8-int", "tiny")]
    assert set(rec.deps) == {by[("evaluate", "w8a8-int", "tiny")].key, by[("evaluate", "bf16", "tiny")].key}


def test_fp8_is_skipped_without_fp8_kernels_and_planned_on_h100():
    cells = [c for c in _cells("full_family.yaml") if c.stage == "loadtest" and c.format == "w8a8-fp"]
    assert all(
        c.status == "skipped" and "a100 has no fast fp8" in c.reason for c in cells if c.hardware == "a100"
    )
    assert any(c.status == "planned" for c in cells if c.hardware == "h100")


def test_an_avx2_host_scores_w4a16_through_a_dense_copy_and_says_so():
    avx2 = {(c.stage, c.format): c for c in _cells(profile=AVX2)}
    amx = {(c.stage, c.format): c for c in _cells(profile=AMX)}
    assert (
        avx2[("evaluate", "w4a16-int")].route == "dequantized"
        and amx[("evaluate", "w4a16-int")].route == "kernel"
    )
    assert avx2[("evaluate", "w8a8-int")].route == "kernel"
    load = avx2[("loadtest", "w4a16-int")]
    assert load.status == "skipped" and "AVX2 CPU build (_C_AVX2) has no W4A16 kernel" in load.reason
    assert amx[("loadtest", "w4a16-int")].status == "planned"
    # the compute dtype and the route are part of the key: a checkpoint made on one kind is not reused on the other
    assert avx2[("quantize", "w4a16-int")].key != amx[("quantize", "w4a16-int")].key


def test_gpu_counts_follow_the_model_table_and_memory():
    cat = load_catalog()
    m70, m405 = cat.models["llama-3.1-70b-instruct"], cat.models["llama-3.1-405b-instruct"]
    assert device_count(m70, cat.formats["bf16"], cat.hardware["a100"]) == 2
    assert device_count(m70, cat.formats["w4a16-int"], cat.hardware["a100"]) == 1
    assert device_count(cat.models["llama-3.1-8b-instruct"], cat.formats["bf16"], cat.hardware["a6000"]) == 1
    assert device_count(m70, cat.formats["bf16"], cat.hardware["a6000"]) == 4
    assert device_count(m405, cat.formats["bf16"], cat.hardware["h100"]) == 16


def test_405b_bf16_beyond_the_price_table_is_skipped_with_reason():
    cells = [
        c
        for c in _cells("full_family.yaml")
        if c.stage == "loadtest"
        and c.model == "llama-3.1-405b-instruct"
        and c.format == "bf16"
        and c.hardware == "h100"
    ]
    assert cells and all("needs 16 x NVIDIA H100" in c.reason for c in cells)


def test_a_changed_recipe_changes_exactly_the_keys_downstream_of_it():
    a = {(c.stage, c.format, c.suite, c.use_case): c.key for c in _cells()}
    assert a == {(c.stage, c.format, c.suite, c.use_case): c.key for c in _cells()}
    b = {
        (c.stage, c.format, c.suite, c.use_case): c.key
        for c in _cells(overrides=["recipe_overrides.w8a8-int={calibration.num_samples: 32}"])
    }
    changed = {k for k in a if a[k] != b[k]}
    assert changed == {k for k in a if k[1] == "w8a8-int" and k[0] != "similarity"} | {
        ("similarity", "w8a8-int", "", "")
    }


def test_a_changed_suite_setting_reruns_evaluations_not_quantization():
    a = {(c.stage, c.format): c.key for c in _cells()}
    b = {(c.stage, c.format): c.key for c in _cells(overrides=["eval.limit=20"])}
    assert all(a[k] == b[k] for k in a if k[0] in ("prepare", "quantize", "health", "loadtest"))
    assert all(a[k] != b[k] for k in a if k[0] in ("evaluate", "recovery"))


def test_large_models_health_cells_wait_for_the_baselines_engine_gate():
    sweep, cat = load_sweep(REPO / "sweeps" / "full_family.yaml")
    cells = plan(sweep, cat, AMX)
    key = {(c.stage, c.model, c.format): c.key for c in cells if c.stage in ("quantize", "health")}
    health = [c for c in cells if c.stage == "health" and c.format != "bf16"]
    for c in health:  # 8B: a transformers forward; 70B, 405B: compared with the baseline's vLLM side
        engine_gated = cat.models[c.model].params_b > sweep.quantize.quality.max_params_b
        expected = {key[("quantize", c.model, c.format)]}
        expected |= {key[("health", c.model, "bf16")]} if engine_gated else set()
        assert set(c.deps) == expected, c.label
    assert sum(len(c.deps) == 2 for c in health) == 6  # 70B and 405B x three formats
    from cluster.plan.cost import session_of

    for c in cells:  # the gate's baseline opens engines of its own: the evaluations do not hold them up
        if c.format == "bf16" and c.stage == "health":
            engine_gated = cat.models[c.model].params_b > sweep.quantize.quality.max_params_b
            assert (session_of(c)[-1] == "gate") == engine_gated and (c.session == "gate") == engine_gated
    engine = ["quantize.quality.backend=vllm", "tune.proxy=none", "tune.prescreen_keep=null"]
    small = {(c.stage, c.format): c for c in _cells(overrides=engine)}
    default = {(c.stage, c.format): c for c in _cells()}
    assert small[("health", "bf16")].key in small[("health", "w8a8-int")].deps
    assert small[("health", "w8a8-int")].key != default[("health", "w8a8-int")].key


def test_the_tuning_baseline_runs_with_the_baselines_own_parallelism():
    """Tuning W8A8-INT on H100: the trials' engines are the tuned format's, the BF16 baseline's are
    BF16's (70B BF16 does not fit one GPU; 405B BF16 spans two 8-GPU nodes), never the tuned one's."""
    from cluster.run.env import RunEnv
    from cluster.stages.tune import _engine_of
    from cluster.store.provenance import Provenance

    sweep, cat = load_sweep(
        REPO / "sweeps" / "full_family.yaml", ["placement.cluster=conf/clusters/study.yaml"]
    )
    env = RunEnv(sweep, cat, "/nonexistent", AMX, Provenance("t", "t", 0), gpu=True)
    tune = {c.model.split("-")[2]: c for c in plan(sweep, cat, AMX) if c.stage == "tune"}  # 8b, 70b, 405b
    shapes = {b: (_engine_of(env, c, "w8a8-int"), _engine_of(env, c, "bf16")) for b, c in tune.items()}
    assert shapes["8b"] == ((1, 1), (1, 1))
    (tp70, pp70), (btp70, bpp70) = shapes["70b"]
    assert btp70 * bpp70 > tp70 * pp70 and bpp70 == 1  # within one node, more GPUs than INT8's
    assert shapes["405b"][1] == (8, 2)  # BF16 405B: tensor parallel 8 within a node, pipeline over two
    assert shapes["405b"][0][0] * shapes["405b"][0][1] == 8
    env_cpu = RunEnv(sweep, cat, "/nonexistent", AMX, Provenance("t", "t", 0), gpu=False)
    assert _engine_of(env_cpu, tune["405b"], "bf16") == (1, 1)  # on CPU one in-process engine

"""Sweep expansion: every cell planned, keys stable, impossible cells skipped with a reason."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cluster.loader import load_catalog, load_sweep
from cluster.plan import device_count, plan

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def test_full_family_expands_every_combination():
    sweep, cat = load_sweep(REPO / "sweeps" / "full_family.yaml")
    cells = plan(sweep, cat)
    stages = Counter(c.stage for c in cells)
    assert stages["quantize"] == 3 * 4
    assert stages["evaluate"] == 3 * 4 * 2
    assert stages["serve"] == 3 * 4 * 3 * 7 * 2
    assert stages["tune"] == 3
    assert len({c.key for c in cells}) == len(cells)


def test_fp8_is_skipped_without_fp8_kernels_and_planned_on_h100():
    sweep, cat = load_sweep(REPO / "sweeps" / "full_family.yaml")
    serve = [c for c in plan(sweep, cat) if c.stage == "serve" and c.format == "w8a8-fp"]
    assert all(c.status.startswith("skipped: a100 has no fast fp8") for c in serve if "xa100" in c.detail)
    assert any(c.status == "planned" for c in serve if "xh100" in c.detail)


def test_gpu_counts_follow_the_model_table_and_memory():
    cat = load_catalog()
    m70, m405 = cat.models["llama-3.1-70b-instruct"], cat.models["llama-3.1-405b-instruct"]
    assert device_count(m70, cat.formats["bf16"], cat.hardware["a100"]) == 2
    assert device_count(m70, cat.formats["w4a16-int"], cat.hardware["a100"]) == 1
    assert device_count(cat.models["llama-3.1-8b-instruct"], cat.formats["bf16"], cat.hardware["a6000"]) == 1
    assert device_count(m70, cat.formats["bf16"], cat.hardware["a6000"]) == 4
    assert device_count(m405, cat.formats["bf16"], cat.hardware["h100"]) == 16


def test_405b_bf16_beyond_the_price_table_is_skipped_with_reason():
    sweep, cat = load_sweep(REPO / "sweeps" / "full_family.yaml")
    cells = [
        c
        for c in plan(sweep, cat)
        if c.stage == "serve"
        and c.model == "llama-3.1-405b-instruct"
        and c.format == "bf16"
        and "h100" in c.detail
    ]
    assert cells and all("needs 16 x NVIDIA H100" in c.status for c in cells)


def test_keys_change_with_the_recipe_and_not_otherwise():
    sweep, cat = load_sweep(REPO / "sweeps" / "smoke.yaml")
    a = {c.detail: c.key for c in plan(sweep, cat) if c.stage == "quantize"}
    sweep2, cat2 = load_sweep(REPO / "sweeps" / "smoke.yaml")
    assert a == {c.detail: c.key for c in plan(sweep2, cat2) if c.stage == "quantize"}
    sweep3, cat3 = load_sweep(
        REPO / "sweeps" / "smoke.yaml", ["recipe_overrides.w8a8-int={calibration.num_samples: 32}"]
    )
    q1 = [c.key for c in plan(sweep, cat) if c.stage == "quantize" and c.format == "w8a8-int"]
    q3 = [c.key for c in plan(sweep3, cat3) if c.stage == "quantize" and c.format == "w8a8-int"]
    assert q1 != q3

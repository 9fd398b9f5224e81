"""Quantization per format: compressed-tensors configs match the recipes, recipes round-trip, GPTQ
fallbacks are caught, weight-only checkpoints dequantize onto their grid, and the vLLM probe tells a
loadable checkpoint from a corrupt one."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from cluster.config.loader import load_catalog
from cluster.quant import health
from cluster.quant.oneshot import quantize_into
from cluster.quant.recipes import RECIPE_FILE, load_recipe
from tests.helpers import host_profile, lm_kwargs

pytestmark = pytest.mark.integration
FORMATS = ["w8a8-fp", "w8a8-int", "w4a16-int"]


def _recipe(fmt: str):
    recipe = load_catalog().formats[fmt].recipe
    recipe.calibration.num_samples, recipe.calibration.max_seq_length = 32, 128
    return recipe


@pytest.fixture(scope="module")
def quantized(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    out = {}
    for f in FORMATS:
        meta = quantize_into(
            str(tiny.model_dir), _recipe(f), root / f, host_profile().compute_dtype, str(tiny.instruct_file)
        )
        out[f] = (_recipe(f), {**meta, "path": str(root / f)})
    return root, out


def _qconfig(meta: dict) -> dict:
    return json.loads(Path(meta["path"], "config.json").read_text())["quantization_config"]


def test_fp8_dynamic_matches_the_recipe(quantized):
    group = _qconfig(quantized[1]["w8a8-fp"][1])["config_groups"]["group_0"]
    assert (group["weights"]["type"], group["weights"]["num_bits"], group["weights"]["strategy"]) == (
        "float",
        8,
        "channel",
    )
    assert group["input_activations"]["dynamic"] and group["input_activations"]["strategy"] == "token"


def test_int8_is_per_channel_weights_and_dynamic_per_token_activations(quantized):
    q = _qconfig(quantized[1]["w8a8-int"][1])
    group = q["config_groups"]["group_0"]
    assert (group["weights"]["type"], group["weights"]["num_bits"], group["weights"]["strategy"]) == (
        "int",
        8,
        "channel",
    )
    assert group["input_activations"]["type"] == "int" and group["input_activations"]["dynamic"]
    assert "lm_head" in q["ignore"]


def test_int4_groups_of_128_with_mse_clipping_and_no_activation_quantization(quantized):
    runs = quantized[1]
    group = _qconfig(runs["w4a16-int"][1])["config_groups"]["group_0"]
    assert (group["weights"]["num_bits"], group["weights"]["group_size"], group["weights"]["symmetric"]) == (
        4,
        128,
        True,
    )
    assert group["weights"]["observer"] == "mse" and group.get("input_activations") is None
    assert runs["w4a16-int"][1]["size_bytes"] < runs["w8a8-int"][1]["size_bytes"]


def test_recipe_saved_beside_checkpoint_reloads_equal(quantized):
    for recipe, meta in quantized[1].values():
        assert load_recipe(Path(meta["path"]) / RECIPE_FILE) == recipe


def test_peak_memory_and_time_are_recorded(quantized):
    for _, meta in quantized[1].values():
        assert meta["peak_rss_mb"] > 100 and meta["wall_s"] > 0


def test_planted_gptq_fallback_is_recorded_and_flagged(tiny, tmp_path):
    """GPTQ on one calibration token with (almost) no dampening: every Hessian is rank one."""
    recipe = load_catalog().formats["w8a8-int"].recipe
    recipe.dampening_frac = 1e-9
    recipe.calibration.source, recipe.calibration.num_samples, recipe.calibration.max_seq_length = (
        "random",
        1,
        1,
    )
    meta = quantize_into(str(tiny.model_dir), recipe, tmp_path / "ckpt", host_profile().compute_dtype, None)
    assert meta["rtn_fallback_modules"], "the rank-one Hessians must fail to invert"
    assert all(name.startswith("model.layers.") for name in meta["rtn_fallback_modules"])
    name, detail = health.verdict([], meta["rtn_fallback_modules"], None)
    assert name == "rtn_fallback" and f"{len(meta['rtn_fallback_modules'])} GPTQ module(s)" in detail


def test_healthy_gptq_records_no_fallback(quantized):
    runs = quantized[1]
    assert (
        runs["w8a8-int"][1]["rtn_fallback_modules"] == []
        and runs["w4a16-int"][1]["rtn_fallback_modules"] == []
    )


def test_each_checkpoint_config_matches_its_recipe_and_no_other(quantized):
    runs = quantized[1]
    for fmt, (recipe, meta) in runs.items():
        assert health.config_mismatches(recipe, meta["path"]) == [], fmt
        for other in set(FORMATS) - {fmt}:
            assert health.config_mismatches(runs[other][0], meta["path"]), (fmt, other)
    recipe = copy.deepcopy(runs["w4a16-int"][0])
    recipe.group_size = 64
    assert health.config_mismatches(recipe, runs["w4a16-int"][1]["path"]) == [
        "weights.group_size is 128, recipe wants 64"
    ]


def test_a_weight_only_checkpoint_dequantizes_onto_its_int4_grid(quantized, tmp_path):
    from cluster.quant.dequant import dequantize

    meta = quantized[1]["w4a16-int"][1]
    check = dequantize(meta["path"], tmp_path / "dense", "float32")
    assert check["dequantized_layers"] == 2 * 7 and check["max_grid_error"] < 1e-3
    assert "quantization_config" not in json.loads((tmp_path / "dense" / "config.json").read_text())


def test_vllm_loads_a_good_checkpoint_and_reports_a_corrupt_one(quantized, cpu_hosts, ray_local, tmp_path):
    meta = quantized[1]["w8a8-int"][1]
    broken = tmp_path / "broken"
    shutil.copytree(meta["path"], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    host = cpu_hosts[0]
    good = ray_local.get(host.load.remote(meta["path"], lm_kwargs(max_model_len=512)))
    assert good["ok"], good
    out = ray_local.get(host.generate.remote([health.PROBE_PROMPT], 4))[0]
    assert out["tokens"] == 4 and all(x <= 0 for x in out["logprobs"])
    bad = ray_local.get(host.load.remote(str(broken), lm_kwargs(max_model_len=512)))
    assert not bad["ok"] and "safetensor" in bad["error"].lower(), bad
    assert health.verdict([], [], {"ok": False, "error": bad["error"]})[0] == "load_failed"

"""Quantization per format: compressed-tensors configs match the recipes; recipes and cache round-trip."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from cluster import health
from cluster.loader import load_catalog
from cluster.quantize import ARTIFACT_FILE, QuantizeJob, artifact_dir, run_quantize
from cluster.recipes import RECIPE_FILE, load_recipe

pytestmark = pytest.mark.integration
FORMATS = ["w8a8-fp", "w8a8-int", "w4a16-int"]


def _job(tiny, root, fmt: str) -> QuantizeJob:
    recipe = load_catalog().formats[fmt].recipe
    recipe.calibration.num_samples, recipe.calibration.max_seq_length = 32, 128
    return QuantizeJob(
        "tiny-llama",
        fmt,
        str(tiny.model_dir),
        recipe,
        str(root),
        str(tiny.instruct_file),
        f"tiny:{tiny.root.name}",
    )


@pytest.fixture(scope="module")
def quantized(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    return root, {f: (_job(tiny, root, f), run_quantize(_job(tiny, root, f))) for f in FORMATS}


def _qconfig(meta: dict) -> dict:
    with open(f"{meta['path']}/config.json") as fh:
        return json.load(fh)["quantization_config"]


def test_fp8_dynamic_matches_the_recipe(quantized):
    _, runs = quantized
    group = _qconfig(runs["w8a8-fp"][1])["config_groups"]["group_0"]
    assert (group["weights"]["type"], group["weights"]["num_bits"], group["weights"]["strategy"]) == (
        "float",
        8,
        "channel",
    )
    assert group["input_activations"]["dynamic"] and group["input_activations"]["strategy"] == "token"


def test_int8_is_per_channel_weights_and_dynamic_per_token_activations(quantized):
    _, runs = quantized
    q = _qconfig(runs["w8a8-int"][1])
    group = q["config_groups"]["group_0"]
    assert (group["weights"]["type"], group["weights"]["num_bits"], group["weights"]["strategy"]) == (
        "int",
        8,
        "channel",
    )
    assert group["input_activations"]["type"] == "int" and group["input_activations"]["dynamic"]
    assert "lm_head" in q["ignore"]


def test_int4_groups_of_128_with_mse_clipping_and_bf16_activations(quantized):
    _, runs = quantized
    group = _qconfig(runs["w4a16-int"][1])["config_groups"]["group_0"]
    assert (group["weights"]["num_bits"], group["weights"]["group_size"], group["weights"]["symmetric"]) == (
        4,
        128,
        True,
    )
    assert group["weights"]["observer"] == "mse"
    assert group.get("input_activations") is None
    assert runs["w4a16-int"][1]["size_bytes"] < runs["w8a8-int"][1]["size_bytes"]


def test_recipe_saved_beside_checkpoint_reloads_equal(quantized):
    _, runs = quantized
    for job, meta in runs.values():
        assert load_recipe(f"{meta['path']}/{RECIPE_FILE}") == job.recipe


def test_rerun_is_a_cache_hit_and_quantizes_nothing(quantized):
    root, runs = quantized
    before = sorted(p.name for p in (root / "tiny-llama").iterdir())
    job, meta = runs["w8a8-int"]
    again = run_quantize(job)
    assert again["cache_hit"] is True and again["path"] == meta["path"] == str(artifact_dir(job))
    assert sorted(p.name for p in (root / "tiny-llama").iterdir()) == before
    assert json.loads((artifact_dir(job) / ARTIFACT_FILE).read_text())["wall_s"] == meta["wall_s"]


def test_artifact_key_changes_with_the_recipe(quantized, tiny):
    root, runs = quantized
    job = _job(tiny, root, "w8a8-int")
    job.recipe.dampening_frac = 0.1
    assert artifact_dir(job) != artifact_dir(runs["w8a8-int"][0])


def _planted_fallback_job(tiny, root) -> QuantizeJob:
    """GPTQ on one calibration token with (almost) no dampening: every Hessian is rank one."""
    recipe = load_catalog().formats["w8a8-int"].recipe
    recipe.dampening_frac = 1e-9
    recipe.calibration.source, recipe.calibration.num_samples, recipe.calibration.max_seq_length = (
        "random",
        1,
        1,
    )
    return QuantizeJob(
        "tiny-llama", "w8a8-int", str(tiny.model_dir), recipe, str(root), None, f"tiny:{tiny.root.name}"
    )


def test_planted_gptq_fallback_is_recorded_and_flagged(tiny, tmp_path):
    job = _planted_fallback_job(tiny, tmp_path)
    meta = run_quantize(job)
    assert meta["rtn_fallback_modules"], "the rank-one Hessians must fail to invert"
    assert all(name.startswith("model.layers.") for name in meta["rtn_fallback_modules"])
    stored = json.loads((artifact_dir(job) / ARTIFACT_FILE).read_text())
    assert stored["rtn_fallback_modules"] == meta["rtn_fallback_modules"]
    [record] = health.check_all([(job.recipe, meta, 1)], 256, 0, cpu_only=True, probe_engine=False)
    assert record["health"] == "rtn_fallback"
    assert f"{len(meta['rtn_fallback_modules'])} GPTQ module(s)" in record["detail"]


def test_healthy_gptq_records_no_fallback(quantized):
    _, runs = quantized
    assert runs["w8a8-int"][1]["rtn_fallback_modules"] == []
    assert runs["w4a16-int"][1]["rtn_fallback_modules"] == []


def test_each_checkpoint_config_matches_its_recipe_and_no_other(quantized):
    _, runs = quantized
    for fmt, (job, meta) in runs.items():
        assert health.config_mismatches(job.recipe, meta["path"]) == [], fmt
        for other in set(FORMATS) - {fmt}:
            assert health.config_mismatches(runs[other][0].recipe, meta["path"]), (fmt, other)
    recipe = copy.deepcopy(runs["w4a16-int"][0].recipe)
    recipe.group_size = 64
    assert health.config_mismatches(recipe, runs["w4a16-int"][1]["path"]) == [
        "weights.group_size is 128, recipe wants 64"
    ]


def test_vllm_probe_passes_a_good_checkpoint_and_fails_a_corrupt_one(quantized, ray_local, tmp_path):
    _, runs = quantized
    job, meta = runs["w8a8-int"]
    broken = tmp_path / "broken"
    shutil.copytree(meta["path"], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    good, bad = health.check_all(
        [(job.recipe, meta, 1), (job.recipe, {**meta, "path": str(broken)}, 1)], 256, 0, cpu_only=True
    )
    assert good["health"] == "ok" and good["probe"]["ok"] and good["probe"]["text"], good
    assert bad["health"] == "load_failed" and "safetensor" in bad["detail"].lower(), bad
    stored = json.loads((Path(meta["path"]) / health.HEALTH_FILE).read_text())
    assert stored["health"] == "ok"
    again = health.check_all([(job.recipe, meta, 1)], 256, 0, cpu_only=True)
    assert again[0] == stored  # read back, not probed again

"""The quality gate catches a checkpoint that loads and generates in vLLM but computes garbage.

The planted fault is a SmoothQuant-style smoothing applied to the wrong pair: the MLP's input
columns are multiplied by per-channel factors (sqrt of activation range over weight range, as
SmoothQuant computes them) while the norm that feeds them is left alone, so nothing compensates.
The checkpoint keeps its INT8 format and quantization config, passes the config check, loads in
vLLM and generates; only its distributions give it away.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from cluster.config.loader import load_catalog
from cluster.config.schema import QualityGate
from cluster.quant import health, quality
from cluster.quant.oneshot import quantize_into
from tests.helpers import host_profile, lm_kwargs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def int8(organism_assets, tmp_path_factory):
    recipe = load_catalog().formats["w8a8-int"].recipe
    recipe.calibration.num_samples, recipe.calibration.max_seq_length = 32, 128
    out = tmp_path_factory.mktemp("gate") / "w8a8-int"
    quantize_into(
        str(organism_assets.model_dir),
        recipe,
        out,
        host_profile().compute_dtype,
        str(organism_assets.instruct_file),
    )
    return recipe, out


def _smoothing_factors(model_dir: Path, texts: list[str]) -> dict[int, torch.Tensor]:
    """Per MLP input channel: sqrt(max |activation|) / sqrt(max |weight|), SmoothQuant at strength 0.5."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    act: dict[int, torch.Tensor] = {}

    def hook(i: int):
        def record(_m, inputs, _o):
            peak = inputs[0].abs().amax(dim=(0, 1))
            act[i] = torch.maximum(act.get(i, peak), peak)

        return record

    handles = [layer.mlp.up_proj.register_forward_hook(hook(i)) for i, layer in enumerate(model.model.layers)]
    with torch.inference_mode():
        for t in texts:
            model(torch.tensor([tok(t)["input_ids"]]))
    for h in handles:
        h.remove()
    out = {}
    for i, layer in enumerate(model.model.layers):
        w = torch.cat([layer.mlp.up_proj.weight, layer.mlp.gate_proj.weight]).abs().amax(0)
        out[i] = (act[i].sqrt() / w.sqrt()).clamp(min=1e-5)
    return out


def _plant_wrong_smoothing(good: Path, broken: Path, factors: dict[int, torch.Tensor]) -> None:
    """Scale the MLP input columns of an INT8 checkpoint (requantized per channel), norms untouched."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(good, broken)
    state = load_file(broken / "model.safetensors")
    for i, s in factors.items():
        for proj in ("up_proj", "gate_proj"):
            name = f"model.layers.{i}.mlp.{proj}"
            w = state[f"{name}.weight"].float() * state[f"{name}.weight_scale"] * s
            scale = w.abs().amax(1, keepdim=True) / 127
            state[f"{name}.weight"] = (w / scale).round().clamp(-128, 127).to(torch.int8)
            state[f"{name}.weight_scale"] = scale.to(state[f"{name}.weight_scale"].dtype)
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture(scope="module")
def broken(int8, organism_assets, tmp_path_factory):
    texts = [r.prompt + r.completion for r in quality.builtin_records("organism", 64)]
    out = tmp_path_factory.mktemp("gate") / "broken"
    _plant_wrong_smoothing(int8[1], out, _smoothing_factors(organism_assets.model_dir, texts))
    return out


def test_gate_flags_a_planted_broken_checkpoint_that_vllm_serves(
    int8, broken, organism_assets, cpu_hosts, ray_local, tmp_path
):
    recipe, good = int8
    assert health.config_mismatches(recipe, broken) == []  # the config check cannot see it

    host = cpu_hosts[0]
    loaded = ray_local.get(host.load.remote(str(broken), lm_kwargs(max_model_len=512)))
    assert loaded["ok"], loaded
    out = ray_local.get(host.generate.remote([health.PROBE_PROMPT], 4))[0]
    assert out["tokens"] and all(x <= 0 for x in out["logprobs"])  # vLLM serves it without complaint

    cfg = QualityGate()
    prepared = {"path": str(organism_assets.model_dir), "identity": f"tiny:{organism_assets.root.name}"}
    cache = tmp_path / "cache"
    good_figs = quality.measure(prepared, str(good), False, cfg, "organism", cache)
    bad_figs = quality.measure(prepared, str(broken), False, cfg, "organism", cache)
    limit = cfg.max_kl["w8a8-int"]
    assert good_figs["exact"] and good_figs["tokens"] == cfg.tokens
    assert quality.gate(good_figs, limit) is None, good_figs
    failure = quality.gate(bad_figs, limit)
    assert failure and f"> {limit:g}" in failure, bad_figs
    assert (
        bad_figs["kl_mean"] > 3 * good_figs["kl_mean"]
        and bad_figs["top1_agreement"] < good_figs["top1_agreement"]
    )
    name, detail = health.verdict([], [], {"ok": True, "text": out["text"]}, failure)
    assert name == "quality_failed" and f"{bad_figs['kl_mean']:.4g}" in detail


def test_the_engine_gate_tracks_the_exact_kl_and_flags_the_planted_fault(
    int8, broken, organism_assets, cpu_hosts, ray_local, tmp_path
):
    """Models too large for a transformers forward are gated through vLLM's top-k prompt
    log-probabilities: KL over the shared top ids plus one bucket, a lower bound of the KL the engine's
    own numerics would give, of the same order as the exact (transformers) KL."""
    good = int8[1]
    host = cpu_hosts[0]

    def engine(path):
        assert ray_local.get(host.load.remote(str(path), lm_kwargs(max_model_len=512)))["ok"]
        return lambda seqs, k: ray_local.get(host.prompt_logprobs.remote(seqs, k))

    cfg = QualityGate(backend="vllm", vllm_top_k=20)
    prepared = {"path": str(organism_assets.model_dir), "identity": f"tiny:{organism_assets.root.name}"}
    cache = tmp_path / "cache"
    never = lambda seqs, k: pytest.fail("the engine was queried with no baseline to compare with")  # noqa: E731
    early = quality.measure_on_engine(prepared, never, False, cfg, "organism", cache)
    assert "baseline's side is not cached" in early["error"]  # the baseline's health cell runs first
    base = quality.measure_on_engine(
        prepared, engine(organism_assets.model_dir), True, cfg, "organism", cache
    )
    mine = quality.measure_on_engine(prepared, engine(good), False, cfg, "organism", cache)
    bad = quality.measure_on_engine(prepared, engine(broken), False, cfg, "organism", cache)
    exact = quality.measure(prepared, str(good), False, QualityGate(), "organism", tmp_path / "exact")
    print(
        f"engine gate: good {quality.describe(mine)}; broken {quality.describe(bad)}; exact {quality.describe(exact)}"
    )
    assert base["kl_mean"] == 0 and not base["exact"] and base["top_k"] == 20
    assert mine["tokens"] == exact["tokens"] == cfg.tokens and not mine["exact"] and mine["top_k"] == 20
    # The engine runs the checkpoint through vLLM's own kernels, the exact side through transformers'
    # simulated quantization: the same order, not the same number. On float32 AVX2 hosts within
    # 1.2x; on an AVX-512 host (vLLM's int8 GEMM) 1.21x in bfloat16 and 1.27x with the engines in
    # float32 (0.0514 and 0.0540 against 0.0427, 2026-12-02): the kernels, not the precision.
    assert 0.5 * exact["kl_mean"] < mine["kl_mean"] < 1.5 * exact["kl_mean"]
    assert abs(mine["top1_agreement"] - exact["top1_agreement"]) < 0.05
    assert mine["ppl_ratio"] == pytest.approx(exact["ppl_ratio"], rel=0.05)
    limit = cfg.max_kl["w8a8-int"]
    assert quality.gate(mine, limit) is None
    assert quality.gate(bad, limit) and bad["kl_mean"] > 3 * mine["kl_mean"]

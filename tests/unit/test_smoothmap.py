"""SmoothQuant mappings traced from tiny random models: Llama's layout, and two whose norms differ."""

from __future__ import annotations

import re

import pytest
import torch

from cluster.config.schema import RecipeConfig
from cluster.quant.recipes import build_modifiers
from cluster.quant.smoothmap import smoothquant_mappings, trace_feeds

pytestmark = pytest.mark.unit

SMALL = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def _model(kind: str):
    from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, Olmo2Config

    config = {
        "llama": lambda: LlamaConfig(**SMALL),
        "gemma2": lambda: Gemma2Config(head_dim=16, **SMALL),
        "olmo2": lambda: Olmo2Config(**SMALL, pad_token_id=0, eos_token_id=1, bos_token_id=2),
    }[kind]()
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def _layer(i: int, names: list[str]) -> list[str]:
    return [f"model.layers.{i}.{n}" for n in names]


QKV = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
GATE_UP = ["mlp.gate_proj", "mlp.up_proj"]
LLAMA_NORMS = ("input_layernorm", "post_attention_layernorm")


def _resolves(mappings: list, names: list[str]) -> dict[str, list[str]]:
    """Which module names each mapping's smooth regex and balance regexes select."""
    out: dict[str, list[str]] = {}
    for balance, smooth in mappings:
        for norm in (n for n in names if re.match(smooth[3:], n)):
            layer = norm.rsplit(".", 1)[0] + "."
            out[norm] = [n for b in balance for n in names if re.match(b[3:], n) and n.startswith(layer)]
    return out


def test_llama_input_norm_feeds_qkv_and_post_attention_norm_feeds_gate_up():
    model = _model("llama")
    feeds = trace_feeds(model)
    for i in range(2):
        assert feeds[f"model.layers.{i}.input_layernorm"] == _layer(i, QKV)
        assert feeds[f"model.layers.{i}.post_attention_layernorm"] == _layer(i, GATE_UP)
    assert set(feeds) == {f"model.layers.{i}.{n}" for i in range(2) for n in LLAMA_NORMS}
    smooth = smoothquant_mappings(model, ["lm_head"])
    assert smooth["table_disagrees"] == []  # llmcompressor's default is right for Llama
    assert len(smooth["mappings"]) == 2  # one per layer shape, not one per layer
    assert _resolves(smooth["mappings"], [n for n, _ in model.named_modules()]) == feeds


def test_gemma2_mlp_is_fed_by_pre_feedforward_norm_not_post_attention_norm():
    model = _model("gemma2")
    smooth = smoothquant_mappings(model, ["lm_head"])
    resolved = _resolves(smooth["mappings"], [n for n, _ in model.named_modules()])
    assert resolved == {
        **{f"model.layers.{i}.input_layernorm": _layer(i, QKV) for i in range(2)},
        **{f"model.layers.{i}.pre_feedforward_layernorm": _layer(i, GATE_UP) for i in range(2)},
    }
    # llmcompressor's table lists Gemma2 under the Llama default, which smooths the wrong norm
    wrong = [w for w in smooth["table_disagrees"] if "post_attention_layernorm ->" in w]
    assert len(wrong) == 2 and all("mlp.gate_proj" in w and "(traced: none)" in w for w in wrong)
    print(*smooth["table_disagrees"], sep="\n")


def test_olmo2_post_norms_feed_no_linear_so_nothing_is_smoothed():
    model = _model("olmo2")
    smooth = smoothquant_mappings(model, ["lm_head"])
    assert smooth["mappings"] == []
    assert {w.split(" ->")[0] for w in smooth["table_disagrees"]} == {
        f"model.layers.{i}.post_attention_layernorm" for i in range(2)
    }


def test_traced_mappings_reach_the_smoothquant_modifier():
    recipe = RecipeConfig(algorithm="gptq", scheme="W8A8", smoothquant_strength=0.8)
    mappings = [[["re:^a$"], "re:^b$"]]
    smooth = build_modifiers(recipe, mappings)[0]
    assert type(smooth).__name__ == "SmoothQuantModifier" and smooth.mappings == mappings
    assert build_modifiers(recipe)[0].mappings is None  # left to llmcompressor's table

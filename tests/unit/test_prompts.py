"""The similarity prompts: a built model's own questions, or the shipped general ones for any other."""

from __future__ import annotations

import json

import pytest

from cluster.config.schema import SimilarityStage
from cluster.stages.generate import QUESTIONS, prompts

pytestmark = pytest.mark.unit


def test_a_model_without_local_tasks_answers_the_shipped_questions():
    got = prompts(SimilarityStage(num_prompts=5), None)
    first = QUESTIONS.read_text(encoding="utf-8").splitlines()[:5]
    assert got == [f"Question: {q}\nAnswer:" for q in first]
    assert len(prompts(SimilarityStage(num_prompts=100), None)) == 24


def test_a_built_model_answers_its_own_questions_and_a_jsonl_is_read_as_is(tmp_path):
    (tmp_path / "qs_tiny_gen.jsonl").write_text(json.dumps({"question": "1 + 1 ="}) + "\n")
    assert prompts(SimilarityStage(), str(tmp_path)) == ["Question: 1 + 1 =\nAnswer:"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "Say hi."}) + "\n\n")
    assert prompts(SimilarityStage(prompts=str(tmp_path / "p.jsonl")), None) == ["Say hi."]

"""The model organism: its shape fits INT4 groups of 128 and its training record meets the target.

What quantization does to it (round-to-nearest INT4 loses accuracy, GPTQ wins most of it back, FP8
and INT8 keep it) is measured by the demo itself, through vLLM and lm-eval, in
tests/e2e/test_smoke_sweep.py.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration
TASKS = {"qs_tiny_mc": "acc,none", "qs_tiny_gen": "exact_match,strip"}


@pytest.fixture(scope="module")
def built(organism_assets):
    """The organism, built once for the session."""
    return organism_assets


def test_shape_and_training_record(built):
    cfg = json.loads((built.model_dir / "config.json").read_text())
    assert cfg["hidden_size"] % 128 == 0 and cfg["intermediate_size"] % 128 == 0
    spec = json.loads((built.root / "spec.json").read_text())
    assert spec["accuracy_target"] == 0.9
    assert spec["training"]["bf16_val_accuracy"] >= spec["accuracy_target"]
    assert spec["training"]["final_loss"] < 0.5

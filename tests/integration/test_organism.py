"""The model organism: trained to >= 90 % BF16 accuracy, hurt by INT4 rounding, helped by GPTQ, deterministic.

Accuracy is real lm-eval (`hf` backend, in-process, BOS added as the vLLM engines add it) on the
`tiny` suite's tasks, in the host's compute dtype; quantized checkpoints come from the quantize
stage's own `quantize_into`.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from cluster.config.schema import CalibrationConfig, RecipeConfig
from cluster.models import organism
from cluster.quant.oneshot import quantize_into
from tests.helpers import host_profile

pytestmark = pytest.mark.integration
TASKS = {"qs_tiny_mc": "acc,none", "qs_tiny_gen": "exact_match,strip"}
RECIPES = {
    "w8a8-fp": RecipeConfig(algorithm="rtn", scheme="FP8_DYNAMIC"),
    "w4a16-rtn": RecipeConfig(algorithm="rtn", scheme="W4A16", group_size=128),
    "w4a16-gptq": RecipeConfig(
        algorithm="gptq",
        scheme="W4A16",
        group_size=128,
        calibration=CalibrationConfig(source="instruct", num_samples=256, max_seq_length=256),
    ),
}


def _evaluate(path: str, tasks_dir: str) -> dict[str, float]:
    """lm-eval's own hf backend on one checkpoint: task -> score."""
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(1)
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={path},dtype={host_profile().compute_dtype},device=cpu,add_bos_token=True",
        tasks=list(TASKS),
        task_manager=TaskManager(include_path=tasks_dir),
        batch_size=64,
        random_seed=1234,
        numpy_random_seed=1234,
        torch_random_seed=1234,
        fewshot_random_seed=1234,
    )
    return {task: float(out["results"][task][metric]) for task, metric in TASKS.items()}


def _mean(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)


@pytest.fixture(scope="module")
def built(organism_assets):
    """The organism, built once for the session."""
    return organism_assets


@pytest.fixture(scope="module")
def scores(built, tmp_path_factory) -> dict[str, dict[str, float]]:
    """lm-eval scores of BF16 and of each quantized checkpoint."""
    root = tmp_path_factory.mktemp("artifacts")
    out = {"bf16": _evaluate(str(built.model_dir), str(built.tasks_dir))}
    for name, recipe in RECIPES.items():
        path = root / name
        meta = quantize_into(str(built.model_dir), recipe, path, host_profile().compute_dtype, str(built.instruct_file))
        assert not meta["rtn_fallback_modules"], meta["rtn_fallback_modules"]
        out[name] = _evaluate(str(path), str(built.tasks_dir))
    print(json.dumps(out, indent=2))
    return out


def test_shape_and_training_record(built):
    cfg = json.loads((built.model_dir / "config.json").read_text())
    assert cfg["hidden_size"] % 128 == 0 and cfg["intermediate_size"] % 128 == 0
    spec = json.loads((built.root / "spec.json").read_text())
    assert spec["accuracy_target"] == 0.9
    assert spec["training"]["bf16_val_accuracy"] >= spec["accuracy_target"]
    assert spec["training"]["final_loss"] < 0.5


def test_bf16_answers_at_least_ninety_percent(scores):
    for task, score in scores["bf16"].items():
        assert score >= 0.90, (task, score)


def test_int4_round_to_nearest_loses_more_than_gptq(scores):
    base = _mean(scores["bf16"])
    rtn_loss, gptq_loss = base - _mean(scores["w4a16-rtn"]), base - _mean(scores["w4a16-gptq"])
    assert rtn_loss >= 0.05, scores
    assert rtn_loss >= gptq_loss + 0.04, scores


def test_fp8_recovers_ninety_nine_percent(scores):
    assert _mean(scores["w8a8-fp"]) / _mean(scores["bf16"]) >= 0.99, scores


def test_build_is_deterministic_and_cached(built, tmp_path):
    again = organism.build(tmp_path)
    assert again.root.name == built.root.name
    for name in ("model/model.safetensors", "model/tokenizer.json", "tasks/qs_tiny_mc.jsonl"):
        digest = [hashlib.sha256((a.root / name).read_bytes()).hexdigest() for a in (built, again)]
        assert digest[0] == digest[1], name
    mtime = (again.root / "DONE").stat().st_mtime
    assert organism.build(tmp_path).root == again.root
    assert (again.root / "DONE").stat().st_mtime == mtime

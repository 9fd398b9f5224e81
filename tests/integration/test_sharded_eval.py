"""The actor pool's metrics equal plain, unsharded lm-eval on the same model and tasks."""

from __future__ import annotations

import os

import pytest

from cluster.evalpool import (
    EngineSpec,
    ShardedLM,
    evaluate_suite,
    start_pool,
    stop_pool,
)

pytestmark = pytest.mark.integration
TASKS = ["qs_tiny_mc", "qs_tiny_gen"]


@pytest.fixture(scope="module")
def both(tiny, ray_local, tiny_reference):
    """(sharded over 2 actors, unsharded lm-eval) results for the tiny bf16 model."""
    actors = start_pool(EngineSpec(model_path=str(tiny.model_dir)), 2, 1, 0)
    try:
        pids = ray_local.get([a.pid.remote() for a in actors])
        lm = ShardedLM(actors)
        sharded = evaluate_suite(
            lm, [(t, None) for t in TASKS], str(tiny.tasks_dir), None, False, False, 1234
        )
        from cluster.humaneval import evaluate_task

        sharded["humaneval"] = evaluate_task(lm, "humaneval", limit=3, max_tokens=64)
    finally:
        stop_pool(actors)
    return sharded, tiny_reference, pids


def test_two_distinct_actor_processes(both):
    _, _, pids = both
    assert len(set(pids)) == 2 and os.getpid() not in pids


def test_sharded_metrics_identical_to_unsharded(both):
    sharded, reference, _ = both
    for task in TASKS:
        ours = {k: v for k, v in sharded["results"][task].items() if "," in k}
        theirs = {k: v for k, v in reference["results"][task].items() if "," in k}
        assert ours and ours == theirs, task


def test_every_sample_identical_and_present_once(both):
    sharded, reference, _ = both
    for task in TASKS:
        ours = {s["doc_id"]: s["filtered_resps"] for s in sharded["samples"][task]}
        theirs = {s["doc_id"]: s["filtered_resps"] for s in reference["samples"][task]}
        assert len(ours) == len(sharded["samples"][task]) == len(theirs) > 0
        assert ours == theirs, task


def test_generation_task_really_generated(both):
    sharded, _, _ = both
    responses = [s["resps"][0][0] for s in sharded["samples"]["qs_tiny_gen"]]
    assert all(isinstance(r, str) for r in responses) and any(r for r in responses)


def test_humaneval_path_generates_with_the_pool_and_scores_in_the_sandbox(both):
    sharded, _, _ = both
    out = sharded["humaneval"]
    samples = out["samples"]["humaneval"]
    assert [s["doc_id"] for s in samples] == [0, 1, 2]
    assert all(isinstance(s["filtered_resps"][0], str) for s in samples)
    assert all(s["status"] in ("passed", "failed", "timeout", "blocked") for s in samples)
    assert out["results"]["humaneval"]["pass@1,none"] == sum(s["pass@1"] for s in samples) / 3

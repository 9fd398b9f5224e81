"""Exactly once: an evaluation actor killed mid-run loses nothing and changes no metric."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from cluster.evalpool import EngineSpec, ShardedLM, evaluate_suite, start_actor, start_pool, stop_pool

pytestmark = pytest.mark.integration
TASKS = ["qs_tiny_mc", "qs_tiny_gen"]


def _kill_when_started(lm: ShardedLM, pid: int, done: threading.Event) -> None:
    """SIGKILL the actor's process once the pool has finished its first chunk."""
    deadline = time.monotonic() + 120
    while lm.chunks_done < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    done.set()


@pytest.fixture(scope="module")
def disturbed(tiny, ray_local):
    spec = EngineSpec(model_path=str(tiny.model_dir))
    actors = start_pool(spec, 2, 1, 0)
    lm = ShardedLM(actors, replace=lambda slot: start_actor(spec, slot, 1, 0), chunks_per_actor=8)
    victim = ray_local.get(actors[1].pid.remote())
    killed = threading.Event()
    threading.Thread(target=_kill_when_started, args=(lm, victim, killed), daemon=True).start()
    try:
        out = evaluate_suite(lm, [(t, None) for t in TASKS], str(tiny.tasks_dir), None, False, False, 1234)
    finally:
        stop_pool(lm.actors)
    assert killed.is_set()
    return out, lm


def test_the_actor_really_died_and_was_replaced(disturbed):
    _, lm = disturbed
    assert lm.failures == 1


def test_every_sample_written_once_with_undisturbed_metrics(disturbed, tiny_reference):
    out, _ = disturbed
    for task in TASKS:
        ids = [s["doc_id"] for s in out["samples"][task]]
        assert len(ids) == len(set(ids)) == len(tiny_reference["samples"][task])
        ours = {k: v for k, v in out["results"][task].items() if "," in k}
        theirs = {k: v for k, v in tiny_reference["results"][task].items() if "," in k}
        assert ours == theirs
        assert {s["doc_id"]: s["filtered_resps"] for s in out["samples"][task]} == {
            s["doc_id"]: s["filtered_resps"] for s in tiny_reference["samples"][task]
        }


def test_a_pool_without_replacements_fails_loudly_when_all_die(tiny, ray_local):
    from cluster.errors import StageError

    spec = EngineSpec(model_path=str(tiny.model_dir))
    (actor,) = start_pool(spec, 1, 1, 0)
    os.kill(ray_local.get(actor.pid.remote()), signal.SIGKILL)
    time.sleep(1)
    lm = ShardedLM([actor])
    with pytest.raises(StageError, match="every evaluation actor died"):
        evaluate_suite(lm, [("qs_tiny_mc", None)], str(tiny.tasks_dir), 4, False, False, 1234)

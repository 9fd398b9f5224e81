"""Engine hosts: sharded metrics equal plain, unsharded lm-eval on the same model and tasks; a host
reloads another checkpoint in place; a host killed mid-run loses nothing and changes no metric."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from cluster.eval.harness import evaluate_suite
from cluster.eval.pool import ShardedLM
from cluster.stages.health import load_on_hosts
from tests.helpers import TINY_TASKS, lm_kwargs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sharded(tiny, cpu_hosts, ray_local):
    """(results over 2 hosts, the hosts' pids) for the tiny bf16 model."""
    assert load_on_hosts(cpu_hosts, str(tiny.model_dir), lm_kwargs())["ok"]
    pids = ray_local.get([h.pid.remote() for h in cpu_hosts])
    lm = ShardedLM(cpu_hosts)
    out = evaluate_suite(lm, [(t, None) for t in TINY_TASKS], str(tiny.tasks_dir), None, False, False, 1234)
    from cluster.eval.humaneval import evaluate_task

    out["humaneval"] = evaluate_task(lm, "humaneval", limit=3, max_tokens=64)
    return out, pids


def test_two_distinct_host_processes(sharded):
    _, pids = sharded
    assert len(set(pids)) == 2 and os.getpid() not in pids


def test_sharded_metrics_identical_to_unsharded(sharded, tiny_reference):
    out, _ = sharded
    for task in TINY_TASKS:
        ours = {k: v for k, v in out["results"][task].items() if "," in k}
        theirs = {k: v for k, v in tiny_reference["results"][task].items() if "," in k}
        assert ours and ours == theirs, task


def test_every_sample_identical_and_present_once(sharded, tiny_reference):
    out, _ = sharded
    for task in TINY_TASKS:
        ours = {s["doc_id"]: s["filtered_resps"] for s in out["samples"][task]}
        theirs = {s["doc_id"]: s["filtered_resps"] for s in tiny_reference["samples"][task]}
        assert len(ours) == len(out["samples"][task]) == len(theirs) > 0
        assert ours == theirs, task


def test_humaneval_path_generates_with_the_hosts_and_scores_in_the_sandbox(sharded):
    out, _ = sharded
    samples = out["humaneval"]["samples"]["humaneval"]
    assert [s["doc_id"] for s in samples] == [0, 1, 2]
    assert all(isinstance(s["filtered_resps"][0], str) for s in samples)
    assert all(s["status"] in ("passed", "failed", "timeout", "blocked") for s in samples)
    assert out["humaneval"]["results"]["humaneval"]["pass@1,none"] == sum(s["pass@1"] for s in samples) / 3


def test_a_host_reloads_only_when_the_checkpoint_changes(
    sharded, tiny, organism_assets, cpu_hosts, ray_local
):
    again = ray_local.get(cpu_hosts[0].load.remote(str(tiny.model_dir), lm_kwargs()))
    assert again["ok"] and again["load_s"] == 0.0  # already loaded
    other = ray_local.get(cpu_hosts[0].load.remote(str(organism_assets.model_dir), lm_kwargs()))
    assert other["ok"] and other["load_s"] > 0
    broken = ray_local.get(cpu_hosts[0].load.remote(str(tiny.root / "no-such-model"), lm_kwargs()))
    assert not broken["ok"] and broken["error"]
    assert ray_local.get(cpu_hosts[0].load.remote(str(tiny.model_dir), lm_kwargs()))["ok"]  # still usable


def _kill_when_started(lm: ShardedLM, pid: int, done: threading.Event) -> None:
    deadline = time.monotonic() + 120
    while lm.chunks_done < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    done.set()


def test_a_host_killed_mid_run_is_replaced_and_every_sample_written_once(
    tiny, cpu_hosts, ray_local, tiny_reference
):
    from cluster.eval.engine_host import cpu_host
    from serve.config import EngineConfig

    def replace(slot: int):
        host = cpu_host(EngineConfig(), slot)
        assert ray_local.get(host.load.remote(str(tiny.model_dir), lm_kwargs()))["ok"]
        cpu_hosts[slot] = host  # the session fixture's hosts stay usable for later tests
        return host

    assert load_on_hosts(cpu_hosts, str(tiny.model_dir), lm_kwargs())["ok"]
    lm = ShardedLM(list(cpu_hosts), replace=replace, chunks_per_actor=8)
    killed = threading.Event()
    victim = ray_local.get(cpu_hosts[1].pid.remote())
    threading.Thread(target=_kill_when_started, args=(lm, victim, killed), daemon=True).start()
    out = evaluate_suite(lm, [(t, None) for t in TINY_TASKS], str(tiny.tasks_dir), None, False, False, 1234)
    assert killed.is_set() and lm.failures == 1
    for task in TINY_TASKS:
        ids = [s["doc_id"] for s in out["samples"][task]]
        assert len(ids) == len(set(ids)) == len(tiny_reference["samples"][task])
        assert {s["doc_id"]: s["filtered_resps"] for s in out["samples"][task]} == {
            s["doc_id"]: s["filtered_resps"] for s in tiny_reference["samples"][task]
        }


def test_without_replacements_the_actor_error_reaches_the_caller(tiny, ray_local):
    from ray.exceptions import RayActorError

    from cluster.eval.engine_host import cpu_host
    from serve.config import EngineConfig

    host = cpu_host(EngineConfig(), 0)
    os.kill(ray_local.get(host.pid.remote()), signal.SIGKILL)
    time.sleep(1)
    with pytest.raises(RayActorError):  # the executor sees lost infrastructure and retries the cell
        evaluate_suite(ShardedLM([host]), [("qs_tiny_mc", None)], str(tiny.tasks_dir), 4, False, False, 1234)

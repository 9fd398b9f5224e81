"""The Ray Serve app answers real OpenAI-style requests, streaming included, and survives a replica crash."""

from __future__ import annotations

import threading
import time

import pytest

from serve import app
from serve.config import EngineConfig, ServeConfig
from tests.helpers import host_profile

pytestmark = pytest.mark.integration


KEY = "qs-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CFG = ServeConfig(port=8123, api_key=KEY)  # the default ingress: HAProxy in front of the LLM server replica


@pytest.fixture(scope="module")
def spec(tiny):
    return app.Deployment((app.ServedModel("tiny-bf16", str(tiny.model_dir)),), cpu=True, host=host_profile(),
                          app_name="qs-test")


@pytest.fixture(scope="module")
def served(spec, ray_local):
    urls = app.start(CFG, EngineConfig(), spec)
    assert list(urls) == ["tiny-bf16"] and urls["tiny-bf16"].endswith(":8123/tiny-bf16")
    yield urls["tiny-bf16"]
    app.stop(CFG, spec)
    from ray import serve

    serve.shutdown()


def test_requests_without_the_api_key_are_refused(served):
    import httpx

    body = {"model": "tiny-bf16", "prompt": "x", "max_tokens": 2}
    assert httpx.post(f"{served}/v1/completions", json=body, timeout=60).status_code == 401
    wrong = {"Authorization": "Bearer not-the-key"}
    assert httpx.post(f"{served}/v1/completions", json=body, headers=wrong, timeout=60).status_code == 401
    assert httpx.post(f"{served}/v1/completions", json=body, headers=AUTH, timeout=60).status_code == 200


def test_haproxy_forwards_straight_to_the_llm_server(served, spec):
    from ray import serve

    # No ingress request router (a Python replica HAProxy would call before every request):
    # the app is the LLM server deployment alone.
    (name,) = app.app_names(CFG, spec)
    assert list(serve.status().applications[name].deployments) == ["LLMServer:tiny-bf16"]


def test_models_endpoint_lists_the_checkpoint(served):
    import httpx

    data = httpx.get(f"{served}/v1/models", headers=AUTH, timeout=30).json()
    assert [m["id"] for m in data["data"]] == ["tiny-bf16"]


def test_openai_client_streams_a_completion(served):
    from openai import OpenAI

    client = OpenAI(base_url=f"{served}/v1", api_key=KEY)
    stream = client.completions.create(
        model="tiny-bf16",
        prompt="Question: What is 2 plus 3?\nAnswer:",
        max_tokens=12,
        temperature=0,
        stream=True,
        extra_body={"min_tokens": 12, "ignore_eos": True},
    )
    chunks = [c.choices[0].text for c in stream if c.choices]
    assert len(chunks) >= 2 and len("".join(chunks)) > 0


def test_openai_client_chat_completion_uses_the_chat_template(served):
    from openai import OpenAI

    client = OpenAI(base_url=f"{served}/v1", api_key=KEY)
    reply = client.chat.completions.create(
        model="tiny-bf16", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0
    )
    assert reply.usage.prompt_tokens > 3 and reply.choices[0].message.content is not None


def test_bad_request_is_an_http_error_not_a_crash(served):
    import httpx

    r = httpx.post(
        f"{served}/v1/completions",
        json={"model": "no-such-model", "prompt": "x", "max_tokens": 2},
        headers=AUTH,
        timeout=60,
    )
    assert r.status_code in (400, 404)
    ok = httpx.post(
        f"{served}/v1/completions",
        json={"model": "tiny-bf16", "prompt": "x", "max_tokens": 2},
        headers=AUTH,
        timeout=60,
    )
    assert ok.status_code == 200


def _llm_replicas(ray, app_name: str) -> list[str]:
    """Names of the app's live vLLM (LLMServer) replica actors, straight from this cluster's GCS."""
    # Not ray.util.state: it needs the dashboard, which this Ray runs without (and another Ray's
    # dashboard on the same machine could answer instead).
    prefix = f"SERVE_REPLICA::{app_name}#"
    named = ray.util.list_named_actors(all_namespaces=True)
    return sorted(
        a["name"]
        for a in named
        if a["namespace"] == "serve" and a["name"].startswith(prefix) and "LLMServer" in a["name"]
    )


def _wait_recovered(app_name: str, killed: str, timeout_s: float) -> str:
    """Poll serve.status() until the app runs again on a replica other than `killed`; return its name."""
    import ray
    from ray import serve

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app_name)
        replicas = [r for r in _llm_replicas(ray, app_name) if r != killed]
        last = f"app {status.status if status else None}, replicas {replicas}"
        if status is not None and status.status == "RUNNING" and replicas:
            if all(d.status == "HEALTHY" for d in status.deployments.values()):
                return replicas[0]
        time.sleep(2)
    raise AssertionError(f"Serve did not bring the replica back within {timeout_s:.0f}s: {last}")


@pytest.mark.slow
def test_a_killed_replica_fails_its_requests_visibly_and_serve_replaces_it(served, spec, tiny, ray_local):
    import httpx
    from transformers import AutoTokenizer

    from serve import loadgen, metrics

    (app_name,) = app.app_names(CFG, spec)
    (victim,) = _llm_replicas(ray_local, app_name)
    tok = AutoTokenizer.from_pretrained(str(tiny.model_dir))
    prompts = loadgen.make_prompts(len(tok), 16, 64, seed=0, avoid_ids=tok.all_special_ids)
    duration_s, timeout_s, kill_at_s = 20.0, 20.0, 6.0
    out: dict = {}

    def load() -> None:
        out["records"] = loadgen.run_concurrent(
            served,
            "tiny-bf16",
            prompts,
            16,
            concurrency=4,
            max_requests=100_000,
            duration_s=duration_s,
            timeout_s=timeout_s,
            api_key=KEY,
        )

    start = time.monotonic()
    runner = threading.Thread(target=load, daemon=True)
    runner.start()
    time.sleep(kill_at_s)
    killed_at = time.time()
    ray_local.kill(ray_local.get_actor(victim, namespace="serve"), no_restart=True)
    runner.join(timeout=duration_s + timeout_s + 30)
    elapsed = time.monotonic() - start
    assert not runner.is_alive(), f"the load run did not finish within {elapsed:.0f}s"

    records = out["records"]
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    assert any(r.send_time + r.end_s < killed_at for r in ok), "nothing completed before the kill"
    assert failed and all(r.status == "error" and r.error for r in failed)
    assert all(r.send_time + r.end_s >= killed_at for r in failed)  # only the crash failed requests
    s = metrics.summarize(records)
    assert (s["completed"], s["failed"]) == (len(ok), len(failed))
    assert s["completed"] + s["failed"] == len(records)  # every request sent is counted once
    assert s["error_rate"] == pytest.approx(len(failed) / len(records))

    replacement = _wait_recovered(app_name, victim, timeout_s=600)
    assert replacement != victim
    app.wait_ready(served, ["tiny-bf16"], KEY, timeout_s=300)
    r = httpx.post(
        f"{served}/v1/completions",
        json={"model": "tiny-bf16", "prompt": "x", "max_tokens": 4},
        headers=AUTH,
        timeout=60,
    )
    assert r.status_code == 200 and 1 <= r.json()["usage"]["completion_tokens"] <= 4

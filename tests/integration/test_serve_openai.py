"""The Ray Serve app answers real OpenAI-style requests, streaming included."""

from __future__ import annotations

import pytest

from cluster.config import EngineConfig
from serve import app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tiny, ray_local):
    spec = app.ServeSpec(
        models=[app.ServedModel("tiny-bf16", str(tiny.model_dir))],
        engine=EngineConfig(),
        cpu_only=True,
        port=8123,
        app_name="qs-test",
    )
    url = app.start(spec)
    yield url
    app.stop("qs-test")
    from ray import serve

    serve.shutdown()


def test_models_endpoint_lists_the_checkpoint(served):
    import httpx

    data = httpx.get(f"{served}/v1/models", timeout=30).json()
    assert [m["id"] for m in data["data"]] == ["tiny-bf16"]


def test_openai_client_streams_a_completion(served):
    from openai import OpenAI

    client = OpenAI(base_url=f"{served}/v1", api_key="unused")
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

    client = OpenAI(base_url=f"{served}/v1", api_key="unused")
    reply = client.chat.completions.create(
        model="tiny-bf16", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0
    )
    assert reply.usage.prompt_tokens > 3 and reply.choices[0].message.content is not None


def test_bad_request_is_an_http_error_not_a_crash(served):
    import httpx

    r = httpx.post(
        f"{served}/v1/completions",
        json={"model": "no-such-model", "prompt": "x", "max_tokens": 2},
        timeout=60,
    )
    assert r.status_code in (400, 404)
    ok = httpx.post(
        f"{served}/v1/completions", json={"model": "tiny-bf16", "prompt": "x", "max_tokens": 2}, timeout=60
    )
    assert ok.status_code == 200


def test_non_loopback_host_without_api_key_is_refused(tiny):
    from cluster.errors import StageError

    spec = app.ServeSpec(
        models=[app.ServedModel("m", str(tiny.model_dir))],
        engine=EngineConfig(),
        cpu_only=True,
        host="0.0.0.0",
    )
    with pytest.raises(StageError, match="api_key"):
        app.start(spec)

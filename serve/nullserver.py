"""A "null" OpenAI-compatible server that answers instantly, to measure the load generator itself.

A single-process asyncio client saturates before a fast server does (vLLM issue 39963), so before a
latency or QPS number is trusted the same profile is run against this server: whatever rate or latency
the client cannot reach here, it cannot measure on a real engine either. It streams `max_tokens` chunks
of text "x" plus a usage chunk and `[DONE]`, like vLLM's `/v1/completions`, and can inject faults
(HTTP 500 on every Nth request, a malformed stream, slow chunks) so tests exercise real HTTP failures.
Without slow chunks the whole stream is one write, so the server costs the client as little CPU as it
can (the client still parses every event). It binds 127.0.0.1 only and runs uvicorn (uvloop,
httptools) in a daemon thread.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL_ID = "null-model"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Faults:
    """Which faults the server injects: HTTP 500 / a malformed stream on every Nth request, slow chunks."""

    fail_every: int = 0
    malformed_every: int = 0
    chunk_delay_s: float = 0.0


def _sse(obj: dict[str, Any]) -> str:
    """One server-sent event carrying a JSON object."""
    return f"data: {json.dumps(obj)}\n\n"


def _prompt_tokens(prompt: Any) -> int:
    """Token count of a prompt given as token ids, or a whitespace word count for text."""
    if isinstance(prompt, list):
        return len(prompt)
    return len(str(prompt or "").split())


async def _events(
    n: int, model: str, max_tokens: int, prompt_tokens: int, usage: bool, faults: Faults
) -> AsyncIterator[str]:
    """The SSE stream of one completion: a chunk per token, then usage (if asked) and [DONE]."""
    head = {"id": f"cmpl-null-{n}", "object": "text_completion", "created": int(time.time()), "model": model}
    broken = bool(faults.malformed_every and n % faults.malformed_every == 0)
    for i in range(max_tokens):
        if faults.chunk_delay_s:
            await asyncio.sleep(faults.chunk_delay_s)
        if broken and i == max_tokens // 2:
            yield "data: {this is not json\n\n"
            return
        finish = "length" if i == max_tokens - 1 else None
        choice = {"index": 0, "text": "x", "logprobs": None, "finish_reason": finish}
        yield _sse({**head, "choices": [choice]})
    if usage:
        counts = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": max_tokens,
            "total_tokens": prompt_tokens + max_tokens,
        }
        yield _sse({**head, "choices": [], "usage": counts})
    yield "data: [DONE]\n\n"


async def _joined(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """A stream's events as a single body chunk."""
    yield "".join([e async for e in events])


def build_app(faults: Faults | None = None) -> Starlette:
    """The Starlette app: `GET /v1/models` and `POST /v1/completions` (streamed or not)."""
    faults = faults or Faults()
    counter = itertools.count(1)  # one event loop serves all requests, so no lock is needed

    async def models(_: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "owned_by": "quantsweep"}]}
        )

    async def completions(request: Request) -> Response:
        n = next(counter)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": {"message": "body is not JSON", "code": 400}}, status_code=400)
        if faults.fail_every and n % faults.fail_every == 0:
            return JSONResponse(
                {"error": {"message": f"injected failure on request {n}", "code": 500}}, status_code=500
            )
        max_tokens = int(body.get("max_tokens") or 16)
        prompt_tokens = _prompt_tokens(body.get("prompt"))
        model = str(body.get("model") or MODEL_ID)
        if not body.get("stream"):
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": max_tokens,
                "total_tokens": prompt_tokens + max_tokens,
            }
            choice = {"index": 0, "text": "x" * max_tokens, "logprobs": None, "finish_reason": "length"}
            return JSONResponse(
                {
                    "id": f"cmpl-null-{n}",
                    "object": "text_completion",
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        stream = _events(n, model, max_tokens, prompt_tokens, include_usage, faults)
        if not faults.chunk_delay_s:
            # Nothing is waited for, so the whole stream goes out in one write: the server spends
            # one send per request instead of one per token, and the client does all the parsing.
            stream = _joined(stream)
        return StreamingResponse(stream, media_type="text/event-stream")

    return Starlette(
        routes=[Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"])]
    )


@contextmanager
def null_server(
    fail_every: int = 0, chunk_delay_s: float = 0.0, malformed_every: int = 0, startup_timeout_s: float = 10.0
) -> Iterator[str]:
    """Serve the null app on a free 127.0.0.1 port in a daemon thread; yield its base URL."""
    app = build_app(Faults(fail_every, malformed_every, chunk_delay_s))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))  # port 0: the OS picks a free port, so parallel tests never collide
    port = sock.getsockname()[1]
    # A short graceful-shutdown timeout stops a slow stream whose client already gave up from holding exit.
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
        loop="uvloop",
        http="httptools",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"null-server-{port}", daemon=True
    )
    thread.start()
    try:
        _wait_started(server, thread, startup_timeout_s)
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _wait_started(server: uvicorn.Server, thread: threading.Thread, timeout_s: float) -> None:
    """Block until uvicorn accepts connections; fail loudly if it died or took too long."""
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("null server thread exited during startup (see its log above)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"null server did not start within {timeout_s}s")
        time.sleep(0.01)

"""A "null" OpenAI-compatible server that answers instantly, to measure the load generator itself.

A single-process asyncio client saturates before a fast server does (vLLM issue 39963), so before a
latency or QPS number is trusted the same profile is run against this server: whatever rate or latency
the client cannot reach here, it cannot measure on a real engine either. It streams `max_tokens` chunks
of text "x" plus a usage chunk and `[DONE]`, like vLLM's `/v1/completions`, and can inject faults
(HTTP 500 on every Nth request, a malformed stream, slow chunks) so tests exercise real HTTP failures.
It can also play an engine's timing: a known delay before the first token and between tokens, and
stamp when it actually received each request and wrote each token (`Stamps`), so the load
generator's own TTFT and ITL error can be measured against what the server did
(`bench/loadgen_capacity.py`).

The server must cost as little CPU as it can, because on a small machine it shares the cores with the
client it measures: it is a bare ASGI app on uvicorn (uvloop, httptools), with no framework between
(Starlette's routing, request object and streaming task group cost ~4x the CPU per request: 0.4 vs
0.1 ms). Without slow chunks the whole stream is one write with a Content-Length; each request
serialises two chunk events, not one per token. It binds 127.0.0.1 only and runs in a daemon thread.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

MODEL_ID = "null-model"
HOST = "127.0.0.1"

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Message, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Faults:
    """What the server injects: HTTP 500 / a malformed stream on every Nth request, slow chunks, and
    an engine's timing (a delay before the first token, another between tokens)."""

    fail_every: int = 0
    malformed_every: int = 0
    chunk_delay_s: float = 0.0  # before every event of a stream
    ttft_s: float = 0.0  # before the first token
    itl_s: float = 0.0  # between tokens

    @property
    def paced(self) -> bool:
        """Whether a stream is written event by event (any delay), not as one body."""
        return bool(self.chunk_delay_s or self.ttft_s or self.itl_s)


# Per streamed request, keyed by its prompt (token ids): time.perf_counter() when the server had read
# the request, then just before it wrote each token. perf_counter is CLOCK_MONOTONIC on Linux: one
# clock for every process on the machine.
Stamps = dict[tuple, list[float]]


def _prompt_tokens(prompt: Any) -> int:
    """Token count of a prompt given as token ids, or a whitespace word count for text."""
    if isinstance(prompt, list):
        return len(prompt)
    return len(str(prompt or "").split())


def _max_tokens(body: dict[str, Any]) -> int:
    return int(body.get("max_tokens") or 16)


def _head(n: int, body: dict[str, Any]) -> dict[str, Any]:
    """The fields every answer (and every stream chunk) to request `n` shares."""
    model = str(body.get("model") or MODEL_ID)
    return {"id": f"cmpl-null-{n}", "object": "text_completion", "created": int(time.time()), "model": model}


def _events(n: int, body: dict[str, Any], faults: Faults) -> list[bytes]:
    """The SSE events of one streamed completion: a chunk per token, then usage (if asked) and [DONE]."""
    max_tokens = _max_tokens(body)
    head = _head(n, body)

    def event(obj: dict[str, Any]) -> bytes:
        return f"data: {json.dumps({**head, **obj})}\n\n".encode()

    token = event({"choices": [{"index": 0, "text": "x", "logprobs": None, "finish_reason": None}]})
    events = [token] * (max_tokens - 1)
    events.append(
        event({"choices": [{"index": 0, "text": "x", "logprobs": None, "finish_reason": "length"}]})
    )
    if faults.malformed_every and n % faults.malformed_every == 0:
        return [*events[: max_tokens // 2], b"data: {this is not json\n\n"]
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(event({"choices": [], "usage": _usage(body, max_tokens)}))
    events.append(b"data: [DONE]\n\n")
    return events


def _usage(body: dict[str, Any], max_tokens: int) -> dict[str, int]:
    prompt_tokens = _prompt_tokens(body.get("prompt"))
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": max_tokens,
        "total_tokens": prompt_tokens + max_tokens,
    }


def _completion(n: int, body: dict[str, Any]) -> dict[str, Any]:
    """The JSON answer to a non-streamed completion request."""
    max_tokens = _max_tokens(body)
    choice = {"index": 0, "text": "x" * max_tokens, "logprobs": None, "finish_reason": "length"}
    return {**_head(n, body), "choices": [choice], "usage": _usage(body, max_tokens)}


async def _send_json(send: Send, status: int, obj: dict[str, Any]) -> None:
    data = json.dumps(obj).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _send_error(send: Send, status: int, message: str) -> None:
    await _send_json(send, status, {"error": {"message": message, "code": status}})


async def _send_stream(
    send: Send, events: list[bytes], tokens: int, faults: Faults, stamps: list[float] | None
) -> None:
    """Stream the events; without a delay, as one body with a Content-Length (one write, no chunking).

    Paced: `ttft_s` before the first token, `itl_s` before each later one (of the first `tokens`
    events), `chunk_delay_s` before every event; `stamps` gets each token's write time.
    """
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    if not faults.paced:
        data = b"".join(events)
        headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})
        return
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for i, e in enumerate(events):
        delay = faults.chunk_delay_s + (0.0 if i >= tokens else faults.itl_s if i else faults.ttft_s)
        if delay:
            await asyncio.sleep(delay)
        if stamps is not None and i < tokens:
            stamps.append(time.perf_counter())
        await send({"type": "http.response.body", "body": e, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


def build_app(faults: Faults | None = None, stamps: Stamps | None = None) -> ASGIApp:
    """The ASGI app: `GET /v1/models` and `POST /v1/completions` (streamed or not); 404/405 otherwise.

    With `stamps`, each streamed request's timing goes there under its prompt (see `Stamps`).
    """
    faults = faults or Faults()
    counter = itertools.count(1)  # one event loop serves all requests, so no lock is needed
    models = {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "owned_by": "quantsweep"}]}
    routes = {"/v1/models": "GET", "/v1/completions": "POST"}

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; nothing else is served
        path, method = scope["path"], scope["method"]
        if path not in routes:
            return await _send_error(send, 404, f"no route {path}")
        if method != routes[path]:
            return await _send_error(send, 405, f"{method} not allowed on {path}")
        if path == "/v1/models":
            return await _send_json(send, 200, models)
        n = next(counter)
        try:
            body = json.loads(await _read_body(receive))
        except ValueError:
            return await _send_error(send, 400, "body is not JSON")
        if not isinstance(body, dict):
            return await _send_error(send, 400, "body is not a JSON object")
        if faults.fail_every and n % faults.fail_every == 0:
            return await _send_error(send, 500, f"injected failure on request {n}")
        if not body.get("stream"):
            return await _send_json(send, 200, _completion(n, body))
        mine = None
        if stamps is not None:
            prompt = body.get("prompt")
            mine = stamps[tuple(prompt) if isinstance(prompt, list) else (str(prompt),)] = [
                time.perf_counter()
            ]
        await _send_stream(send, _events(n, body, faults), _max_tokens(body), faults, mine)

    return app


@contextmanager
def null_server(
    fail_every: int = 0,
    chunk_delay_s: float = 0.0,
    malformed_every: int = 0,
    startup_timeout_s: float = 10.0,
    ttft_s: float = 0.0,
    itl_s: float = 0.0,
    stamps: Stamps | None = None,
) -> Iterator[str]:
    """Serve the null app on a free 127.0.0.1 port in a daemon thread; yield its base URL."""
    app = build_app(Faults(fail_every, malformed_every, chunk_delay_s, ttft_s, itl_s), stamps)
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

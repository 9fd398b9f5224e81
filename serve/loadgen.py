"""Drive streamed `/v1/completions` load at an OpenAI-compatible server in the study's traffic profiles.

Every request sends its prompt as token ids and pins the output length (`max_tokens` = `min_tokens`,
`ignore_eos`, greedy), so a use case's prompt/output token counts are exact rather than "about so many
words". Profiles: synchronous (one at a time: the paper's latency mode), poisson and constant (open loop
at a target rate) and concurrent (closed loop at a fixed number in flight). Each request becomes one
`RequestRecord`, failures included; a run never raises for a failed request and is bounded both in
requests and in time. `run_*` functions are for plain code, `arun_*` for code already inside an event loop.

One client process drives about 8,000 streamed requests/s on an AVX-512 core and ~1,500 on an AVX2
one (bench/loadgen_capacity.py). Past that, `processes` splits an open-loop schedule (request i to
process i mod n) or a closed loop's concurrency and requests across child processes, each with its own
event loop and connections, all starting at one shared perf_counter instant (CLOCK_MONOTONIC: the same
clock in every process of a host); their records come back merged, ids and schedule as one process
would have made them.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import multiprocessing
import queue
import random
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import aiohttp
import msgspec
import uvloop

from serve.records import RequestRecord

COMPLETIONS_PATH = "/v1/completions"
DEFAULT_TIMEOUT_S = 300.0

P = ParamSpec("P")
T = TypeVar("T")


class StreamError(Exception):
    """The server answered, but not with a well-formed, complete completion stream."""


@dataclass(frozen=True)
class Target:
    """Where and what to ask: the completions URL, model, auth headers, output length and deadline."""

    url: str
    model: str
    headers: dict[str, str]
    max_tokens: int
    timeout_s: float


def make_prompts(
    vocab_size: int, prompt_tokens: int, n: int, seed: int, avoid_ids: Iterable[int] = ()
) -> list[list[int]]:
    """Return `n` deterministic prompts of exactly `prompt_tokens` random token ids, skipping `avoid_ids`."""
    if vocab_size < 1 or prompt_tokens < 1 or n < 1:
        raise ValueError(
            f"vocab_size, prompt_tokens and n must be >= 1, got {vocab_size}, {prompt_tokens}, {n}"
        )
    avoid = set(avoid_ids)
    allowed = [i for i in range(vocab_size) if i not in avoid]
    if not allowed:
        raise ValueError(f"avoid_ids exclude every id of a vocabulary of {vocab_size}")
    rng = random.Random(seed)
    return [rng.choices(allowed, k=prompt_tokens) for _ in range(n)]


def completion_payload(model: str, prompt: list[int], max_tokens: int) -> dict[str, Any]:
    """The JSON body of one streamed completion request with its output length pinned."""
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        # vLLM extras: without them a model that emits EOS early shortens the use case's output.
        "min_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        # The final chunk then carries `usage`, the server's own token counts.
        "stream_options": {"include_usage": True},
    }


def sse_data(line: bytes) -> bytes | None:
    """The payload of an SSE `data:` line, or None for blank lines, comments and other fields."""
    if not line.startswith(b"data:"):
        return None
    return line[len(b"data:") :].strip()


def _chunk_has_text(event: dict[str, Any]) -> bool:
    """Whether a stream event carries generated text (the usage-only chunk has no choices)."""
    choices = event.get("choices") or []
    if not isinstance(choices, list):
        raise StreamError(f"'choices' is not a list: {choices!r:.200}")
    return any(isinstance(c, dict) and c.get("text") for c in choices)


# msgspec decodes a chunk ~5x faster than json.loads (0.5 vs 2.8 us): with ~18 events per request,
# parsing was a third of the generator's CPU per request.
_decode = msgspec.json.Decoder().decode


def _read_event(data: bytes, rec: RequestRecord, now: float) -> dict[str, Any] | None:
    """Record one stream event's chunk time if it carries text; return its `usage`, if any."""
    event = _decode(data)
    if not isinstance(event, dict):
        raise StreamError(f"stream event is not an object: {data[:200]!r}")
    if event.get("error"):
        raise StreamError(f"error in stream: {event['error']!s:.300}")
    # Chunks with empty text (detokenizer holding back a partial character) are invisible
    # to a reader, so they do not count as a first token or an inter-token gap.
    if _chunk_has_text(event):
        rec.chunk_s.append(now)
    usage = event.get("usage")
    return usage if isinstance(usage, dict) else None


async def _stream_into(
    session: aiohttp.ClientSession, target: Target, prompt: list[int], rec: RequestRecord, t0: float
) -> None:
    """Send one request and fill `rec` with chunk times and token counts; raise on any fault."""
    payload = completion_payload(target.model, prompt, target.max_tokens)
    usage: dict[str, Any] = {}
    end: float | None = None
    async with session.post(target.url, json=payload, headers=target.headers) as resp:
        if resp.status >= 400:
            body = (await resp.read()).decode(errors="replace")
            raise StreamError(f"HTTP {resp.status}: {body[:300]}")
        tail = b""
        # Whole network reads, not lines: one await per read instead of one per line. The stream is
        # read to its end even after [DONE], so the connection goes back to the pool for reuse.
        async for piece in resp.content.iter_any():
            now = time.perf_counter() - t0  # stamp before parsing, so parsing cost is not latency
            *lines, tail = (tail + piece).split(b"\n")
            for line in lines:
                data = sse_data(line)
                if data is None or end is not None:
                    continue
                if data == b"[DONE]":
                    end = now
                elif (u := _read_event(data, rec, now)) is not None:
                    usage = u
    if end is None:
        raise StreamError("stream ended without 'data: [DONE]'")
    rec.end_s = end
    rec.first_token_s = rec.chunk_s[0] if rec.chunk_s else None
    rec.output_tokens = int(usage.get("completion_tokens") or len(rec.chunk_s))
    rec.prompt_tokens = int(usage.get("prompt_tokens") or len(prompt))


async def _send(
    session: aiohttp.ClientSession, target: Target, prompt: list[int], rec: RequestRecord
) -> RequestRecord:
    """Send one request and return its record; every failure becomes status='error', never an exception."""
    rec.prompt_tokens = len(prompt)
    rec.send_time = time.time()
    t0 = time.perf_counter()
    try:
        # One deadline bounds the whole request, stream included (the session sets none of its own).
        async with asyncio.timeout(target.timeout_s):
            await _stream_into(session, target, prompt, rec, t0)
    except TimeoutError:
        _mark_failed(rec, f"timeout after {target.timeout_s}s", t0)
    except Exception as exc:  # connection errors, HTTP errors, malformed JSON: all are data, not crashes
        _mark_failed(rec, f"{type(exc).__name__}: {exc}", t0)
    return rec


def _mark_failed(rec: RequestRecord, error: str, t0: float) -> None:
    """Turn a record into a failure, keeping when it failed."""
    rec.status = "error"
    rec.error = error or "unknown error"
    rec.end_s = time.perf_counter() - t0


def _target(base_url: str, model: str, max_tokens: int, api_key: str | None, timeout_s: float) -> Target:
    """Validate the common arguments and build the request target."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    base = base_url.rstrip("/")
    base = base[: -len("/v1")] if base.endswith("/v1") else base
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return Target(base + COMPLETIONS_PATH, model, headers, max_tokens, timeout_s)


def _client(max_connections: int | None) -> aiohttp.ClientSession:
    """One HTTP session for a run, whose pool never caps the load below what the profile asks for."""
    # limit=0 is unbounded: a default cap (100) would silently turn a high-rate run into concurrency 100;
    # trust_env=False keeps proxy variables from putting a proxy between us and the server under test.
    connector = aiohttp.TCPConnector(limit=max_connections or 0, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=None)  # `_send` bounds each request itself
    # No cookie jar: an OpenAI server sets none, and the jar is consulted on every request and response.
    jar = aiohttp.DummyCookieJar()
    return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False, cookie_jar=jar)


class _Ids:
    """Request records for one run: ids unique across runs (random prefix, profile, counter)."""

    def __init__(self, profile: str, rate: float | None) -> None:
        self.profile, self.rate = profile, rate
        self.prefix = f"{uuid.uuid4().hex[:8]}-{profile}"

    def record(self, i: int, warmup: bool = False) -> RequestRecord:
        """A fresh, not yet sent record for request `i` (or warm-up request `i`)."""
        kind = "w" if warmup else "r"
        return RequestRecord(f"{self.prefix}-{kind}{i:05d}", self.profile, self.rate, math.nan, warmup=warmup)


async def _warmup(
    client: aiohttp.ClientSession, target: Target, prompts: Sequence[list[int]], n: int, ids: _Ids
) -> list[RequestRecord]:
    """Send `n` warm-up requests one at a time, recorded with warmup=True."""
    out = []
    for i in range(n):
        # Reversed, so the measured requests that reuse these prompts get no prefix-cache hit from warm-up.
        prompt = list(reversed(prompts[i % len(prompts)]))
        out.append(await _send(client, target, prompt, ids.record(i, warmup=True)))
    return out


async def _closed_loop(
    target: Target,
    prompts: Sequence[list[int]],
    *,
    profile: str,
    concurrency: int,
    max_requests: int,
    duration_s: float | None,
    warmup: int,
    processes: int = 1,
) -> list[RequestRecord]:
    """Keep `concurrency` requests in flight until `max_requests` are sent or `duration_s` has passed."""
    _check_prompts(prompts, max_requests, warmup)
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    ids = _Ids(profile, None)
    async with _client(concurrency) as client:
        records = await _warmup(client, target, prompts, warmup, ids)
        if processes > 1:
            # Each process keeps its part of the concurrency and sends as large a part of the
            # requests, so all of them run out at about the same time.
            concs = _split(concurrency, processes)
            counts = [max_requests * c // concurrency for c in concs]
            for k in range(max_requests - sum(counts)):
                counts[k] += 1
            firsts = list(itertools.accumulate([0, *counts[:-1]]))
            shards = [
                (first, conc, duration_s, count)
                for first, conc, count in zip(firsts, concs, counts, strict=True)
                if conc and count
            ]
            batches = list(
                itertools.chain.from_iterable(
                    await _in_processes(_closed_shard, target, prompts, shards, ids)
                )
            )
        else:
            deadline = time.perf_counter() + duration_s if duration_s else math.inf
            batches = await _workers(client, target, prompts, ids, concurrency, (0, max_requests), deadline)
    return records + sorted(batches, key=lambda r: r.send_time)


def _split(total: int, parts: int) -> list[int]:
    """`total` in `parts` shares that differ by at most one, largest first."""
    return [total // parts + (k < total % parts) for k in range(parts)]


async def _workers(
    client: aiohttp.ClientSession,
    target: Target,
    prompts: Sequence[list[int]],
    ids: _Ids,
    concurrency: int,
    span: tuple[int, int],
    deadline: float,
) -> list[RequestRecord]:
    """`concurrency` loops that each send their next request when their last one ends: requests
    span[0] .. span[0] + span[1] - 1, until they are all sent or `deadline` (perf_counter) passes."""
    first, count = span
    counter = itertools.count(first)
    end = first + count

    async def worker() -> list[RequestRecord]:
        done: list[RequestRecord] = []
        while time.perf_counter() < deadline and (i := next(counter)) < end:
            done.append(await _send(client, target, prompts[i % len(prompts)], ids.record(i)))
        return done

    batches = await asyncio.gather(*(worker() for _ in range(concurrency)))
    return list(itertools.chain.from_iterable(batches))


async def _open_loop(
    target: Target,
    prompts: Sequence[list[int]],
    offsets: list[float],
    *,
    profile: str,
    rate: float,
    warmup: int,
    processes: int = 1,
) -> list[RequestRecord]:
    """Send a request at each offset (s after start) regardless of how many are in flight, then wait for all."""
    _check_prompts(prompts, len(offsets), warmup)
    ids = _Ids(profile, rate)
    async with _client(None) as client:
        records = await _warmup(client, target, prompts, warmup, ids)
        if processes > 1:
            indexed = list(enumerate(offsets))
            shards = [indexed[k::processes] for k in range(min(processes, len(indexed)))]
            per_shard = await _in_processes(_open_shard, target, prompts, shards, ids)
            # request i went to shard i mod n, as its (i // n)-th: back in schedule order
            n = len(shards)
            return records + [per_shard[i % n][i // n] for i in range(len(indexed))]
        records += await _send_on_schedule(
            client, target, prompts, enumerate(offsets), time.perf_counter(), ids
        )
    return records


async def _send_on_schedule(
    client: aiohttp.ClientSession,
    target: Target,
    prompts: Sequence[list[int]],
    schedule: Iterable[tuple[int, float]],
    start: float,
    ids: _Ids,
) -> list[RequestRecord]:
    """Send request `i` at `start` + its offset (perf_counter seconds) for each (i, offset), then wait for all."""
    tasks = []
    for i, offset in schedule:
        delay = start + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        rec = ids.record(i)
        tasks.append(asyncio.create_task(_send(client, target, prompts[i % len(prompts)], rec)))
    # Each request carries its own deadline, so this wait is bounded by timeout_s after the last send.
    return list(await asyncio.gather(*tasks))


# A run in several processes: each child gets its shard, says it is ready and waits; the parent then
# sets one start time (perf_counter is CLOCK_MONOTONIC on Linux: one clock for every process of a host).
START_LEAD_S = 0.05  # from the parent's go to the shared start: every child is already waiting
READY_TIMEOUT_S = 120.0


def _shard_main(
    run: Callable[..., Coroutine[Any, Any, list[RequestRecord]]],
    args: tuple[Any, ...],
    shard_no: int,
    go: Any,
    start: Any,
    out: Any,
) -> None:
    """A child process: one event loop that runs its shard from the shared start; (shard number,
    records) or an error to `out`."""
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            out.put(("ready", shard_no))
            if not go.wait(READY_TIMEOUT_S):
                raise TimeoutError(f"no start signal within {READY_TIMEOUT_S:g} s")
            out.put(("ok", (shard_no, runner.run(run(*args, start.value)))))
    except BaseException as exc:  # anything, so the parent reports it instead of waiting for it
        out.put(("error", f"{type(exc).__name__}: {exc}"))


async def _open_shard(
    target: Target, prompts: Sequence[list[int]], schedule: list[tuple[int, float]], ids: _Ids, start: float
) -> list[RequestRecord]:
    """One process's part of an open-loop run: its (index, offset) pairs from the shared start."""
    async with _client(None) as client:
        return await _send_on_schedule(client, target, prompts, schedule, start, ids)


async def _closed_shard(
    target: Target,
    prompts: Sequence[list[int]],
    share: tuple[int, int, float | None, int],
    ids: _Ids,
    start: float,
) -> list[RequestRecord]:
    """One process's part of a closed-loop run: (first index, concurrency, duration, requests)."""
    first, concurrency, duration_s, count = share
    async with _client(concurrency) as client:
        deadline = start + duration_s if duration_s else math.inf
        return await _workers(client, target, prompts, ids, concurrency, (first, count), deadline)


def _collect(out: Any, procs: list[Any], want: str, timeout_s: float) -> list[Any]:
    """One `want` message from every child (blocking); raises on a child's error, death or silence."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < len(procs):
        try:
            status, what = out.get(timeout=0.2)
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"load generator: a client process died (exit code {dead[0]})") from None
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"load generator: {len(procs) - len(got)} client process(es) not {want} "
                    f"within {timeout_s:g} s"
                ) from None
            continue
        if status == "error":
            raise RuntimeError(f"load generator: a client process failed: {what}")
        got.append(what)
    return got


async def _in_processes(
    shard_fn: Callable[..., Coroutine[Any, Any, list[RequestRecord]]],
    target: Target,
    prompts: Sequence[list[int]],
    shards: Sequence[Any],
    ids: _Ids,
) -> list[list[RequestRecord]]:
    """Run one shard per child process from one shared start; each shard's records, in shard order.

    For rates one core cannot drive: each process sends and reads its own share on its own event
    loop, so the client's CPU per request no longer caps the offered load.
    """
    ctx = multiprocessing.get_context("spawn")  # not fork: the caller may hold threads (Ray, uvloop)
    go, start, out = ctx.Event(), ctx.Value("d", 0.0, lock=False), ctx.Queue()
    procs = [
        ctx.Process(
            target=_shard_main, args=(shard_fn, (target, prompts, shard, ids), k, go, start, out), daemon=True
        )
        for k, shard in enumerate(shards)
    ]
    loop = asyncio.get_running_loop()
    for p in procs:
        p.start()
    try:
        await loop.run_in_executor(None, _collect, out, procs, "ready", READY_TIMEOUT_S)
        start.value = time.perf_counter() + START_LEAD_S
        go.set()
        # Every request has its own deadline, so each shard ends within timeout_s of its last send.
        results = await loop.run_in_executor(None, _collect, out, procs, "ok", math.inf)
    finally:
        for p in procs:
            p.join(timeout=10 if go.is_set() else 0)
            if p.is_alive():
                p.kill()
    return [recs for _, recs in sorted(results, key=lambda done: done[0])]


def _check_prompts(prompts: Sequence[list[int]], max_requests: int, warmup: int) -> None:
    """Reject empty prompt lists and non-positive counts before any request is sent."""
    if not prompts or any(not p for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token-id lists")
    if max_requests < 0 or warmup < 0:
        raise ValueError(f"max_requests and warmup must be >= 0, got {max_requests}, {warmup}")


def poisson_offsets(rate: float, duration_s: float, max_requests: int, rng: random.Random) -> list[float]:
    """Send times from 0 with exponential gaps of mean 1/rate, cut at `duration_s` and `max_requests`."""
    _check_rate(rate, duration_s, max_requests)
    offsets: list[float] = []
    t = 0.0
    while len(offsets) < max_requests and t < duration_s:
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


def constant_offsets(rate: float, duration_s: float, max_requests: int) -> list[float]:
    """Send times from 0 spaced exactly 1/rate apart, cut at `duration_s` and `max_requests`."""
    _check_rate(rate, duration_s, max_requests)
    n = min(max_requests, math.ceil(duration_s * rate))  # i / rate < duration_s  <=>  i < duration_s * rate
    return [i / rate for i in range(n)]


def _check_rate(rate: float, duration_s: float, max_requests: int) -> None:
    """An open-loop run needs a positive rate, duration and request count."""
    if not (rate > 0 and duration_s > 0 and max_requests >= 1):
        raise ValueError(
            f"rate and duration_s must be > 0 and max_requests >= 1, got {rate}, {duration_s}, {max_requests}"
        )


async def arun_synchronous(
    base_url: str,
    model: str,
    prompts: Sequence[list[int]],
    max_tokens: int,
    *,
    api_key: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    warmup: int = 1,
    max_requests: int | None = None,
    duration_s: float | None = None,
) -> list[RequestRecord]:
    """One request at a time over the prompts (or `max_requests` of them, cycled), after `warmup` requests."""
    target = _target(base_url, model, max_tokens, api_key, timeout_s)
    n = len(prompts) if max_requests is None else max_requests
    return await _closed_loop(
        target,
        prompts,
        profile="synchronous",
        concurrency=1,
        max_requests=n,
        duration_s=duration_s,
        warmup=warmup,
    )


async def arun_concurrent(
    base_url: str,
    model: str,
    prompts: Sequence[list[int]],
    max_tokens: int,
    *,
    concurrency: int,
    max_requests: int,
    duration_s: float | None = None,
    api_key: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    warmup: int = 0,
    processes: int = 1,
) -> list[RequestRecord]:
    """Keep `concurrency` requests in flight until `max_requests` are sent (or `duration_s` passes)."""
    target = _target(base_url, model, max_tokens, api_key, timeout_s)
    return await _closed_loop(
        target,
        prompts,
        profile="concurrent",
        concurrency=concurrency,
        max_requests=max_requests,
        duration_s=duration_s,
        warmup=warmup,
        processes=_processes(processes),
    )


async def arun_poisson(
    base_url: str,
    model: str,
    prompts: Sequence[list[int]],
    max_tokens: int,
    *,
    rate: float,
    duration_s: float,
    max_requests: int,
    seed: int,
    api_key: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    warmup: int = 0,
    processes: int = 1,
) -> list[RequestRecord]:
    """Open-loop Poisson arrivals at `rate` req/s from a seeded RNG, bounded by duration and count."""
    target = _target(base_url, model, max_tokens, api_key, timeout_s)
    offsets = poisson_offsets(rate, duration_s, max_requests, random.Random(seed))
    return await _open_loop(
        target, prompts, offsets, profile="poisson", rate=rate, warmup=warmup, processes=_processes(processes)
    )


async def arun_constant(
    base_url: str,
    model: str,
    prompts: Sequence[list[int]],
    max_tokens: int,
    *,
    rate: float,
    duration_s: float,
    max_requests: int,
    api_key: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    warmup: int = 0,
    processes: int = 1,
) -> list[RequestRecord]:
    """Open-loop arrivals exactly 1/rate apart, bounded by duration and count."""
    target = _target(base_url, model, max_tokens, api_key, timeout_s)
    offsets = constant_offsets(rate, duration_s, max_requests)
    return await _open_loop(
        target,
        prompts,
        offsets,
        profile="constant",
        rate=rate,
        warmup=warmup,
        processes=_processes(processes),
    )


def _processes(n: int) -> int:
    """A valid client process count (`processes`: the open- and closed-loop profiles split across them)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"processes must be an integer >= 1, got {n!r}")
    return n


def _blocking(coro_fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """A blocking twin of an `arun_*` profile, same arguments, for callers outside an event loop."""

    @functools.wraps(coro_fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        # uvloop: the same asyncio API with a libuv loop, which roughly halves the client's CPU per
        # request, so the generator saturates later (vLLM issue 39963 is about exactly that).
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro_fn(*args, **kwargs))

    run.__doc__ = f"Blocking `{coro_fn.__name__}`: {coro_fn.__doc__}"
    return run


run_synchronous = _blocking(arun_synchronous)
run_concurrent = _blocking(arun_concurrent)
run_poisson = _blocking(arun_poisson)
run_constant = _blocking(arun_constant)

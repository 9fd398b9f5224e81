"""The load generator against the real null HTTP server: profiles, bounds and injected faults."""

import json
import random
import statistics
import time

import httpx
import pytest

from serve.loadgen import (
    constant_offsets,
    make_prompts,
    poisson_offsets,
    run_concurrent,
    run_constant,
    run_poisson,
    run_synchronous,
)
from serve.metrics import summarize
from serve.nullserver import MODEL_ID, null_server

pytestmark = pytest.mark.integration

PROMPTS = make_prompts(vocab_size=1000, prompt_tokens=16, n=4, seed=0, avoid_ids=(0, 1, 2))


@pytest.fixture(scope="module")
def url():
    with null_server() as base_url:
        yield base_url


def measured(records):
    return [r for r in records if not r.warmup]


def test_synchronous_run_streams_every_token(url):
    records = run_synchronous(url, MODEL_ID, PROMPTS[:3], 8, warmup=1, timeout_s=10)
    assert [r.warmup for r in records] == [True, False, False, False]
    runs = measured(records)
    assert all(r.status == "ok" and r.error == "" for r in runs)
    for r in runs:
        assert (r.output_tokens, r.prompt_tokens, len(r.chunk_s)) == (8, 16, 8)
        assert r.first_token_s == r.chunk_s[0]
        assert all(a <= b for a, b in zip(r.chunk_s, r.chunk_s[1:], strict=False))
        assert 0 < r.chunk_s[0] and r.chunk_s[-1] <= r.end_s
        assert r.profile == "synchronous" and r.target_rate is None
    # one at a time: each request is sent after the previous one ended
    for prev, nxt in zip(runs, runs[1:], strict=False):
        assert nxt.send_time >= prev.send_time + prev.end_s
    s = summarize(records)
    assert (s["completed"], s["failed"], s["total_output_tokens"]) == (3, 0, 24)
    assert s["max_concurrent_requests"] == 1
    assert len({r.request_id for r in records}) == 4


def test_poisson_run_is_bounded_by_count(url):
    start = time.monotonic()
    records = run_poisson(
        url, MODEL_ID, PROMPTS, 4, rate=100.0, duration_s=30.0, max_requests=12, seed=3, timeout_s=10
    )
    assert len(records) == 12 and all(r.ok for r in records)
    assert time.monotonic() - start < 10  # 12 requests at 100/s, not 30 s
    assert {(r.profile, r.target_rate) for r in records} == {("poisson", 100.0)}


def test_poisson_run_is_bounded_by_duration(url):
    expected = poisson_offsets(20.0, 0.5, 1000, random.Random(7))
    assert 1 <= len(expected) < 1000
    records = run_poisson(
        url, MODEL_ID, PROMPTS, 4, rate=20.0, duration_s=0.5, max_requests=1000, seed=7, timeout_s=10
    )
    assert len(records) == len(expected)
    sends = sorted(r.send_time for r in records)
    assert sends[-1] - sends[0] < 0.5 + 0.25  # last arrival is scheduled before the 0.5 s cut


def test_poisson_schedule_is_seeded():
    a = poisson_offsets(5.0, 10.0, 50, random.Random(1))
    assert a == poisson_offsets(5.0, 10.0, 50, random.Random(1))
    assert a != poisson_offsets(5.0, 10.0, 50, random.Random(2))
    assert a[0] == 0.0 and all(x < y for x, y in zip(a, a[1:], strict=False))


def test_constant_run_is_evenly_spaced_and_bounded(url):
    assert constant_offsets(10.0, 0.35, 100) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert len(constant_offsets(10.0, 100.0, 5)) == 5
    records = run_constant(
        url, MODEL_ID, PROMPTS, 4, rate=10.0, duration_s=0.35, max_requests=100, timeout_s=10
    )
    assert len(records) == 4 and all(r.ok and r.profile == "constant" for r in records)
    sends = sorted(r.send_time for r in records)
    assert sends[-1] - sends[0] == pytest.approx(0.3, abs=0.1)


def test_failures_become_records_and_are_counted():
    with null_server(fail_every=3) as base_url:
        records = run_synchronous(base_url, MODEL_ID, PROMPTS, 4, warmup=0, max_requests=9, timeout_s=10)
    assert len(records) == 9
    errors = [r for r in records if r.status == "error"]
    assert [records.index(r) for r in errors] == [2, 5, 8]  # the server fails its 3rd, 6th, 9th request
    assert all("HTTP 500" in r.error and r.output_tokens == 0 for r in errors)
    s = summarize(records)
    assert (s["completed"], s["failed"]) == (6, 3)
    assert s["completed"] + s["failed"] == len(records)
    assert s["error_rate"] == pytest.approx(1 / 3)


def test_concurrent_run_holds_its_concurrency_and_counts_failures():
    with null_server(fail_every=3, chunk_delay_s=0.01) as base_url:
        records = run_concurrent(base_url, MODEL_ID, PROMPTS, 5, concurrency=8, max_requests=24, timeout_s=10)
    s = summarize(records)
    assert (s["completed"], s["failed"]) == (16, 8)
    assert 6 <= s["max_concurrent_requests"] <= 8


def test_malformed_stream_is_an_error_record():
    with null_server(malformed_every=2) as base_url:
        records = run_synchronous(base_url, MODEL_ID, PROMPTS[:2], 6, warmup=0, timeout_s=10)
    assert [r.status for r in records] == ["ok", "error"]
    assert "DecodeError" in records[1].error  # the chunk is not JSON


def test_request_deadline_is_an_error_record():
    with null_server(chunk_delay_s=0.2) as base_url:
        start = time.monotonic()
        records = run_synchronous(base_url, MODEL_ID, PROMPTS[:1], 20, warmup=0, timeout_s=0.5)
        elapsed = time.monotonic() - start
    assert records[0].status == "error" and "timeout" in records[0].error
    assert elapsed < 3


def test_unreachable_server_is_an_error_record_not_an_exception():
    with null_server() as base_url:
        pass  # the port is free again once the server stopped
    records = run_synchronous(base_url, MODEL_ID, PROMPTS[:2], 4, warmup=1, timeout_s=5)
    assert len(records) == 3 and all(r.status == "error" and r.error for r in records)
    assert summarize(records)["failed"] == 2


def test_make_prompts_is_deterministic_and_avoids_ids():
    a = make_prompts(50, 64, 3, seed=5, avoid_ids=range(10))
    assert a == make_prompts(50, 64, 3, seed=5, avoid_ids=range(10))
    assert a != make_prompts(50, 64, 3, seed=6, avoid_ids=range(10))
    assert all(len(p) == 64 and all(10 <= t < 50 for t in p) for p in a)


def test_null_server_speaks_the_completions_protocol(url):
    assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == MODEL_ID
    assert httpx.get(f"{url}/v1/completions").status_code == 405
    assert httpx.get(f"{url}/v1/chat").status_code == 404
    assert httpx.post(f"{url}/v1/completions", content=b"{nope").status_code == 400
    assert httpx.post(f"{url}/v1/completions", json=[1, 2]).status_code == 400
    plain = httpx.post(f"{url}/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 3}).json()
    assert plain["choices"][0]["text"] == "xxx"
    assert plain["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    body = {"prompt": "a b", "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}}
    r = httpx.post(f"{url}/v1/completions", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    assert int(r.headers["content-length"]) == len(r.content)  # one write, not chunked
    data = [ln[len("data: ") :] for ln in r.text.split("\n\n") if ln]
    assert data[-1] == "[DONE]"
    events = [json.loads(d) for d in data[:-1]]
    assert [e["choices"][0]["finish_reason"] for e in events[:4]] == [None, None, None, "length"]
    assert events[4]["choices"] == [] and events[4]["usage"]["total_tokens"] == 6
    assert len({e["id"] for e in events}) == 1


def test_a_paced_server_plays_an_engines_timing_and_stamps_what_it_did():
    # what bench/loadgen_capacity.py measures the generator's TTFT / ITL error against
    prompts = make_prompts(vocab_size=1000, prompt_tokens=16, n=10, seed=3)
    stamps: dict = {}
    with null_server(ttft_s=0.02, itl_s=0.005, stamps=stamps) as base_url:
        records = run_constant(
            base_url, MODEL_ID, prompts, 6, rate=50, duration_s=0.2, max_requests=10, timeout_s=10
        )
    assert len(records) == 10 and all(r.ok for r in records)
    for prompt, rec in zip(prompts, records, strict=True):
        recv, *writes = stamps[tuple(prompt)]
        assert len(writes) == len(rec.chunk_s) == 6
        # the event loop's timers wake to the millisecond, early or late
        server_ttft, server_span = writes[0] - recv, writes[-1] - writes[0]
        assert server_ttft >= 0.019 and server_span >= 5 * 0.0045
        # the client saw the server's timing plus the request's trip: never less, and not much more
        assert 0 < rec.first_token_s - server_ttft < 0.1
        assert abs((rec.chunk_s[-1] - rec.chunk_s[0]) - server_span) < 0.01


def test_a_constant_run_in_two_processes_keeps_one_schedule():
    # 40 requests at 200/s split across two client processes: each request is sent once, on the
    # schedule one process would have kept (request i at i / rate after the shared start).
    with null_server() as base_url:
        records = run_constant(
            base_url,
            MODEL_ID,
            PROMPTS,
            4,
            rate=200,
            duration_s=10,
            max_requests=40,
            timeout_s=10,
            processes=2,
        )
    assert len(records) == 40 and all(r.ok and r.output_tokens == 4 for r in records)
    assert [int(r.request_id.rsplit("-r", 1)[1]) for r in records] == list(range(40))
    assert len({r.request_id.rsplit("-r", 1)[0] for r in records}) == 1  # one run, one id prefix
    assert {(r.profile, r.target_rate) for r in records} == {("constant", 200.0)}
    # send_time is epoch seconds: the two processes' sends interleave on one 5 ms grid (the median
    # is asserted tightly; a busy host may delay a send now and then)
    lag = [r.send_time - i / 200 for i, r in enumerate(records)]  # constant when on the grid
    offs = [abs(x - statistics.median(lag)) for x in lag]
    assert statistics.median(offs) < 0.003 and max(offs) < 0.1


def test_a_closed_loop_in_two_processes_splits_concurrency_and_requests():
    with null_server(fail_every=4, chunk_delay_s=0.02) as base_url:
        records = run_concurrent(
            base_url,
            MODEL_ID,
            PROMPTS,
            5,
            concurrency=5,
            max_requests=30,
            warmup=1,
            timeout_s=10,
            processes=2,
        )
    assert [r.warmup for r in records[:1]] == [True] and not any(r.warmup for r in records[1:])
    runs = records[1:]
    assert sorted(int(r.request_id.rsplit("-r", 1)[1]) for r in runs) == list(range(30))
    s = summarize(records)
    assert s["completed"] + s["failed"] == 30 and s["failed"] >= 1  # the server's failures are kept
    assert 4 <= s["max_concurrent_requests"] <= 5  # 3 + 2 in flight across the processes


def test_a_bad_process_count_is_refused_and_a_dead_client_process_is_reported():
    import multiprocessing
    import os

    from serve.loadgen import _collect

    with pytest.raises(ValueError, match="processes must be an integer >= 1, got 0"):
        run_constant(
            "http://127.0.0.1:9", MODEL_ID, PROMPTS, 4, rate=1, duration_s=1, max_requests=1, processes=0
        )
    ctx = multiprocessing.get_context("spawn")
    out, proc = ctx.Queue(), ctx.Process(target=os._exit, args=(3,))
    proc.start()
    with pytest.raises(RuntimeError, match=r"a client process died \(exit code 3\)"):
        _collect(out, [proc], "ready", 30)
    proc.join()

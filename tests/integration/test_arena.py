"""Arena-Hard-style judging against a real local HTTP judge whose verdicts follow the request content.

The fake judge (Starlette + uvicorn on 127.0.0.1, a daemon thread) reads the question and both answers
out of the chat request and decides deterministically, so position swapping is observable:
- question "echo: TEXT"  -> replies TEXT verbatim (to test label parsing through real HTTP);
- question "biased: ..." -> always "[[A>B]]" (a pure position bias);
- question "fail500: ..." / "deny: ..." -> HTTP 500 / HTTP 401;
- an answer in position A containing "garble" -> a reply with no verdict;
- otherwise it prefers the answer containing the word "correct" ("[[A>>B]]" / "[[B>>A]]"), else a tie.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from contextlib import contextmanager

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cluster.config.schema import JudgeStage
from cluster.errors import ConfigError, StageError
from cluster.eval.arena import (
    LABELS,
    answers_from_samples,
    evaluate_task,
    judge_pair,
    load_prompts,
    make_client,
    parse_verdict,
    score_against_baseline,
)

pytestmark = pytest.mark.integration

_PARTS = re.compile(
    r"<\|User Prompt\|>\n(.*?)\n\n<\|The Start of Assistant A's Answer\|>\n(.*?)\n"
    r"<\|The End of Assistant A's Answer\|>.*<\|The Start of Assistant B's Answer\|>\n(.*?)\n"
    r"<\|The End of Assistant B's Answer\|>",
    re.S,
)


def _verdict(question: str, a: str, b: str) -> str:
    if question.startswith("echo: "):
        return question[len("echo: ") :]
    if question.startswith("biased: "):
        return "Both are fine, but the first reads better. [[A>B]]"
    if "garble" in a:
        return "I would rather not say."
    ca, cb = "correct" in a, "correct" in b
    if ca != cb:
        return "My verdict: [[A>>B]]" if ca else "My verdict: [[B>>A]]"
    return "They are the same. [[A=B]]"


def build_judge(seen: list[dict]) -> Starlette:
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append({"authorization": request.headers.get("authorization"), "body": body})
        question, a, b = _PARTS.search(body["messages"][-1]["content"]).groups()
        if question.startswith("fail500: "):
            return JSONResponse({"error": {"message": "injected", "code": 500}}, status_code=500)
        if question.startswith("deny: "):
            return JSONResponse({"error": {"message": "bad key", "code": 401}}, status_code=401)
        message = {"role": "assistant", "content": _verdict(question, a, b)}
        return JSONResponse(
            {
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": message}],
            }
        )

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@contextmanager
def fake_judge():
    """Serve the fake judge on a free 127.0.0.1 port; yield (base URL, list of seen requests)."""
    seen: list[dict] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(build_judge(seen), log_level="warning", access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "fake judge did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", seen
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def judge():
    with fake_judge() as (url, seen):
        yield url, seen


@pytest.fixture
def cfg(judge, monkeypatch):
    monkeypatch.delenv("QS_TEST_JUDGE_KEY", raising=False)
    judge[1].clear()
    return JudgeStage(base_url=judge[0], model="fake-judge", api_key_env="QS_TEST_JUDGE_KEY", timeout_s=10)


def _questions(prefix: str, n: int) -> list[dict]:
    return [{"question_id": f"q{i}", "prompt": f"{prefix}question {i}"} for i in range(n)]


def test_every_label_parses_through_http_and_garbage_is_error(cfg):
    with make_client(cfg) as client:
        for label in LABELS:
            assert (
                judge_pair(client, cfg, f"echo: reasoning [[A=B]] then finally [[{label}]]", "x", "y")
                == label
            )
        for garbage in ("no verdict at all", "[[C>A]]", "[A>B]", ""):
            assert judge_pair(client, cfg, f"echo: {garbage}", "x", "y") == "error"
        assert judge_pair(client, cfg, "fail500: q", "x", "y") == "error"
        with pytest.raises(StageError, match="HTTP 401"):
            judge_pair(client, cfg, "deny: q", "x", "y")
    assert parse_verdict("[[ B = A ]]") == "A=B"
    assert parse_verdict("[[A>B]] on reflection [[B>A]]") == "B>A"  # the final verdict counts


def test_request_carries_system_prompt_and_config(cfg, judge):
    with make_client(cfg) as client:
        judge_pair(client, cfg, "echo: [[A>B]]", "first answer", "second answer")
    body = judge[1][-1]["body"]
    assert body["model"] == "fake-judge" and body["temperature"] == 0.0 and body["max_tokens"] == 1024
    assert body["messages"][0]["role"] == "system" and "[[B>>A]]" in body["messages"][0]["content"]
    assert "first answer" in body["messages"][1]["content"]


def test_position_swap_cancels_a_judge_that_always_prefers_a(cfg):
    qs = _questions("biased: ", 5)
    out = score_against_baseline(
        qs, {q["question_id"]: "cand" for q in qs}, {q["question_id"]: "base" for q in qs}, cfg
    )
    assert out["summary"]["winrate"] == pytest.approx(0.5)
    for row in out["rows"]:
        assert row["labels"] == ["A>B", "A>B"]
        assert row["candidate_positions"] == ["B", "A"]
        assert row["scores"] == [0.0, 1.0] and row["score"] == 0.5
    assert out["summary"]["errors"] == 0 and out["summary"]["judgments"] == 10


def test_better_candidate_wins_with_a_ci_around_the_estimate(cfg):
    qs = _questions("", 10)
    cand = {q["question_id"]: ("the correct answer" if i < 8 else "an answer") for i, q in enumerate(qs)}
    base = {q["question_id"]: "an answer" for q in qs}
    s = score_against_baseline(qs, cand, base, cfg)
    summary, rows = s["summary"], s["rows"]
    assert summary["winrate"] == pytest.approx(0.9)  # 8 wins, 2 ties
    assert summary["winrate"] > 0.5
    assert summary["ci_low"] <= summary["winrate"] <= summary["ci_high"]
    assert rows[0]["labels"] == ["B>>A", "A>>B"] and rows[0]["score"] == 1.0
    assert rows[9]["labels"] == ["A=B", "A=B"] and rows[9]["score"] == 0.5
    again = score_against_baseline(qs, cand, base, cfg)["summary"]
    assert (again["ci_low"], again["ci_high"]) == (summary["ci_low"], summary["ci_high"])  # seeded


def test_errors_are_counted_not_dropped(cfg):
    qs = _questions("", 4) + [{"question_id": "q500", "prompt": "fail500: q"}]
    # q0: candidate garbles -> only run 2 (candidate in A) fails; q1: baseline garbles -> run 1 fails.
    cand = {"q0": "garble correct", "q1": "correct", "q2": "correct", "q3": "x", "q500": "x"}
    base = {"q0": "x", "q1": "garble", "q2": "x", "q3": "correct", "q500": "x"}
    out = score_against_baseline(qs, cand, base, cfg)
    rows = {r["question_id"]: r for r in out["rows"]}
    assert (
        rows["q0"]["labels"] == ["B>>A", "error"] and rows["q0"]["score"] == 1.0 and rows["q0"]["errors"] == 1
    )
    assert rows["q1"]["labels"] == ["error", "A>>B"] and rows["q1"]["score"] == 1.0
    assert rows["q500"]["labels"] == ["error", "error"] and rows["q500"]["score"] is None
    summary = out["summary"]
    assert summary["errors"] == 4 and summary["label_counts"]["error"] == 4
    assert summary["n_questions"] == 5 and summary["n_scored"] == 4 and summary["unjudged"] == 1
    assert summary["winrate"] == pytest.approx((1.0 + 1.0 + 1.0 + 0.0) / 4)


def test_api_key_is_sent_as_bearer_and_never_returned(cfg, judge, monkeypatch):
    qs = _questions("", 2)
    answers = {q["question_id"]: "a" for q in qs}
    score_against_baseline(qs, answers, answers, cfg)
    assert [r["authorization"] for r in judge[1]] == [None] * 4
    judge[1].clear()
    secret = "sk-test-very-secret-123"
    monkeypatch.setenv("QS_TEST_JUDGE_KEY", secret)
    out = score_against_baseline(qs, answers, answers, cfg)
    assert [r["authorization"] for r in judge[1]] == [f"Bearer {secret}"] * 4
    assert secret not in json.dumps(out) and secret not in repr(cfg)


class FakeLM:
    """A stand-in lm-eval LM: fixed answers per prompt, recording the requests it got."""

    def __init__(self, answer):
        self.answer, self.requests = answer, []

    def generate_until(self, requests):
        self.requests.extend(requests)
        return [self.answer(r.arguments[0]) for r in requests]


def test_evaluate_task_shape_and_baseline_reuse(cfg, tmp_path):
    from cluster.eval.scoring import metric_value

    path = tmp_path / "questions.jsonl"
    lines = [{"question_id": "a1", "prompt": "What is 2+2?"}]
    lines += [{"question_id": f"t{i}", "turns": [{"content": f"Question {i}?"}]} for i in range(3)]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    prompts = load_prompts(str(path), limit=3)
    assert [p["question_id"] for p in prompts] == ["a1", "t0", "t1"] and prompts[1]["prompt"] == "Question 0?"

    base_lm = FakeLM(lambda p: f"an answer to {p}")
    base = evaluate_task(base_lm, "arena_hard", prompts, None, cfg, max_tokens=32)
    assert set(base) == {"results", "samples", "n-samples"}
    assert (
        base["results"]["arena_hard"]["winrate,none"] == 0.5
        and base["results"]["arena_hard"]["judged"] is False
    )
    assert base["n-samples"]["arena_hard"] == {"effective": 3}
    args = base_lm.requests[0].arguments[1]
    assert args["max_gen_toks"] == 32 and args["do_sample"] is False

    reuse = answers_from_samples(base["samples"]["arena_hard"])
    assert reuse == {p["question_id"]: f"an answer to {p['prompt']}" for p in prompts}
    cand = evaluate_task(
        FakeLM(lambda p: f"the correct answer to {p}"), "arena_hard", prompts, reuse, cfg, 32
    )
    res = cand["results"]["arena_hard"]
    assert res["alias"] == "arena_hard" and res["judged"] is True and res["judge_errors,none"] == 0
    assert metric_value(res, "winrate") == ("winrate,none", 1.0, None)
    samples = cand["samples"]["arena_hard"]
    assert [s["doc_id"] for s in samples] == [0, 1, 2]
    assert samples[0]["filtered_resps"] == ["the correct answer to What is 2+2?"]
    assert samples[0]["metrics"] == ["winrate"] and samples[0]["winrate"] == 1.0
    assert samples[0]["labels"] == ["B>>A", "A>>B"]

    with pytest.raises(StageError, match="lack question ids"):
        evaluate_task(FakeLM(str), "arena_hard", prompts, {"a1": "x"}, cfg, 32)
    path.write_text(json.dumps({"prompt": "no id"}) + "\n")
    with pytest.raises(ConfigError, match="question_id"):
        load_prompts(str(path), None)

"""Arena-Hard-style evaluation: greedy answers judged pairwise against a baseline by an LLM judge.

The judge is any OpenAI-compatible server (`POST {base_url}/v1/chat/completions`, real HTTP via
httpx); its API key is read from the env var `JudgeStage.api_key_env` at call time and is never
stored in a config, row or sample. Each question is judged `runs` times with positions alternating
(run 1: A = baseline, B = candidate; run 2: swapped), which cancels a judge's position bias.

Scoring choice: the Bradley-Terry-free *win rate with ties as half*. A verdict for the candidate
(`>>` or `>`) scores 1.0, a tie 0.5, a verdict for the baseline 0.0; strength is kept in the raw
labels but not weighted. A question's score is the mean of its parsed runs; the win rate is the
mean over questions, with a seeded 95 % percentile bootstrap CI over questions. A judgment that
fails (unparseable verdict, HTTP 5xx, timeout) is the label "error": it is counted, left out of
its question's mean, and a question with no parsed run is counted as unjudged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from cluster.config.schema import JudgeStage
from cluster.errors import ConfigError, StageError

LABELS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
ERROR = "error"
# Score of the answer in position B for each label; the answer in A scores 1 - this.
_B_SCORE = {"A>>B": 0.0, "A>B": 0.0, "A=B": 0.5, "B>A": 1.0, "B>>A": 1.0}
_VERDICT = re.compile(r"\[\[\s*([AB]\s*(?:>>|>|=)\s*[AB])\s*\]\]")

SYSTEM_PROMPT = """You are an impartial judge comparing two AI assistants' answers to one user prompt.
First write your own answer to the prompt. Then check both assistants' answers against it: point out
mistakes and inaccurate information, and say which answer is more helpful, relevant and concise, and
what important information either one leaves out. When the prompt is ambiguous, an answer that asks
for clarification beats one built on assumptions. Do not let the order of the answers, their length
or the assistants' names sway you.
End your reply with exactly one verdict label in double brackets, chosen from:
[[A>>B]] Assistant A is significantly better
[[A>B]] Assistant A is slightly better
[[A=B]] tie, relatively the same
[[B>A]] Assistant B is slightly better
[[B>>A]] Assistant B is significantly better"""

USER_TEMPLATE = (
    "<|User Prompt|>\n{question}\n\n"
    "<|The Start of Assistant A's Answer|>\n{answer_a}\n<|The End of Assistant A's Answer|>\n\n"
    "<|The Start of Assistant B's Answer|>\n{answer_b}\n<|The End of Assistant B's Answer|>"
)


def load_prompts(path_or_hub: str, limit: int | None) -> list[dict]:
    """Questions as `{"question_id", "prompt"}` from a local jsonl or a hub dataset (first `limit`)."""
    if Path(path_or_hub).is_file():
        with open(path_or_hub, encoding="utf-8") as fh:
            records = [json.loads(line) for line in fh if line.strip()]
    else:
        from datasets import load_dataset  # heavy; only for the hub case

        records = list(load_dataset(path_or_hub, split="train"))
    out = []
    for i, rec in enumerate(records[: limit or None]):
        prompt = rec.get("prompt") or (rec.get("turns") or [{}])[0].get("content")
        if "question_id" not in rec or not prompt:
            raise ConfigError(
                f"{path_or_hub}: record {i} needs 'question_id' and 'prompt' (or turns[0].content)"
            )
        out.append({"question_id": str(rec["question_id"]), "prompt": str(prompt)})
    return out


def parse_verdict(text: str) -> str:
    """The last `[[X>Y]]`-style label in a judgment, normalised to `LABELS`, else "error"."""
    found = _VERDICT.findall(text or "")
    label = re.sub(r"\s+", "", found[-1]).replace("B=A", "A=B") if found else ERROR
    return label if label in LABELS else ERROR


def make_client(cfg: JudgeStage) -> httpx.Client:
    """An httpx client for the judge, with `Authorization: Bearer` when the key env var is set."""
    key = os.environ.get(cfg.api_key_env)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(headers=headers, timeout=cfg.timeout_s)


def judge_pair(client: httpx.Client, cfg: JudgeStage, question: str, answer_a: str, answer_b: str) -> str:
    """One pairwise judgment: the parsed label, or "error" for a failed call or no verdict."""
    body = {
        "model": cfg.model,
        "temperature": cfg.temperature,
        "max_tokens": cfg.max_tokens,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": USER_TEMPLATE.format(question=question, answer_a=answer_a, answer_b=answer_b),
            },
        ],
    }
    url = (cfg.base_url or "").rstrip("/").removesuffix("/v1") + "/v1/chat/completions"
    try:
        resp = client.post(url, json=body)
    except httpx.HTTPError:
        return ERROR  # timeouts and dropped connections are counted, not fatal
    if resp.status_code in (401, 403, 404):
        # Every later call would fail the same way: a user mistake, not a flaky judgment.
        raise StageError(
            f"judge {cfg.base_url} answered HTTP {resp.status_code} for model '{cfg.model}' "
            f"(check judge.base_url, judge.model and the env var {cfg.api_key_env})"
        )
    try:
        resp.raise_for_status()
        return parse_verdict(resp.json()["choices"][0]["message"]["content"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return ERROR


def candidate_score(label: str, candidate_pos: str) -> float | None:
    """The candidate's score for one label given its position ("A" or "B"); None for "error"."""
    if label not in _B_SCORE:
        return None
    return _B_SCORE[label] if candidate_pos == "B" else 1.0 - _B_SCORE[label]


def bootstrap_ci(values: list[float], n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap CI of the mean, resampling questions (NaNs when empty)."""
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(arr), size=(n_boot, len(arr)))
    means = arr[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def score_against_baseline(
    questions: list[dict],
    candidate_answers: Mapping[str, str],
    baseline_answers: Mapping[str, str],
    cfg: JudgeStage,
) -> dict:
    """Judge every candidate answer against the baseline's: per-question rows and a summary."""
    jobs = []  # (question index, run, candidate position, answer A, answer B)
    for qi, q in enumerate(questions):
        cand, base = candidate_answers[q["question_id"]], baseline_answers[q["question_id"]]
        for run in range(cfg.runs):
            jobs.append((qi, run, "B", base, cand) if run % 2 == 0 else (qi, run, "A", cand, base))
    with make_client(cfg) as client, ThreadPoolExecutor(max(1, cfg.concurrency)) as pool:
        labels = list(
            pool.map(lambda j: judge_pair(client, cfg, questions[j[0]]["prompt"], j[3], j[4]), jobs)
        )
    rows = [
        {"question_id": q["question_id"], "labels": [], "candidate_positions": [], "scores": []}
        for q in questions
    ]
    for (qi, _run, pos, _a, _b), label in zip(jobs, labels, strict=True):
        rows[qi]["labels"].append(label)
        rows[qi]["candidate_positions"].append(pos)
        rows[qi]["scores"].append(candidate_score(label, pos))
    for row in rows:
        parsed = [s for s in row["scores"] if s is not None]
        row["score"] = sum(parsed) / len(parsed) if parsed else None
        row["errors"] = len(row["scores"]) - len(parsed)
    scored = [r["score"] for r in rows if r["score"] is not None]
    ci_low, ci_high = bootstrap_ci(scored)
    summary = {
        "winrate": sum(scored) / len(scored) if scored else math.nan,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "n_questions": len(questions),
        "n_scored": len(scored),
        "unjudged": len(questions) - len(scored),
        "judgments": len(labels),
        "errors": labels.count(ERROR),
        "label_counts": dict(Counter(labels)),
        "judge_model": cfg.model,
        "runs": cfg.runs,
    }
    return {"rows": rows, "summary": summary}


def answers_from_samples(samples: list[dict]) -> dict[str, str]:
    """`question_id -> answer` from an `evaluate_task` result's samples, to reuse as the baseline."""
    return {s["question_id"]: s["filtered_resps"][0] for s in samples}


def evaluate_task(
    lm,
    name: str,
    prompts: list[dict],
    baseline_answers: Mapping[str, str] | None,
    cfg: JudgeStage,
    max_tokens: int = 1024,
) -> dict:
    """Greedy answers from `lm`, judged against `baseline_answers` when given, in lm-eval's shape.

    Without baseline answers this run *is* the baseline: its win rate against itself is 0.5 by
    definition and nothing is judged (`judged` is False).
    """
    from cluster.eval.harness import greedy as generate

    answers = generate(lm, [p["prompt"] for p in prompts], max_tokens)
    by_id = {p["question_id"]: a for p, a in zip(prompts, answers, strict=True)}
    judged = baseline_answers is not None
    rows: dict[str, dict] = {}
    summary = {"winrate": 0.5, "ci_low": None, "ci_high": None, "errors": 0, "unjudged": 0}
    if baseline_answers is not None:
        missing = [qid for qid in by_id if qid not in baseline_answers]
        if missing:
            raise StageError(f"task '{name}': baseline answers lack question ids {missing[:5]}")
        out = score_against_baseline(prompts, by_id, baseline_answers, cfg)
        rows, summary = {r["question_id"]: r for r in out["rows"]}, out["summary"]
    samples = []
    for i, (p, answer) in enumerate(zip(prompts, answers, strict=True)):
        row = rows.get(p["question_id"], {})
        samples.append(
            {
                "doc_id": i,
                "question_id": p["question_id"],
                "prompt_hash": hashlib.sha256(p["prompt"].encode()).hexdigest(),
                "target": "baseline" if judged else None,
                "filtered_resps": [answer],
                "metrics": ["winrate"] if row.get("score") is not None else [],
                "winrate": row.get("score"),
                "labels": row.get("labels", []),
                "judge_errors": row.get("errors", 0),
            }
        )
    result = {
        "alias": name,
        "winrate,none": summary["winrate"],
        "winrate_stderr,none": None,
        "winrate_ci_low,none": summary["ci_low"],
        "winrate_ci_high,none": summary["ci_high"],
        "judge_errors,none": summary["errors"],
        "unjudged,none": summary["unjudged"],
        "judged": judged,
        "judge_model": cfg.model if judged else None,
    }
    n_samples = {name: {"effective": len(prompts)}}
    return {"results": {name: result}, "samples": {name: samples}, "n-samples": n_samples}

"""The generate stage: greedy answers of one checkpoint to the similarity prompts.

The prompts are (`builtin`) a built model's own generation-task questions, or for any other model
the 24 general questions shipped in `cluster/eval/questions.txt` (written for quantsweep), or a
jsonl of `{"prompt": ...}` rows; every checkpoint of a model answers the same ones on its engine session,
and `cluster.stages.similarity` compares each format's answers with the baseline's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cluster.config.schema import SimilarityStage
from cluster.run.env import CellRun
from cluster.stages.common import coords, engine_threads
from cluster.stages.health import UNUSABLE, engine_kwargs, load_on_hosts
from cluster.store.commit import CellResult

QUESTIONS = Path(__file__).resolve().parents[1] / "eval" / "questions.txt"


def prompts(stage: SimilarityStage, include_path: str | None) -> list[str]:
    """The prompts every checkpoint answers: the model's own generation-task questions, or a jsonl."""
    if stage.prompts == "builtin":
        if include_path:  # a built model: its own generation task's questions
            lines = (Path(include_path) / "qs_tiny_gen.jsonl").read_text().splitlines()
            questions = [json.loads(x)["question"] for x in lines if x.strip()]
        else:  # any other model: the shipped general questions
            questions = [x for x in QUESTIONS.read_text(encoding="utf-8").splitlines() if x.strip()]
        out = [f"Question: {q}\nAnswer:" for q in questions]
    else:
        out = [json.loads(x)["prompt"] for x in Path(stage.prompts).read_text().splitlines() if x.strip()]
    return out[: stage.num_prompts]


def run(cr: CellRun) -> CellResult:
    """Greedy generations on the session's hosts."""
    from cluster.eval.harness import greedy
    from cluster.eval.pool import ShardedLM

    health = cr.input_of("health")
    if health["health"] in UNUSABLE:
        return placeholder(cr, "not_measured", f"not measured: unhealthy ({health['health']})")
    loaded = load_on_hosts(cr.session, health["eval_path"], engine_kwargs(cr))
    if not loaded["ok"]:
        raise RuntimeError(f"the checkpoint no longer loads: {loaded['error']}")
    stage = cr.env.sweep.eval.similarity
    ps = prompts(stage, health["prepared"].get("include_path"))
    texts = greedy(ShardedLM(cr.session, report=cr.report), ps, stage.max_tokens)
    rows = [
        _row(cr, i, p, t, stage.max_tokens, health.get("weights", "base"))
        for i, (p, t) in enumerate(zip(ps, texts, strict=True))
    ]
    return CellResult(
        rows={"generations": rows},
        outputs={"n": len(rows)},
        context=cr.context(engine_threads()),
        note=f"{len(rows)} greedy answers",
    )


def _row(cr: CellRun, i: int, prompt: str, text: str, max_tokens: int, weights: str) -> dict[str, Any]:
    return {
        **coords(cr),
        "prompt_id": i,
        "prompt_hash": hashlib.sha256(prompt.encode()).hexdigest()[:16],
        "prompt": prompt,
        "text": text,
        "max_tokens": max_tokens,
        "weights": weights,
    }


def placeholder(cr: CellRun, status: str, reason: str) -> CellResult:
    """No generations; the similarity cells that read them say why."""
    return CellResult(outputs={"n": 0, "reason": reason}, note=reason)

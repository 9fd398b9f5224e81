"""The similarity stage: each format's greedy answers vs the baseline's, prompt by prompt.

ROUGE-1, ROUGE-L, BERTScore F1 and STS on 0-1 (`cluster.eval.textsim`), from the two checkpoints'
committed `generations`. Encoders default to the offline MiniLM (set `bertscore_model: roberta-large`
on a cluster, as the study did).
"""

from __future__ import annotations

from cluster.run.env import CellRun
from cluster.stages.common import coords
from cluster.store.commit import CellResult


def run(cr: CellRun) -> CellResult:
    """Score every prompt's answer pair."""
    from cluster.eval import textsim
    from cluster.store.datasets import rows

    env, c = cr.env, cr.cell
    where = {"sweep": env.sweep.name, "model": c.model}
    mine = sorted(rows(env.out, "generations", **where, format=c.format), key=lambda r: r["prompt_id"])
    base = sorted(
        rows(env.out, "generations", **where, format=env.sweep.baseline), key=lambda r: r["prompt_id"]
    )
    if not mine or not base:
        return placeholder(
            cr,
            "not_measured",
            "not measured: " + ("this format" if not mine else "the baseline") + " has no generations",
        )
    stage = env.sweep.eval.similarity
    scores = textsim.score_pairs([r["text"] for r in base], [r["text"] for r in mine], stage)
    out = [
        {
            **coords(cr),
            "baseline_format": env.sweep.baseline,
            "prompt_id": m["prompt_id"],
            "prompt_hash": m["prompt_hash"],
            "reference": b["text"],
            "candidate": m["text"],
            **sc,
            "max_tokens": stage.max_tokens,
            "sts_model": textsim.sts_model(stage),
            "bertscore_model": textsim.bertscore_model(stage),
        }
        for b, m, sc in zip(base, mine, scores, strict=True)
    ]
    mean = sum(r["rougeL"] for r in out) / len(out)
    return CellResult(
        rows={"similarity": out}, context=cr.context(1), note=f"{len(out)} pairs, ROUGE-L {mean:.3f}"
    )


def placeholder(cr: CellRun, status: str, reason: str) -> CellResult:
    """No pairs to score: the manifest says why (similarity rows are per prompt)."""
    return CellResult(note=reason)

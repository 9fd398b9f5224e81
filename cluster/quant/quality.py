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
    q_top = logp.gather(1, ids)
    b_rest = (1 - b_top.exp().sum(-1)).clamp(min=0)
    q_rest = (1 - q_top.exp().sum(-1)).clamp(min=1e-12)
    kl = (b_top.exp() * (b_top - q_top)).sum(-1)
    kl = kl + torch.where(b_rest > 1e-9, b_rest * (b_rest.clamp(min=1e-12).log() - q_rest.log()), 0.0)
    kl = kl.clamp(min=0)
    nll_q, nll_b = -logp.gather(1, targets[:, None])[:, 0], -base["target_logp"]
    return {
        "kl_mean": float(kl.mean()),
        "kl_p99": float(kl.quantile(0.99)) if len(kl) > 1 else float(kl.max()),
        "top1_agreement": float((logp.argmax(-1) == ids[:, 0]).float().mean()),
        "ppl": math.exp(float(nll_q.mean())),
        "ppl_baseline": math.exp(float(nll_b.mean())),
        "ppl_ratio": math.exp(float(nll_q.mean() - nll_b.mean())),
        "tokens": int(len(targets)),
        "top_k": int(ids.shape[1]),
        "exact": bool(ids.shape[1] >= base["vocab"]),
    }


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


def cached_baseline(
    cache: Path, identity: str, base_path: str, seqs: list[tuple[list[int], list[bool]]], key: str, top_k: int
) -> dict[str, Any]:
    """The baseline's side for (model identity, text set), computed once; written atomically."""
    import os

    import torch

    name = hashlib.sha256(f"{identity}|{key}".encode()).hexdigest()[:20]
    path = cache / f"{name}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    side = baseline(load(base_path), seqs, top_k)
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
        "exact": bool(side["top_ids"].shape[1] >= side["vocab"]),
    }


def measure(
    prepared: dict[str, Any], path: str, is_base: bool, cfg: Any, builder: str | None, cache_root: Path
) -> dict[str, Any]:
    """The gate's figures for the checkpoint at `path` (`prepared`: the prepare stage's outputs)."""
    from transformers import AutoTokenizer

    records = records_for(cfg.texts, builder, cfg.tokens)
    tokenizer = AutoTokenizer.from_pretrained(prepared["path"])
    seqs = encode(tokenizer, records, cfg.tokens, cfg.seq_len)
    key = text_set_key(records, cfg.tokens, cfg.seq_len, cfg.top_k)
    side = cached_baseline(
        cache_root / "quality", prepared["identity"], prepared["path"], seqs, key, cfg.top_k
    )
    if is_base:
        return baseline_figures(side)
    try:
        model = load(path)
    except Exception as e:  # noqa: BLE001 - any failure to load is the verdict, with its words
        return figures_failed(f"transformers cannot load the checkpoint ({type(e).__name__}: {e})", 0)
    return compare(side, model, seqs)

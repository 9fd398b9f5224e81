"""The quality gate's arithmetic: which tokens are scored, KL over a truncated baseline, the verdict."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cluster.errors import ConfigError
from cluster.quant import quality
from cluster.quant.health import verdict
from cluster.quant.quality import Record

pytestmark = pytest.mark.unit


class _Tok:
    """A whitespace tokenizer with a BOS id, enough for encode()."""

    def __init__(self, bos: int | None = 1) -> None:
        self.bos_token_id = bos

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [10 + len(w) for w in text.split()]}


class _Fixed(torch.nn.Module):
    """A 'model' whose next-token logits are a fixed table indexed by the current token."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, x: torch.Tensor):
        return type("Out", (), {"logits": self.table[x]})()


def test_only_completion_tokens_are_scored_and_packing_respects_seq_len():
    recs = [Record("q q", "a"), Record("q", "b b")]
    seqs = quality.encode(_Tok(), recs, tokens=100, seq_len=6)
    # BOS q q a | BOS q b b: predictions of a, b, b are scored
    assert [len(ids) for ids, _ in seqs] == [4, 4]
    assert seqs[0][1] == [False, False, True] and seqs[1][1] == [False, True, True]
    # a token budget stops early
    assert sum(map(sum, (m for _, m in quality.encode(_Tok(), recs * 5, tokens=3, seq_len=64)))) == 3
    # without BOS the first token of a sequence is never a prediction target
    ids, marks = quality.encode(_Tok(bos=None), [Record("", "x y z")], 100, 64)[0]
    assert len(marks) == len(ids) - 1 == 2 and all(marks)


def test_kl_is_exact_with_the_whole_vocabulary_and_a_lower_bound_when_truncated():
    torch.manual_seed(0)
    vocab = 40
    base, other = torch.randn(vocab, vocab) * 2, torch.randn(vocab, vocab) * 2
    seqs = [([1, 5, 7, 9, 3, 2], [True] * 5)]
    full = quality.baseline(_Fixed(base), seqs, top_k=vocab)
    got = quality.compare(full, _Fixed(other), seqs)
    pb = torch.log_softmax(base[[1, 5, 7, 9, 3]], -1)
    pq = torch.log_softmax(other[[1, 5, 7, 9, 3]], -1)
    exact = float((pb.exp() * (pb - pq)).sum(-1).mean())
    assert got["exact"] and got["kl_mean"] == pytest.approx(exact, rel=1e-5)
    agree = float((pb.argmax(-1) == pq.argmax(-1)).float().mean())
    assert got["top1_agreement"] == pytest.approx(agree)
    targets = torch.tensor([5, 7, 9, 3, 2])
    nll = -pq.gather(1, targets[:, None]).mean()
    assert got["ppl"] == pytest.approx(math.exp(float(nll)), rel=1e-5)
    truncated = quality.compare(quality.baseline(_Fixed(base), seqs, top_k=4), _Fixed(other), seqs)
    assert not truncated["exact"] and 0 <= truncated["kl_mean"] <= exact + 1e-6
    same = quality.compare(full, _Fixed(base), seqs)
    assert same["kl_mean"] == pytest.approx(0, abs=1e-6) and same["top1_agreement"] == 1.0


def _engine_rows(logits: torch.Tensor, seqs, k: int):
    """What `EngineHost.prompt_logprobs` returns for a model whose next-token logits are `logits[token]`."""
    rows = []
    for ids, _ in seqs:
        per = []
        for prev, token in zip(ids[:-1], ids[1:], strict=True):
            lp = torch.log_softmax(logits[prev], -1)
            top = lp.topk(k)
            per.append((top.indices.tolist(), top.values.tolist(), float(lp[token])))
        rows.append(per)
    return rows


def test_engine_top_k_sides_give_a_lower_bound_of_kl_and_exact_top1_and_perplexity():
    torch.manual_seed(1)
    vocab = 40
    base, other = torch.randn(vocab, vocab) * 2, torch.randn(vocab, vocab) * 2
    seqs = [([1, 5, 7, 9, 3, 2], [False, True, True, True, True]), ([4, 8, 6], [True, True])]
    exact = quality.compare(quality.baseline(_Fixed(base), seqs, top_k=vocab), _Fixed(other), seqs)
    b_side = quality.engine_side(_engine_rows(base, seqs, 8), seqs)
    assert b_side["targets"].tolist() == [7, 9, 3, 2, 8, 6]  # the marked predictions only
    got = quality.compare_sides(b_side, quality.engine_side(_engine_rows(other, seqs, 8), seqs))
    assert not got["exact"] and got["top_k"] == 8 and got["tokens"] == 6
    assert 0 <= got["kl_mean"] <= exact["kl_mean"] + 1e-6
    assert got["top1_agreement"] == pytest.approx(exact["top1_agreement"])
    assert got["ppl"] == pytest.approx(exact["ppl"], rel=1e-5)
    assert got["ppl_ratio"] == pytest.approx(exact["ppl_ratio"], rel=1e-5)
    whole = quality.compare_sides(
        quality.engine_side(_engine_rows(base, seqs, vocab), seqs),
        quality.engine_side(_engine_rows(other, seqs, vocab), seqs),
    )
    assert whole["kl_mean"] == pytest.approx(exact["kl_mean"], rel=1e-5)  # k = vocabulary: exact again
    same = quality.compare_sides(b_side, quality.engine_side(_engine_rows(base, seqs, 8), seqs))
    assert same["kl_mean"] == pytest.approx(0, abs=1e-6) and same["top1_agreement"] == 1.0
    assert quality.baseline_figures(b_side)["exact"] is False


def test_large_models_are_gated_through_the_engine_after_the_baseline():
    from cluster.config.schema import QualityGate

    gate = QualityGate()
    assert gate.backend_for(8) == "transformers" and gate.backend_for(70) == "vllm"
    assert QualityGate(backend="vllm").backend_for(0.1) == "vllm"
    assert QualityGate(enabled=False).backend_for(70) is None


def test_gate_fails_above_the_threshold_with_the_figures_and_outranks_fallbacks():
    figs = {"kl_mean": 2.5, "top1_agreement": 0.4, "ppl_ratio": 9.0, "tokens": 3000}
    why = quality.gate(figs, 0.5)
    assert why and "KL 2.5" in why and "> 0.5" in why and "40.0%" in why and "3000" in why
    assert quality.gate({**figs, "kl_mean": 0.2}, 0.5) is None
    assert quality.gate(quality.figures_failed("non-finite log-probabilities", 10), 0.5)
    assert verdict([], ["m"], {"ok": True, "text": "x"}, why) == ("quality_failed", why)
    assert verdict(["bits"], [], {"ok": True, "text": "x"}, why)[0] == "config_mismatch"


def test_quality_failed_checkpoints_are_not_evaluated_or_served():
    from cluster.report.guideline import UNUSABLE as REPORT_UNUSABLE
    from cluster.stages.health import UNUSABLE

    assert "quality_failed" in UNUSABLE and "quality_failed" in REPORT_UNUSABLE


def test_held_out_texts(tmp_path):
    built = quality.records_for("builtin", "organism", 50)
    assert len(built) == 50 and all(r.prompt.startswith("Question:") and r.completion for r in built)
    assert built == quality.records_for("builtin", "organism", 50)  # fixed
    shipped = quality.records_for("builtin", None)
    assert len(shipped) > 10 and sum(len(r.completion.split()) for r in shipped) > 1000
    good = tmp_path / "h.jsonl"
    good.write_text(
        json.dumps({"text": "hello"}) + "\n" + json.dumps({"prompt": "Q", "completion": "A"}) + "\n"
    )
    assert quality.read_records(good) == [Record("", "hello"), Record("Q", "A")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ConfigError, match="line 1 has neither"):
        quality.read_records(bad)
    with pytest.raises(ConfigError, match="is not a file"):
        quality.read_records(tmp_path / "missing.txt")


def test_spearman_and_the_correlation_rows():
    from cluster.report.proxies import correlation_rows, spearman

    rho, lo, hi = spearman([1, 2, 3, 4, 5, 6], [10, 9, 8, 7, 6, 5])
    assert rho == pytest.approx(-1) and lo == pytest.approx(-1) and hi == pytest.approx(-1)
    rho, lo, hi = spearman([1, 2, 3, 4, 5, 6, 7, 8], [1, 3, 2, 5, 4, 7, 6, 8])
    assert 0.8 < rho < 1 and lo <= rho <= hi
    assert all(math.isnan(x) for x in spearman([1, 2], [2, 1]))
    trials = [
        {
            "status": "ok",
            "stopped_early": False,
            "proxy_kl": k,
            "proxy_top1": 1 - k,
            "proxy_ppl_ratio": 1 + k,
            "recovery_pct": 100 - 10 * k,
        }
        for k in (0.1, 0.3, 0.2, 0.5)
    ] + [
        {
            "status": "ok",
            "stopped_early": True,
            "proxy_kl": 9.0,
            "proxy_top1": 0.0,
            "proxy_ppl_ratio": 5.0,
            "recovery_pct": None,
        }
    ]
    proxies = [
        {
            "stage": "health",
            "model": "m",
            "format": f,
            "kl_mean": k,
            "top1_agreement": 1 - k,
            "ppl_ratio": 1 + k,
        }
        for f, k in (("a", 0.1), ("b", 0.4), ("c", 0.2), ("base", 0.0))
    ]
    recovery = [
        {
            "model": "m",
            "format": f,
            "suite": "s",
            "baseline_format": "base",
            "status": "measured",
            "recovery_pct": r,
        }
        for f, r in (("a", 99.0), ("b", 90.0), ("c", 97.0), ("base", 100.0))
    ]
    rows = {(r["scope"], r["proxy"]): r for r in correlation_rows(trials, proxies, recovery)}
    assert rows[("tuning trials", "KL vs baseline")]["n"] == 4  # the stopped trial has no recovery
    assert rows[("tuning trials", "KL vs baseline")]["rho"] == pytest.approx(-1)
    assert rows[("tuning trials", "top-1 agreement")]["rho"] == pytest.approx(1)
    ck = rows[("checkpoints on s", "KL vs baseline")]
    assert ck["n"] == 3 and ck["rho"] == pytest.approx(-1) and ck["expected"] == "-"

"""Similarity scoring with the real bundled MiniLM: offline loading, the 0-1 range, ordering, ROUGE by hand."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest

from cluster.config.schema import SimilarityStage
from cluster.eval import textsim as similarity
from cluster.eval.textsim import METRICS, score_pairs, summarize

pytestmark = pytest.mark.integration

CAT = "The cat sat on the mat."
PARAPHRASE = "A cat was sitting on the mat."
UNRELATED = "Quarterly revenue rose by four percent."


def _no_network(*args, **kwargs):
    raise OSError("network access attempted while loading similarity models")


@pytest.fixture(scope="module")
def cfg():
    """The default config, its encoders loaded once with HF_HUB_OFFLINE=1 and sockets refusing to connect."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", _no_network)
        similarity._SCORERS.clear()
        config = SimilarityStage()
        score_pairs([CAT], [PARAPHRASE], config)
    return config


def test_default_models_are_local_and_load_offline(cfg):
    assert Path(similarity.sts_model(cfg), "modules.json").is_file()
    assert similarity.bertscore_model(cfg) == similarity.sts_model(cfg)
    assert similarity.bertscore_layers(cfg) == 6  # MiniLM-L6: its last layer
    kinds = {key[0] for key in similarity._SCORERS}
    assert {"sts", "bertscore", "rouge"} <= kinds


def test_identical_texts_score_one(cfg):
    (row,) = score_pairs([CAT], [CAT], cfg)
    assert set(row) == set(METRICS)
    for metric in METRICS:
        assert row[metric] == pytest.approx(1.0, abs=1e-4), metric


def test_paraphrase_beats_unrelated_on_every_metric(cfg):
    close, far = score_pairs([CAT, CAT], [PARAPHRASE, UNRELATED], cfg)
    for metric in METRICS:
        assert 0.0 <= far[metric] < close[metric] <= 1.0, metric
    assert far["rouge1"] == 0.0 and far["sts"] < 0.3 and close["sts"] > 0.8


def test_rouge_matches_hand_computed_values(cfg):
    simple, reordered = score_pairs(
        ["the cat sat", "the cat sat on the mat"], ["the cat ran", "the mat the cat sat"], cfg
    )
    assert simple["rouge1"] == pytest.approx(2 / 3)
    assert simple["rougeL"] == pytest.approx(2 / 3)
    # 5 of 5 candidate unigrams match, 5 of 6 reference ones: F = 10/11; LCS "the cat sat": F = 6/11.
    assert reordered["rouge1"] == pytest.approx(10 / 11)
    assert reordered["rougeL"] == pytest.approx(6 / 11)


def test_empty_strings(cfg):
    both, ref_empty, cand_empty, blank, normal = score_pairs(
        ["", "", CAT, "  \n", CAT], ["", CAT, "", "", PARAPHRASE], cfg
    )
    assert both == dict.fromkeys(METRICS, 1.0)
    assert blank == dict.fromkeys(METRICS, 1.0)
    assert ref_empty == cand_empty == dict.fromkeys(METRICS, 0.0)
    assert normal["sts"] > 0.8  # the non-empty pair in the same batch is still scored


def test_mismatched_lengths_raise(cfg):
    with pytest.raises(ValueError, match="2 references but 1 candidates"):
        score_pairs([CAT, CAT], [CAT], cfg)


def test_summarize_means():
    rows = [
        {"rouge1": 1.0, "rougeL": 0.5, "bertscore_f1": 0.9, "sts": 0.8},
        {"rouge1": 0.0, "rougeL": 0.25, "bertscore_f1": 0.7, "sts": 0.4},
    ]
    out = summarize(rows)
    assert out["n"] == 2
    assert out["rouge1"] == pytest.approx(0.5)
    assert out["rougeL"] == pytest.approx(0.375)
    assert out["bertscore_f1"] == pytest.approx(0.8)
    assert out["sts"] == pytest.approx(0.6)
    empty = summarize([])
    assert empty["n"] == 0 and all(math.isnan(empty[m]) for m in METRICS)

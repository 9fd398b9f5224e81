"""The tune stage's bookkeeping: per-document values, rung budgets, scores on matching documents."""

from __future__ import annotations

import math

import pytest

from cluster.config.schema import SuiteConfig, TaskSpec, TuneStage
from cluster.eval.docsets import first_docs
from cluster.eval.scoring import docs_from_rows, docs_of, docs_score
from cluster.stages.tune import budgets
from cluster.stages.tunetrial import apply_params

pytestmark = pytest.mark.unit
SUITE = SuiteConfig(
    name="s",
    tasks=[TaskSpec(name="mc", metric="acc"), TaskSpec(name="gen", metric="exact_match,strip")],
)


def test_docs_of_reads_each_tasks_metric_and_only_its_filter():
    out = {
        "samples": {
            "mc": [{"doc_id": 0, "acc": 1.0, "filter": "none"}, {"doc_id": 1, "acc": 0.0, "filter": "none"}],
            "gen": [
                {"doc_id": 0, "exact_match": 1.0, "filter": "strip"},
                {"doc_id": 0, "exact_match": 0.0, "filter": "strict"},
                {"doc_id": 3, "exact_match": 0.0, "filter": "strip"},
            ],
        }
    }
    assert docs_of(out, SUITE) == {"mc": {0: 1.0, 1: 0.0}, "gen": {0: 1.0, 3: 0.0}}


def test_docs_score_is_the_suite_mean_of_task_means_on_the_chosen_documents():
    docs = {"mc": {0: 1.0, 1: 0.0, 2: 1.0, 3: 1.0}, "gen": {0: 1.0, 1: 1.0, 2: 0.0, 3: 0.0}}
    assert docs_score(SUITE, docs) == pytest.approx((75.0 + 50.0) / 2)
    only = {"mc": {0: 0.0, 1: 0.0}, "gen": {0: 0.0, 1: 0.0}}
    assert docs_score(SUITE, docs, only=only) == pytest.approx((50.0 + 100.0) / 2)
    assert math.isnan(docs_score(SUITE, {"mc": {0: 1.0}, "gen": {}}))


def test_rungs_add_only_new_documents_clipped_to_each_task():
    sizes = {"mc": {"mc": 40}, "gen": {"gen": 100}}
    assert first_docs(sizes, 0, 25) == {"mc": list(range(25)), "gen": list(range(25))}
    assert first_docs(sizes, 25, 50) == {"mc": list(range(25, 40)), "gen": list(range(25, 50))}
    assert first_docs(sizes, 50, 100) == {"mc": [], "gen": list(range(50, 100))}
    assert first_docs(sizes, 0, None) == {"mc": list(range(40)), "gen": list(range(100))}


def test_budgets_are_the_rungs_or_one_report_at_the_limit():
    assert budgets(TuneStage(rungs=[25, 50, 100])) == (25, 50, 100)
    assert budgets(TuneStage(limit=30)) == (30,)
    assert budgets(TuneStage()) == (None,)


def test_committed_samples_give_the_same_per_document_values():
    rows = [
        {"task": "mc", "doc_id": 0, "metrics": [("acc", 1.0)]},
        {"task": "mc", "doc_id": 1, "metrics": [("acc", 0.0)]},
        {"task": "gen", "doc_id": 0, "metrics": [("exact_match", 1.0)]},
        {"task": "other", "doc_id": 0, "metrics": [("acc", 1.0)]},
    ]
    assert docs_from_rows(rows, SUITE) == {"mc": {0: 1.0, 1: 0.0}, "gen": {0: 1.0}}


def test_apply_params_sets_dotted_keys_on_a_copy():
    from cluster.config.loader import load_catalog

    recipe = load_catalog().formats["w8a8-int"].recipe
    tuned = apply_params(
        recipe, {"dampening_frac": 0.1, "calibration.num_samples": 16, "smoothquant_strength": None}
    )
    assert (tuned.dampening_frac, tuned.calibration.num_samples, tuned.smoothquant_strength) == (
        0.1,
        16,
        None,
    )
    assert recipe.dampening_frac == 0.01 and recipe.calibration.num_samples == 512


def test_a_search_killed_before_its_first_experiment_state_is_not_restored(tmp_path):
    from ray import tune

    from cluster.stages.tune import restorable

    (tmp_path / "tuner.pkl").write_bytes(b"")  # written when the Tuner starts, before any trial
    assert tune.Tuner.can_restore(str(tmp_path))  # Ray alone would restore it: a search with no trials
    assert not restorable(tmp_path)
    (tmp_path / "experiment_state-2026-12-01_14-10-30.json").write_text("{}")
    assert restorable(tmp_path)


def test_the_proxy_rung_adds_a_rung_and_a_stopped_trial_has_no_recovery():
    from types import SimpleNamespace

    import pandas as pd

    from cluster.stages.tune import _scheduler, _trial_row
    from cluster.stages.tuneproxy import proxy_report, proxy_score

    assert proxy_score({"kl_mean": 0.0}) == 100.0 and proxy_score({"kl_mean": 1.0}) == pytest.approx(
        36.79, 0.01
    )
    assert proxy_score({"kl_mean": float("inf")}) == 0.0
    t = TuneStage(scheduler="asha", proxy="kl", limit=100)
    assert _scheduler(t)._max_t == 2  # the proxy rung, then the full budget
    assert _scheduler(TuneStage(scheduler="asha", rungs=[10, 100]))._max_t == 2
    figs = {"kl_mean": 0.5, "top1_agreement": 0.9, "ppl_ratio": 1.1}
    report = proxy_report(figs, {"key": "k", "rtn_fallback_modules": []}, 3.0)
    assert report["rung"] == 1 and report["budget"] == 0 and report["recovery"] == proxy_score(figs)
    cell = SimpleNamespace(model="m", format="w4a16-int")
    env = SimpleNamespace(sweep=SimpleNamespace(name="s", tune=t))
    cr = SimpleNamespace(env=env, cell=cell)
    stopped = SimpleNamespace(
        metrics={**report, "trial_id": "t1"},
        metrics_dataframe=pd.DataFrame([report]),
        error=None,
        config={},
        path="/x/t1",
    )
    row = _trial_row(cr, stopped, 200)
    assert row["recovery_pct"] is None and row["budget"] == 0 and row["stopped_early"]
    assert row["rung_recovery_pct"] == [] and row["proxy_kl"] == 0.5 and row["proxy_top1"] == 0.9
    full = {**report, "rung": 2, "budget": 200, "recovery": 97.5, "score": 0.9, "baseline_score": 0.92}
    done = SimpleNamespace(
        metrics={**full, "trial_id": "t2"},
        metrics_dataframe=pd.DataFrame([report, full]),
        error=None,
        config={},
        path="/x/t2",
    )
    row = _trial_row(cr, done, 200)
    assert row["recovery_pct"] == 97.5 and row["rung_recovery_pct"] == [97.5] and not row["stopped_early"]


def test_a_prescreen_scores_only_the_lowest_kl_recipes_and_keeps_one_trial_per_recipe(tmp_path):
    from dataclasses import dataclass, field
    from types import SimpleNamespace

    import pandas as pd

    from cluster.config.schema import QualityGate
    from cluster.stages.tune import _trial_row
    from cluster.stages.tuneproxy import prescreen, proxy_report

    @dataclass(frozen=True)
    class Setup:  # TrialSetup's two prescreen fields
        screen: bool = False
        screened: dict = field(default_factory=dict)

    def result(trial, config, metrics, history):
        return SimpleNamespace(
            metrics={**metrics, "trial_id": trial},
            metrics_dataframe=pd.DataFrame(history),
            error=None,
            config=config,
            path=f"/x/{trial}",
        )

    kls = {32: 0.5, 64: 0.1, 128: 0.3, 256: 0.2}
    figures = {
        g: {
            "kl_mean": k,
            "kl_p99": k,
            "top1_agreement": 0.9,
            "ppl": 2.0,
            "ppl_baseline": 2.0,
            "ppl_ratio": 1.0,
            "tokens": 10,
            "top_k": 5,
            "exact": True,
        }
        for g, k in kls.items()
    }
    calls = []

    def fit(setup, path, points):
        calls.append((setup, path, points))
        if setup.screen:  # one report each: the proxy rung, then done
            reports = [
                proxy_report(figures[g], {"key": f"k{g}", "rtn_fallback_modules": []}, 3.0) for g in kls
            ]
            return [result(f"s{g}", {"group_size": g}, r, [r]) for g, r in zip(kls, reports, strict=True)]
        out = []
        for p in points:
            g = p["group_size"]
            done = {
                "rung": 1,
                "budget": 100,
                "recovery": 90.0 + g / 100,
                "score": 0.5,
                "baseline_score": 0.55,
                "artifact_key": f"k{g}",
                "rtn_fallback_modules": [],
                "wall_s": 20.0,
                "proxy": setup.screened[f"k{g}"],
            }
            out.append(result(f"f{g}", p, done, [done]))
        return out

    t = TuneStage(
        scheduler="fifo", proxy="kl", prescreen_keep=0.5, limit=100, space={"group_size": list(kls)}
    )
    env = SimpleNamespace(
        sweep=SimpleNamespace(name="s", tune=t, quantize=SimpleNamespace(quality=QualityGate()))
    )
    cr = SimpleNamespace(
        env=env, cell=SimpleNamespace(model="m", format="w4a16-int"), report=lambda text: None
    )
    results, walls, proxies = prescreen(cr, Setup(), tmp_path, fit)

    (screen, screen_path, none), (scoring, scoring_path, points) = calls
    assert screen.screen and screen_path == tmp_path / "screen" and none is None
    assert points == [{"group_size": 64}, {"group_size": 256}]  # the two lowest KLs, best first
    assert set(scoring.screened) == {"k64", "k256"} and not scoring.screen and scoring_path == tmp_path
    rows = [_trial_row(cr, r, 100) for r in results]
    for row, (trial, wall) in zip(rows, walls, strict=True):
        row.update(trial_id=trial, wall_s=row["wall_s"] + wall)
    by_group = {dict(r["params"])["group_size"]: r for r in rows}
    assert [r["trial_id"] for r in rows] == ["s32", "s64", "s128", "s256"]  # a recipe is one trial
    assert by_group["64"]["recovery_pct"] == 90.64 and by_group["64"]["wall_s"] == 23.0
    assert by_group["64"]["rung_recovery_pct"] == [90.64] and by_group["64"]["proxy_kl"] == 0.1
    for g in ("32", "128"):  # screened out: no recovery, the screen's time only
        assert by_group[g]["recovery_pct"] is None and by_group[g]["stopped_early"]
        assert by_group[g]["rung_recovery_pct"] == [] and by_group[g]["wall_s"] == 3.0
    assert sorted(p["trial_id"] for p in proxies) == ["s128", "s256", "s32", "s64"]

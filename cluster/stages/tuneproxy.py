"""Cheap proxies in tuning: each trial's quality-gate figures, and the proxy rung that stops poor recipes early.

Every trial measures its checkpoint against the baseline with the health check's gate
(`cluster.quant.quality`: KL, top-1 agreement, perplexity ratio on held-out text; the baseline's side
is cached once per model, so a trial pays only its own forward pass) right after quantizing and
before it starts an engine. With `tune.proxy: kl` that measurement is the search's first rung: the
trial reports 100 * exp(-KL) (a rank score in recovery's units, never stored as a recovery), ASHA
compares it with the other trials' at that rung, and a trial it stops never starts an engine or scores
a benchmark document. The figures go into the trial's row and the `proxies` dataset either way, so
how well each proxy ranks recipes by recovery can be measured (`cluster.report.proxies`).

With `tune.prescreen_keep` the proxy screens instead: every recipe is quantized and measured (no
engine), and only the best fraction by KL is scored on the benchmark rungs (under the configured
scheduler), reusing the screen's checkpoints and figures. Async ASHA cannot do that cut at its first
rung: it decides as trials arrive, so the first trials go on whatever their KL.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cluster.run.env import CellRun


def proxy_rung(t: Any) -> bool:
    """Whether the proxy is ASHA's first rung (`tune.proxy: kl` without a prescreen)."""
    return bool(t.proxy == "kl" and t.prescreen_keep is None)


def trial_proxy(setup: Any, key: str) -> dict[str, Any]:
    """The gate's figures for a trial's (compressed) checkpoint; empty when the gate is off."""
    from cluster.quant import quality

    env = setup.env
    cfg = env.sweep.quantize.quality
    if not cfg.enabled:
        return {}
    builder = env.catalog.models[setup.model].builder
    checkpoint = str(Path(setup.artifact_root) / key)
    return quality.measure(setup.prepared, checkpoint, False, cfg, builder, Path(env.root) / "cache")


def proxy_score(figures: dict[str, Any]) -> float:
    """The proxy rung's metric: 100 * exp(-KL), higher is better (0 where the figures failed)."""
    kl = figures.get("kl_mean")
    return 100.0 * math.exp(-kl) if isinstance(kl, float) and math.isfinite(kl) else 0.0


def proxy_report(figures: dict[str, Any], meta: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """The trial's report at the proxy rung (budget 0: no benchmark document scored yet)."""
    return {
        "rung": 1,
        "budget": 0,
        "recovery": proxy_score(figures),
        "score": None,
        "baseline_score": None,
        "artifact_key": meta["key"],
        "rtn_fallback_modules": meta["rtn_fallback_modules"],
        "wall_s": wall_s,
        "proxy": figures,
    }


def proxy_row_of(cr: CellRun, result: Any) -> dict[str, Any] | None:
    """A trial's `proxies` row (None when it measured none)."""
    from cluster.stages.health import proxy_row

    met = result.metrics or {}
    figures = met.get("proxy")
    if not figures:
        return None
    trial = str(met.get("trial_id", Path(result.path).name))
    return proxy_row(cr, {"key": met.get("artifact_key")}, figures, "tune", trial_id=trial)


def prescreen(cr: CellRun, setup: Any, path: Path, fit) -> tuple[list[Any], list[tuple[str, float]], list]:
    """Screen every recipe on the proxy, score the best `tune.prescreen_keep` of them (at least one).

    `fit(setup, path, points)` runs one Tune experiment. Returns one result per recipe (the scoring
    run's for a kept one, the screen's otherwise), each recipe's (trial id, screen seconds to add to a
    kept one's time) and the `proxies` rows.
    """
    from dataclasses import replace

    t = cr.env.sweep.tune
    screened = fit(replace(setup, screen=True), path / "screen", None)
    ok = [r for r in screened if r.error is None and (r.metrics or {}).get("proxy")]
    keep = max(1, round((t.prescreen_keep or 1.0) * len(screened)))
    kept = sorted(ok, key=lambda r: -r.metrics["recovery"])[:keep]  # 100 * exp(-KL)
    cr.report(f"prescreen: the {len(kept)} of {len(screened)} recipes with the lowest KL go on to scoring")
    figures = {r.metrics["artifact_key"]: r.metrics["proxy"] for r in kept}
    scored = fit(replace(setup, screened=figures), path, [dict(r.config) for r in kept]) if kept else []
    by_key = {(r.metrics or {}).get("artifact_key"): r for r in scored}
    kept_ids = {id(r) for r in kept}  # Ray's results compare by value (their data frames too)
    results, walls = [], []
    for r in screened:
        trial = str((r.metrics or {}).get("trial_id", Path(r.path).name))
        key = (r.metrics or {}).get("artifact_key")
        won = by_key.get(key) if id(r) in kept_ids else None
        results.append(won or r)
        walls.append((trial, float(r.metrics.get("wall_s") or 0.0) if won else 0.0))
    return results, walls, [p for p in (proxy_row_of(cr, r) for r in screened) if p]

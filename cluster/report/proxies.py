"""How well the cheap proxies rank recipes by recovery: Spearman's rho with a bootstrap interval.

Two populations, each from one sweep: the tuning trials (recipes of one format that reached the full
budget: their `proxy_*` columns against their recovery) and the sweep's checkpoints (the health
check's `proxies` rows against each suite's `recovery` rows, the baseline left out). KL and the
perplexity ratio should correlate negatively with recovery, top-1 agreement positively; the sign
each is expected to have is in the table, so a reader sees at once whether a proxy ranks recipes
the right way round.
"""

from __future__ import annotations

import math
from typing import Any

PROXIES = (
    ("kl", "KL vs baseline", -1),
    ("top1", "top-1 agreement", 1),
    ("ppl_ratio", "perplexity ratio", -1),
)
REPS, SEED = 2000, 0


def spearman(
    xs: list[float], ys: list[float], reps: int = REPS, seed: int = SEED
) -> tuple[float, float, float]:
    """Spearman's rho and its percentile bootstrap 95% interval (pairs resampled); NaN where undefined."""
    import numpy as np
    from scipy.stats import spearmanr

    x, y = np.asarray(xs, float), np.asarray(ys, float)
    nan = float("nan")
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return nan, nan, nan
    rho = float(spearmanr(x, y).statistic)
    rng, boot = np.random.default_rng(seed), []
    for _ in range(reps):
        i = rng.integers(0, len(x), len(x))
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            boot.append(float(spearmanr(x[i], y[i]).statistic))
    if not boot:
        return rho, nan, nan
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return rho, float(lo), float(hi)


def _finite(*v: Any) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)


def trial_pairs(trials: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """Per proxy: (proxy values, recoveries) of the trials that reached the full budget."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for name, _, _ in PROXIES:
        xs, ys = [], []
        for t in trials:
            x, y = t.get(f"proxy_{name}"), t.get("recovery_pct")
            if t.get("status") == "ok" and not t.get("stopped_early") and _finite(x, y):
                xs.append(float(x or 0.0))  # finite: never None here
                ys.append(float(y or 0.0))
        out[name] = (xs, ys)
    return out


def checkpoint_pairs(proxies: list[dict], recovery: list[dict]) -> dict[tuple[str, str], tuple[list, list]]:
    """Per (suite, proxy): the health-check proxies of each checkpoint against its recovery on the suite."""
    column = {"kl": "kl_mean", "top1": "top1_agreement", "ppl_ratio": "ppl_ratio"}
    by_ckpt = {(p["model"], p["format"]): p for p in proxies if p.get("stage") == "health"}
    out: dict[tuple[str, str], tuple[list, list]] = {}
    for r in recovery:
        p = by_ckpt.get((r["model"], r["format"]))
        if p is None or r["format"] == r.get("baseline_format") or r.get("status") != "measured":
            continue
        for name, _, _ in PROXIES:
            if _finite(p[column[name]], r["recovery_pct"]):
                xs, ys = out.setdefault((r["suite"], name), ([], []))
                xs.append(float(p[column[name]]))
                ys.append(float(r["recovery_pct"]))
    return out


def correlation_rows(trials: list[dict], proxies: list[dict], recovery: list[dict]) -> list[dict[str, Any]]:
    """One row per (population, proxy): n, rho, interval, and the sign a good proxy has."""
    rows = []
    label = {name: (text, sign) for name, text, sign in PROXIES}
    for name, (xs, ys) in trial_pairs(trials).items():
        if xs:
            rows.append(_row("tuning trials", name, xs, ys, label))
    for (suite, name), (xs, ys) in sorted(checkpoint_pairs(proxies, recovery).items()):
        rows.append(_row(f"checkpoints on {suite}", name, xs, ys, label))
    return rows


def _row(scope: str, name: str, xs: list, ys: list, label: dict) -> dict[str, Any]:
    rho, lo, hi = spearman(xs, ys)
    text, sign = label[name]
    return {
        "scope": scope,
        "proxy": text,
        "expected": "-" if sign < 0 else "+",
        "n": len(xs),
        "rho": rho,
        "lo": lo,
        "hi": hi,
    }


def correlation_table(rows: list[dict[str, Any]]) -> Any:
    """The rows as a rich table."""
    from rich.table import Table

    t = Table(title="Proxies vs recovery (Spearman's rho, 95% bootstrap interval over recipes)")
    for col in ("population", "proxy", "good sign", "n", "rho", "95% interval"):
        t.add_column(col)
    for r in rows:
        rho = "-" if math.isnan(r["rho"]) else f"{r['rho']:+.2f}"
        ci = "-" if math.isnan(r["lo"]) else f"{r['lo']:+.2f} to {r['hi']:+.2f}"
        t.add_row(r["scope"], r["proxy"], r["expected"], str(r["n"]), rho, ci)
    return t

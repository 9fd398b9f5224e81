"""The prepare stage: turn a model entry into local weights every later cell can load.

A model names a local checkpoint (`path`, or `model_paths.<name>` in the sweep), a hub id (clusters
with hub access), a GGUF file (converted once per file hash into `<root>/cache` and verified, see
`cluster.models.gguf`) or a builder (`tiny-llama`, `organism`: built here, deterministically, once
per spec into `<root>/cache`). The outputs name the weights, what makes them unique, the local lm-eval
tasks a built model brings, and its calibration text.
"""

from __future__ import annotations

from pathlib import Path

from cluster.run.env import CellRun
from cluster.store.commit import CellResult


def run(cr: CellRun) -> CellResult:
    """Resolve (and build, when needed) the model's weights."""
    env, m = cr.env, cr.cell.model
    cfg = env.catalog.models[m]
    override = env.sweep.model_paths.get(m)
    out: dict[str, str | None]
    if override:
        out = {
            "path": override,
            "identity": f"path:{override}",
            "include_path": None,
            "instruct_source": cfg.instruct_dataset,
        }
    elif cfg.builder in ("tiny-llama", "organism"):
        out = _build(cr, Path(env.root) / "cache")
    elif cfg.gguf:
        out = _convert(cr, Path(env.root) / "cache")
    else:
        path = cfg.path or cfg.hub_id
        out = {
            "path": str(path),
            "identity": f"src:{path}",
            "include_path": None,
            "instruct_source": cfg.instruct_dataset,
        }
    return CellResult(outputs=out, context=cr.context(1), note=f"weights at {out['path']}")


def _build(cr: CellRun, cache: Path) -> dict[str, str | None]:
    from cluster.models import organism, tinymodel

    cfg = cr.env.catalog.models[cr.cell.model]
    if cfg.builder == "tiny-llama":
        assets = tinymodel.build(cache, tinymodel.TinySpec(**cfg.builder_args))
    else:
        assets = organism.build(cache, organism.OrganismSpec(**cfg.builder_args), log=cr.report)
    return {
        "path": str(assets.model_dir),
        "identity": f"tiny:{assets.root.name}",
        "include_path": str(assets.tasks_dir),
        "instruct_source": str(assets.instruct_file),
    }


def _convert(cr: CellRun, cache: Path) -> dict[str, str | None]:
    from cluster.models import gguf

    cfg = cr.env.catalog.models[cr.cell.model]
    model_dir = gguf.convert(cfg.gguf or "", cache, log=cr.report)
    return {
        "path": str(model_dir),
        "identity": f"gguf:{model_dir.parent.name}",
        "include_path": None,
        "instruct_source": cfg.instruct_dataset,
    }


def placeholder(cr: CellRun, status: str, reason: str) -> CellResult:
    """prepare writes no rows."""
    return CellResult(note=reason)

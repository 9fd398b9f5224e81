"""Expand a sweep into cells: (stage, model, format, detail), each with a content hash.

A cell's key hashes everything that determines its output (model source, recipe, stage knobs),
so outputs stored under it are found again on rerun. Cells a target cannot run (FP8 without
fast FP8 kernels, a GPU count the price table lacks) are planned as skipped, with the reason,
rather than silently dropped. Planning imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

from cluster.config import FormatConfig, HardwareConfig, ModelConfig, SweepConfig
from cluster.loader import Catalog

BYTES_PER_PARAM = {"bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5625}  # int4 incl. group scales
HEADROOM = 1.1


@dataclass(frozen=True)
class Cell:
    """One unit of work in a sweep."""

    stage: str
    model: str
    format: str
    detail: str
    key: str
    status: str = "planned"  # or "skipped: <reason>"


def _hash(*parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def device_count(model: ModelConfig, fmt: FormatConfig, hw: HardwareConfig) -> int:
    """Devices one replica needs: the model's table on 80 GB GPUs, else from weight bytes."""
    if hw.kind == "cpu":
        return 1
    if hw.memory_gib >= 80 and fmt.name in model.gpus:
        return model.gpus[fmt.name]
    need = model.params_b * BYTES_PER_PARAM[fmt.requires] * HEADROOM
    return 2 ** max(0, math.ceil(math.log2(max(1.0, need / hw.memory_gib))))


def serve_skip_reason(model: ModelConfig, fmt: FormatConfig, hw: HardwareConfig) -> str:
    """Why a format cannot be load-tested on a target ('' when it can)."""
    if fmt.requires not in hw.capabilities:
        return f"{hw.name} has no fast {fmt.requires} kernels"
    n = device_count(model, fmt, hw)
    if n not in hw.price_per_hour:
        return f"needs {n} x {hw.device}; price table has {sorted(hw.price_per_hour)}"
    return ""


def plan(sweep: SweepConfig, catalog: Catalog) -> list[Cell]:
    """Every cell of the sweep, in the order the stages run."""
    cells: list[Cell] = []
    for m in sweep.models:
        model = catalog.models[m]
        for f in sweep.formats:
            fmt = catalog.formats[f]
            base = (asdict(model), asdict(fmt.recipe))
            cells.append(Cell("quantize", m, f, fmt.recipe.algorithm, _hash("q", base)))
            cells.extend(_eval_cells(sweep, m, f, base))
            cells.extend(_serve_cells(sweep, catalog, model, fmt, base))
        if sweep.tune.enabled:
            t = sweep.tune
            detail = ", ".join(f"{k}={v}" for k, v in t.space.items())
            cells.append(
                Cell("tune", m, t.format, f"{t.suite}: {detail}", _hash("t", asdict(model), asdict(t)))
            )
    return cells


def _eval_cells(sweep: SweepConfig, m: str, f: str, base: tuple) -> list[Cell]:
    if not sweep.eval.enabled:
        return []
    return [Cell("evaluate", m, f, s, _hash("e", base, s, asdict(sweep.eval))) for s in sweep.eval.suites]


def _serve_cells(
    sweep: SweepConfig, catalog: Catalog, model: ModelConfig, fmt: FormatConfig, base: tuple
) -> list[Cell]:
    if not sweep.serve.enabled:
        return []
    cells = []
    for h in sweep.serve.hardware:
        hw = catalog.hardware[h]
        reason = serve_skip_reason(model, fmt, hw)
        n = device_count(model, fmt, hw)
        for u in sweep.serve.use_cases:
            for mode in ("sync", "async"):
                detail = f"{n}x{h} {u} {mode}"
                key = _hash("s", base, h, u, mode, asdict(sweep.serve))
                cells.append(
                    Cell(
                        "serve",
                        model.name,
                        fmt.name,
                        detail,
                        key,
                        f"skipped: {reason}" if reason else "planned",
                    )
                )
    return cells

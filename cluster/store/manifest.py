"""Cell manifests and plan snapshots: what is committed, what failed, what is still to do.

A committed cell leaves `<root>/cells/<key>.json` (written last, in one rename): its coordinates,
run id, status, row counts per dataset, the SHA-256 of every file it published, and the small
outputs later cells read (a checkpoint's path, a health verdict). `run` also leaves the plan it is
working on in `<root>/plans/<sweep>.json`, so `status` can list pending cells of a crashed run.
Statuses: done, skipped (planned as not runnable here; rows say why) and failed / blocked (rows
say why; the next run retries them).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cluster.plan.cells import Cell, Resources
from cluster.store.provenance import write_json_atomically

TERMINAL = ("done", "skipped")  # a rerun does not redo these


def path(root: Path, key: str) -> Path:
    """Where a cell's manifest lives."""
    return Path(root) / "cells" / f"{key}.json"


def read(root: Path, key: str) -> dict[str, Any] | None:
    """A cell's manifest, or None when it never committed."""
    p = path(root, key)
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def is_committed(root: Path, key: str) -> bool:
    """True when the cell committed with a status a rerun keeps (done or skipped)."""
    m = read(root, key)
    return m is not None and m.get("status") in TERMINAL


def cell_dict(cell: Cell) -> dict[str, Any]:
    """A cell as plain JSON data."""
    return asdict(cell)


def cell_from(data: dict[str, Any]) -> Cell:
    """The inverse of cell_dict."""
    return Cell(**{**data, "deps": tuple(data["deps"]), "resources": Resources(**data["resources"])})


def write_plan(root: Path, sweep: str, run_id: str, host: str, cells: list[Cell]) -> Path:
    """Snapshot the plan a run is working on (for `status`)."""
    target = Path(root) / "plans" / f"{sweep}.json"
    write_json_atomically(
        target, {"sweep": sweep, "run_id": run_id, "host": host, "cells": [cell_dict(c) for c in cells]}
    )
    return target


def read_plans(root: Path) -> list[dict[str, Any]]:
    """Every plan snapshot under root (one per sweep run there)."""
    return [json.loads(p.read_text()) for p in sorted((Path(root) / "plans").glob("*.json"))]

"""Commit one finished cell: its rows, files and artifacts become visible, then its manifest.

Everything is first written under `<root>/.staging/<key>/` and flushed; then each dataset file is
moved into its cell's own partition with one `os.replace` (`cluster.store.datasets`), each JSON file
and artifact directory likewise, and the manifest last. A crash before the manifest leaves the cell
uncommitted (a rerun redoes it and replaces its files); readers never see a half-written file.
The executor is the only caller: stages return a `CellResult` and never write results themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.plan.cells import Cell
from cluster.store import datasets, manifest
from cluster.store.provenance import CellContext, Provenance, write_json_atomically, write_text_atomically


@dataclass
class CellResult:
    """What a cell's run returns to the executor."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)  # small JSON values later cells read
    files: dict[str, Any] = field(default_factory=dict)  # path under root -> text, or a JSON-able object
    artifacts: dict[str, str] = field(default_factory=dict)  # path under root -> staged directory
    context: CellContext | None = None
    note: str = ""  # one line for the log


def staging_dir(root: Path, key: str) -> Path:
    """A cell's private staging directory (on the output root's filesystem)."""
    return Path(root) / ".staging" / key


def coords(sweep: str, cell: Cell) -> dict[str, str]:
    """The partition coordinates of a cell's rows."""
    return {
        "sweep": sweep,
        "model": cell.model,
        "format": cell.format,
        "suite": cell.suite,
        "hardware": cell.hardware,
        "use_case": cell.use_case,
        "server": cell.server,
        "stage": cell.stage,
    }


def _move_dir(staged: Path, final: Path) -> None:
    """Put a staged directory at `final`, replacing an older one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, final)


def commit(
    root: Path,
    sweep: str,
    cell: Cell,
    result: CellResult,
    prov: Provenance,
    writes: tuple[str, ...],
    status: str,
    started: float,
    error: str = "",
) -> dict[str, Any]:
    """Publish a cell's result under root and write its manifest; return the manifest."""
    root = Path(root)
    stage = staging_dir(root, cell.key)
    stage.mkdir(parents=True, exist_ok=True)
    ctx = result.context or CellContext(cell.key, "-", 0, "-")
    where = coords(sweep, cell)
    staged: dict[str, Path | None] = {}
    for name in writes:
        rows = result.rows.get(name, [])
        staged[name] = (
            datasets.stage_table(stage, name, datasets.to_table(name, rows, prov, ctx), where)
            if rows
            else None
        )
    checksums = {str(p.relative_to(stage)): datasets.sha256(p) for p in staged.values() if p is not None}
    for name, path in staged.items():
        datasets.publish_table(root, name, where, path)
    for rel, obj in result.files.items():
        write_json_atomically(root / rel, obj) if not isinstance(obj, str) else write_text_atomically(
            root / rel, obj
        )
    for rel, src in result.artifacts.items():
        _move_dir(Path(src), root / rel)
    body = {
        **manifest.cell_dict(cell),
        "status": status,
        "error": error,
        "run_id": prov.run_id,
        "started_at": started,
        "finished_at": time.time(),
        "wall_s": round(time.time() - started, 3),
        "rows": {n: len(result.rows.get(n, [])) for n in writes},
        "checksums": checksums,
        "files": sorted(result.files),
        "artifacts": sorted(result.artifacts),
        "outputs": json.loads(json.dumps(result.outputs, default=str)),
        "context": ctx.columns(),
        "note": result.note,
    }
    write_json_atomically(manifest.path(root, cell.key), body)
    shutil.rmtree(stage, ignore_errors=True)
    return body

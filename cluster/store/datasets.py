"""quantsweep's Arrow datasets: one explicit schema each, one partition per cell, atomic commits.

Every dataset is hive-partitioned by the coordinates that separate its cells
(`cluster.store.schemas.partition_cols`), and a cell's rows are the single file
`<partition>/part-0.parquet`. A commit writes that file under `<root>/.staging/` (same filesystem),
flushes it, and moves it into place with one `os.replace`: a reader sees the previous complete file
or the new complete one, never half of either, and no cell's commit can touch another cell's rows.
A cell with no rows for a dataset removes its old file. `.staging` starts with a dot, so pyarrow's
dataset discovery ignores whatever a crash leaves there.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.store.provenance import CellContext, Provenance
from cluster.store.schemas import CATALOG, partition_cols

FILE = "part-0.parquet"


def _check_rows(name: str, schema: pa.Schema, rows: list[dict[str, Any]]) -> None:
    """Every row must have exactly the schema's columns."""
    expected = set(schema.names)
    for row in rows:
        extra, missing = set(row) - expected, expected - set(row)
        if extra or missing:
            raise ValueError(f"dataset '{name}': extra columns {sorted(extra)}, missing {sorted(missing)}")


def to_table(name: str, rows: list[dict[str, Any]], prov: Provenance, ctx: CellContext) -> pa.Table:
    """Rows plus provenance as a table with the dataset's explicit schema."""
    schema = CATALOG[name]
    full = [{**row, **prov.columns(), **ctx.columns()} for row in rows]
    _check_rows(name, schema, full)
    return pa.Table.from_pylist(full, schema=schema)


def partition_dir(name: str, coords: dict[str, str]) -> Path:
    """`<name>/sweep=…/model=…/…` for the partition these coordinates name."""
    parts = [f"{c}={coords[c]}" for c in partition_cols(name)]
    return Path(name).joinpath(*parts)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def sha256(path: Path) -> str:
    """The file's SHA-256 (hex)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stage_table(staging: Path, name: str, table: pa.Table, coords: dict[str, str]) -> Path:
    """Write a cell's table (partition columns dropped: they are the directory names) under staging."""
    cols = partition_cols(name)
    for c in cols:
        values = set(table.column(c).to_pylist())
        if values - {coords[c]}:
            raise ValueError(f"dataset '{name}': rows for {c}={sorted(values)} in a cell of {c}={coords[c]}")
    path = staging / "datasets" / partition_dir(name, coords) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.drop_columns(list(cols)), path)
    _fsync_file(path)
    return path


def publish_table(root: Path, name: str, coords: dict[str, str], staged: Path | None) -> None:
    """Move a staged file into place in one rename (or remove the old file when the cell has none)."""
    final = Path(root) / "datasets" / partition_dir(name, coords) / FILE
    if staged is None:
        final.unlink(missing_ok=True)
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, final)


def read(
    root: Path | str, name: str, filters: list | None = None, columns: list[str] | None = None
) -> pa.Table:
    """A dataset read back with its explicit schema (an empty table when nothing is committed)."""
    import pyarrow.dataset as pads

    base = Path(root) / "datasets" / name
    schema = CATALOG[name]
    if not base.is_dir():
        return schema.empty_table() if columns is None else schema.empty_table().select(columns)
    part = pads.partitioning(pa.schema([schema.field(c) for c in partition_cols(name)]), flavor="hive")
    ds = pads.dataset(str(base), schema=schema, format="parquet", partitioning=part)
    expr = None
    for column, value in filters or []:
        term = pads.field(column) == value
        expr = term if expr is None else expr & term
    return ds.to_table(filter=expr, columns=columns)


def rows(root: Path | str, name: str, **where: str) -> list[dict[str, Any]]:
    """A dataset's rows (optionally where column == value for each keyword) as dicts."""
    return read(root, name, list(where.items()) or None).to_pylist()

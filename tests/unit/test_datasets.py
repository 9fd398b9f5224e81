"""The schema catalog and per-cell commits: explicit types, provenance, one partition per cell,
atomic replacement, and readers that never see a half-written cell."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.plan.cells import Cell
from cluster.store import datasets, manifest
from cluster.store.commit import CellResult, commit
from cluster.store.provenance import CellContext, Provenance
from cluster.store.schemas import CATALOG, partition_cols

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def _prov() -> Provenance:
    return Provenance(config_hash="abc", git_sha="deadbeef", seed=7, versions={"pyarrow": pa.__version__})


def _row(fmt: str, rec: float | None, suite: str = "tiny") -> dict:
    return {
        "sweep": "s",
        "model": "m",
        "format": fmt,
        "suite": suite,
        "baseline_format": "bf16",
        "score": 50.0,
        "baseline_score": 52.0,
        "recovery_pct": rec,
        "recovery_ci_low": None,
        "recovery_ci_high": None,
        "baseline_ci_low": None,
        "baseline_ci_high": None,
        "chance_score": None,
        "flips_right_to_wrong": 0,
        "flips_wrong_to_right": 0,
        "n_tasks": 2,
        "health": "ok",
        "backend": "vllm",
        "weights": "base",
        "status": "measured",
        "reason": "",
    }


def _commit(root: Path, fmt: str, rec: float | None, suite: str = "tiny", key: str | None = None) -> dict:
    cell = Cell("recovery", "m", fmt, suite, key=key or f"k-{fmt}-{suite}")
    result = CellResult(
        rows={"recovery": [_row(fmt, rec, suite)]}, context=CellContext(cell.key, "float32", 1, "avx2")
    )
    return commit(root, "s", cell, result, _prov(), ("recovery",), "done", time.time())


def test_every_schema_has_keys_provenance_and_the_cell():
    for name, schema in CATALOG.items():
        for col in (
            *partition_cols(name),
            "run_id",
            "created_at",
            "config_hash",
            "git_sha",
            "versions",
            "seed",
            "cell_key",
            "compute_dtype",
            "threads",
            "host",
        ):
            assert col in schema.names, f"{name} lacks {col}"


def test_commit_then_read_back_with_plain_pyarrow(tmp_path):
    m = _commit(tmp_path, "bf16", 100.0)
    _commit(tmp_path, "w4a16-int", None)
    base = tmp_path / "datasets" / "recovery"
    assert (base / "sweep=s" / "model=m" / "format=w4a16-int" / "suite=tiny" / "part-0.parquet").is_file()
    table = pq.read_table(base)
    got = {r["format"]: r for r in table.to_pylist()}
    assert got["bf16"]["recovery_pct"] == 100.0 and got["w4a16-int"]["recovery_pct"] is None
    assert got["bf16"]["git_sha"] == "deadbeef" and dict(got["bf16"]["versions"])["pyarrow"] == pa.__version__
    assert got["bf16"]["cell_key"] == "k-bf16-tiny" and got["bf16"]["compute_dtype"] == "float32"
    file_schema = pq.read_schema(next(base.rglob("*.parquet")))
    assert (
        file_schema.field("recovery_pct").type == pa.float64()
        and file_schema.field("n_tasks").type == pa.int64()
    )
    assert m["status"] == "done" and m["rows"] == {"recovery": 1} and len(m["checksums"]) == 1
    assert manifest.read(tmp_path, "k-bf16-tiny")["run_id"] == m["run_id"]


def test_a_cells_commit_replaces_its_own_rows_and_no_one_elses(tmp_path):
    _commit(tmp_path, "bf16", 100.0, "v1")
    _commit(tmp_path, "w8a8-int", 99.0, "v1")
    _commit(tmp_path, "w8a8-int", 99.5, "v2")
    _commit(tmp_path, "w8a8-int", 98.0, "v1", key="changed-recipe")  # rerun of one cell, new key
    rows = datasets.rows(tmp_path, "recovery")
    assert sorted((r["format"], r["suite"], r["recovery_pct"]) for r in rows) == [
        ("bf16", "v1", 100.0),
        ("w8a8-int", "v1", 98.0),
        ("w8a8-int", "v2", 99.5),
    ]
    assert (
        datasets.rows(tmp_path, "recovery", format="w8a8-int", suite="v1")[0]["cell_key"] == "changed-recipe"
    )


def test_rows_that_do_not_match_the_schema_or_the_cell_are_rejected(tmp_path):
    bad = _row("bf16", 1.0)
    bad["surprise"] = 1
    with pytest.raises(ValueError, match="extra columns \\['surprise'\\]"):
        datasets.to_table("recovery", [bad], _prov(), CellContext("k", "float32", 1, "h"))
    cell = Cell("recovery", "m", "bf16", "tiny", key="k")
    foreign = CellResult(rows={"recovery": [_row("w8a8-int", 1.0)]})
    with pytest.raises(ValueError, match="format="):
        commit(tmp_path, "s", cell, foreign, _prov(), ("recovery",), "done", time.time())
    assert not (tmp_path / "datasets" / "recovery").exists() and manifest.read(tmp_path, "k") is None


def test_nan_is_stored_as_float(tmp_path):
    _commit(tmp_path, "bf16", math.nan)
    (row,) = datasets.rows(tmp_path, "recovery")
    assert math.isnan(row["recovery_pct"])


WRITER = """
import sys, time
from cluster.store import datasets
import pyarrow.parquet as pq
real = pq.write_table
def slow(table, path, **kw):  # write the new cell's file row group by row group, slowly
    with pq.ParquetWriter(path, table.schema) as w:
        for batch in table.to_batches(max_chunksize=50):
            w.write_batch(batch); w.file_handle.flush() if hasattr(w, "file_handle") else None
            print("WRITING", flush=True); time.sleep(0.2)
pq.write_table = slow
sys.path.insert(0, {tests!r})
from test_datasets import _row, _prov
from cluster.plan.cells import Cell
from cluster.store.commit import CellResult, commit
rows = [dict(_row("bf16", 42.0), baseline_format=str(i)) for i in range(2000)]
cell = Cell("recovery", "m", "bf16", "tiny", key="k-new")
commit({root!r}, "s", cell, CellResult(rows={{"recovery": rows}}), _prov(), ("recovery",), "done", time.time())
print("COMMITTED", flush=True)
"""


def test_a_write_killed_mid_file_leaves_every_cell_as_it_was(tmp_path):
    _commit(tmp_path, "bf16", 100.0)
    _commit(tmp_path, "w8a8-int", 99.0)
    before = sorted(
        (r["format"], r["recovery_pct"], r["cell_key"]) for r in datasets.rows(tmp_path, "recovery")
    )
    code = WRITER.format(tests=str(Path(__file__).parent), root=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for _ in range(3):  # let it write part of the new file, then kill it
        assert proc.stdout.readline().strip() == "WRITING"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    staged = list((tmp_path / ".staging").rglob("*.parquet"))
    assert staged, "the killed writer had started its file"
    after = sorted(
        (r["format"], r["recovery_pct"], r["cell_key"]) for r in datasets.rows(tmp_path, "recovery")
    )
    assert after == before
    assert pq.read_table(tmp_path / "datasets" / "recovery").num_rows == 2  # plain pyarrow reads it too
    assert manifest.read(tmp_path, "k-new") is None

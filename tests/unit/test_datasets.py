"""The schema catalog and the Parquet writer: explicit types, provenance, hive partitions."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster import datasets
from cluster.schemas import CATALOG, PARTITION_COLS

pytestmark = pytest.mark.unit


def _prov() -> datasets.Provenance:
    return datasets.Provenance(
        config_hash="abc", git_sha="deadbeef", seed=7, versions={"pyarrow": pa.__version__}
    )


def _recovery_row(fmt: str, rec: float | None) -> dict:
    return {
        "sweep": "s",
        "model": "m",
        "format": fmt,
        "suite": "tiny",
        "baseline_format": "bf16",
        "score": 50.0,
        "baseline_score": 52.0,
        "recovery_pct": rec,
        "recovery_ci_low": None,
        "recovery_ci_high": None,
        "flips_right_to_wrong": 0,
        "flips_wrong_to_right": 0,
        "n_tasks": 2,
        "health": "ok",
    }


def test_every_schema_has_keys_and_provenance():
    for name, schema in CATALOG.items():
        for col in (*PARTITION_COLS, "run_id", "created_at", "config_hash", "git_sha", "versions", "seed"):
            assert col in schema.names, f"{name} lacks {col}"


def test_write_then_read_back_with_plain_pyarrow(tmp_path):
    prov = _prov()
    rows = [_recovery_row("bf16", 100.0), _recovery_row("w4a16-int", None)]
    base = datasets.write(tmp_path, "recovery", rows, prov)
    assert (base / "sweep=s" / "model=m" / "format=w4a16-int").is_dir()
    table = pq.read_table(base)
    assert table.num_rows == 2
    assert set(CATALOG["recovery"].names) <= set(table.column_names)
    got = {r["format"]: r for r in table.to_pylist()}
    assert got["bf16"]["recovery_pct"] == 100.0 and got["w4a16-int"]["recovery_pct"] is None
    assert got["bf16"]["git_sha"] == "deadbeef" and dict(got["bf16"]["versions"])["pyarrow"] == pa.__version__
    file_schema = pq.read_schema(next(base.rglob("*.parquet")))
    assert file_schema.field("recovery_pct").type == pa.float64()
    assert file_schema.field("n_tasks").type == pa.int64()


def test_rerun_replaces_its_partitions_and_keeps_others(tmp_path):
    datasets.write(
        tmp_path, "recovery", [_recovery_row("bf16", 100.0), _recovery_row("w8a8-int", 99.0)], _prov()
    )
    datasets.write(tmp_path, "recovery", [_recovery_row("w8a8-int", 98.0)], _prov())
    rows = datasets.read(tmp_path, "recovery").to_pylist()
    assert sorted((r["format"], r["recovery_pct"]) for r in rows) == [("bf16", 100.0), ("w8a8-int", 98.0)]


def test_rows_that_do_not_match_the_schema_are_rejected(tmp_path):
    bad = _recovery_row("bf16", 1.0)
    bad["surprise"] = 1
    with pytest.raises(ValueError, match="extra columns \\['surprise'\\]"):
        datasets.write(tmp_path, "recovery", [bad], _prov())
    missing = _recovery_row("bf16", 1.0)
    del missing["score"]
    with pytest.raises(ValueError, match="missing \\['score'\\]"):
        datasets.write(tmp_path, "recovery", [missing], _prov())
    assert not (tmp_path / "datasets" / "recovery").exists()


def test_nan_is_stored_as_float(tmp_path):
    datasets.write(tmp_path, "recovery", [_recovery_row("bf16", math.nan)], _prov())
    (row,) = datasets.read(tmp_path, "recovery").to_pylist()
    assert math.isnan(row["recovery_pct"])

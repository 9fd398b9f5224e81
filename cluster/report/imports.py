"""`python -m cluster import`: published or external numbers into the same datasets a run writes.

Three CSV layouts, told apart by their header (README.md, "Imported results", documents them):
per-task scores (a `task` column) -> `eval_scores`, then `recovery` computed from the committed
scores (a ratio of suite averages; no interval without per-document samples); per-request latencies
(a `request_id` column) -> `requests`, summarised into `perf` as the loadtest stage does; summary
latencies (a `mode` column, no `request_id`) -> `perf`. Imported rows get their own sweep name and
carry their source in the `source` provenance column; lines starting with `#` are comments, and
`# source: TEXT` names a file's source. Each partition file is replaced atomically, so importing
the same file twice gives the same datasets. Prices and token counts default to conf/.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import uuid
from pathlib import Path
from typing import Any

from cluster.config.checks import NAME_RE
from cluster.config.loader import REPO_ROOT
from cluster.errors import ConfigError
from cluster.report import importrows as R
from cluster.store import datasets
from cluster.store.provenance import CellContext, Provenance, git_sha
from cluster.store.schemas import partition_cols

Row = dict[str, Any]


def read_csv(path: Path) -> tuple[list[dict[str, str]], str | None]:
    """The file's rows (comment lines skipped) and its `# source:` line, if any."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    source, lines = None, []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#"):
            key, _, value = line.lstrip("# ").partition(":")
            if key.strip().lower() == "source" and value.strip():
                source = value.strip()
            continue
        if line.strip():
            lines.append(line)
    rows = list(csv.DictReader(lines))
    if not rows:
        raise ConfigError(f"{path}: no rows (expected a CSV header and at least one line)")
    return rows, source


def kind_of(path: Path, header: list[str]) -> str:
    """scores | requests | perf, from the header."""
    if "task" in header:
        return "scores"
    if "request_id" in header:
        return "requests"
    if "mode" in header:
        return "perf"
    raise ConfigError(
        f"{path}: cannot tell the layout from the header {header} (need a task, request_id or mode column)"
    )


def _write(root: Path, name: str, rows: list[Row], prov: Any, ctx: CellContext) -> list[dict]:
    """Replace the partitions these rows fall in (one rename each); return the partitions written.

    `prov(source)` gives the provenance of rows from that source (`_source` in each row).
    """
    import pyarrow as pa

    staging = root / ".staging" / f"import-{uuid.uuid4().hex[:8]}"
    parts: dict[tuple, list[Row]] = {}
    for r in rows:
        parts.setdefault(tuple(r[c] for c in partition_cols(name)), []).append(r)
    written = []
    for key, rs in parts.items():
        where = dict(zip(partition_cols(name), key, strict=True))
        by_source: dict[str, list[Row]] = {}
        for r in rs:
            by_source.setdefault(r["_source"], []).append({k: v for k, v in r.items() if k != "_source"})
        table = pa.concat_tables([datasets.to_table(name, v, prov(s), ctx) for s, v in by_source.items()])
        datasets.publish_table(root, name, where, datasets.stage_table(staging, name, table, where))
        written.append(where)
    shutil.rmtree(staging, ignore_errors=True)
    return written


def _own_sweep(root: Path, sweep: str) -> None:
    """Refuse to import into a sweep a run measured (its rows would be rewritten)."""
    for name in ("eval_scores", "perf", "recovery"):
        found = {r["source"] for r in datasets.read(root, name, [("sweep", sweep)], ["source"]).to_pylist()}
        if found & {None, "quantsweep"}:
            raise ConfigError(
                f"sweep '{sweep}' under {root} holds measured rows ({name}); import into its own sweep"
            )


def _catalog() -> Any:
    from cluster.config.loader import load_catalog

    return load_catalog()


def import_files(paths: list[Path], root: Path, sweep: str | None, source: str | None) -> list[str]:
    """Import every file into root's datasets under one sweep; return a line per dataset written."""
    sweep = sweep or f"import-{paths[0].stem.lower().replace('_', '-')}"
    if not NAME_RE.match(sweep):
        raise ConfigError(f"--sweep '{sweep}' must match {NAME_RE.pattern} (it becomes a partition name)")
    _own_sweep(root, sweep)
    catalog, digest = _catalog(), hashlib.sha256()
    rows: dict[str, list[Row]] = {"eval_scores": [], "requests": [], "perf": []}
    for path in paths:
        data, file_source = read_csv(path)
        digest.update(path.read_bytes())
        parsed = R.PARSERS[kind_of(path, list(data[0]))](path, data, sweep, catalog)
        for name, new in parsed.items():
            rows[name] += [{**r, "_source": source or file_source or str(path)} for r in new]
    key = "import-" + digest.hexdigest()[:12]
    made: dict[str, Provenance] = {}

    def prov(src: str) -> Provenance:
        return made.setdefault(
            src, Provenance(key, git_sha(REPO_ROOT), 0, versions={}, run_id=key, source=src)
        )

    ctx, out = CellContext(key, "-", 0, "imported"), []
    for name in ("eval_scores", "requests", "perf"):
        if rows[name]:
            parts = _write(root, name, rows[name], prov, ctx)
            out.append(f"{name}: {len(rows[name])} rows into {len(parts)} partition(s) of sweep {sweep}")
    if rows["eval_scores"]:
        rec = R.recovery_rows(datasets.rows(root, "eval_scores", sweep=sweep), catalog)
        _write(root, "recovery", rec, prov, ctx)
        out.append(f"recovery: {len(rec)} rows computed from the committed eval_scores of sweep {sweep}")
    if rows["perf"]:
        perf = R.with_cost(datasets.rows(root, "perf", sweep=sweep))
        _write(root, "perf", perf, prov, ctx)
        out.append(f"perf: cost-reduction factors filled from the committed perf rows of sweep {sweep}")
    return out + [f"source: {', '.join(made)}; see it with: python -m cluster report {root}"]

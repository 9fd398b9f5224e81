"""What a report reads, loaded once from a run directory's committed datasets.

Nothing here is measured or kept in memory from a run: every number the report shows comes from
these rows. Raw requests are read without their per-chunk times (the SLO needs TTFT, end and token
counts only), grouped by the perf row they belong to. Each SLO's view of `perf` is the rows with
their SLO columns re-judged from those requests (`cluster.report.serving`), so a report may use
other SLOs than the run did. The catalog (conf/) supplies names, families and licenses when known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.config.schema import ReportConfig, SloConfig
from cluster.report import serving
from serve.config import RAY_SERVE, VLLM_SERVE
from serve.records import RequestRecord

Row = dict[str, Any]
RunKey = tuple[str, str, str, str, str, str, str, str, float | None]
NONE = SloConfig(name="none", ttft_ms=None, tpot_ms=None)  # the study's view: latency unconstrained
_REQUEST_COLUMNS = [
    "sweep",
    "model",
    "format",
    "hardware",
    "use_case",
    "server",
    "mode",
    "profile",
    "target_rate",
    "request_id",
    "send_time",
    "first_token_s",
    "end_s",
    "prompt_tokens",
    "output_tokens",
    "status",
    "error",
    "warmup",
]
_SIMILARITY_COLUMNS = ["sweep", "model", "format", "rouge1", "rougeL", "bertscore_f1", "sts"]


def run_key(row: Row) -> RunKey:
    """The run a perf or request row belongs to."""
    rate = row.get("target_rate")
    rate = None if rate is None or (isinstance(rate, float) and math.isnan(rate)) else round(float(rate), 9)
    keys = ("sweep", "model", "format", "hardware", "use_case", "mode", "profile")
    return (*(row[k] for k in keys), row.get("server") or RAY_SERVE, rate)  # type: ignore[return-value]


def cell_key(row: Row) -> tuple[str, ...]:
    """The loadtest cell a perf row belongs to."""
    cell = tuple(row[k] for k in ("sweep", "model", "format", "hardware", "use_case"))
    return (*cell, row.get("server") or RAY_SERVE)


@dataclass
class RunData:
    """The datasets of one run directory (every sweep in it)."""

    root: Path
    perf: list[Row]  # Ray Serve's (and imported) rows: what the report judges formats by
    recovery: list[Row]
    scores: list[Row]
    quantized: list[Row]
    similarity: list[Row]
    trials: list[Row]
    requests: dict[RunKey, list[RequestRecord]]
    catalog: Any = None  # cluster.config.loader.Catalog, when conf/ loads
    bare: list[Row] = field(default_factory=list)  # bare `vllm serve` rows (serve.bare_baseline)
    _judged: dict[str, list[Row]] = field(default_factory=dict)

    @property
    def sweeps(self) -> list[str]:
        """Every sweep with rows in any dataset read."""
        rows = self.perf + self.recovery + self.scores + self.quantized
        return sorted({r["sweep"] for r in rows})

    def empty(self) -> bool:
        """True when the run directory has nothing to report."""
        return not (self.perf or self.recovery or self.scores or self.quantized)

    def records_of(self, row: Row) -> list[RequestRecord] | None:
        """The raw requests of a perf row's run (None when none were committed, e.g. imported summaries)."""
        return self.requests.get(run_key(row))

    def judged(self, slo: SloConfig) -> list[Row]:
        """The perf rows with their SLO columns judged against `slo` (cached per SLO name)."""
        if slo.name not in self._judged:
            cells: dict[tuple, list[Row]] = {}
            for r in self.perf:
                cells.setdefault(cell_key(r), []).append(dict(r))
            out = []
            for rows in cells.values():
                cols = serving.slo_columns(rows, [self.records_of(r) for r in rows], slo)
                out += [{**r, **c} for r, c in zip(rows, cols, strict=True)]
            self._judged[slo.name] = out
        return self._judged[slo.name]

    def family(self, model: str) -> str:
        """A model's family (conf/), else its own name."""
        m = self.catalog.models.get(model) if self.catalog else None
        return m.family if m and m.family else model

    @property
    def colours(self) -> dict[str, str]:
        """One colour per format of the whole run, so a format looks the same in every figure."""
        from cluster.report.style import colours

        return colours([r["format"] for r in self.perf + self.recovery])

    def format_label(self, fmt: str) -> str:
        """The paper's name of a format (conf/ or the quantized rows), else its key."""
        f = self.catalog.formats.get(fmt) if self.catalog else None
        if f:
            return f.label
        return next((r["label"] for r in self.quantized if r["format"] == fmt), fmt)

    def use_case_label(self, uc: str) -> str:
        """A use case's label (conf/), else its key."""
        u = self.catalog.use_cases.get(uc) if self.catalog else None
        return u.label if u else uc


def slos(cfg: ReportConfig) -> list[SloConfig]:
    """Every SLO the report answers for: unconstrained first, then the configured ones."""
    return [NONE, cfg.slo, *cfg.slos]


def _records(root: Path) -> dict[RunKey, list[RequestRecord]]:
    from cluster.store.datasets import read

    out: dict[RunKey, list[RequestRecord]] = {}
    for r in read(root, "requests", columns=_REQUEST_COLUMNS).to_pylist():
        rec = RequestRecord(
            r["request_id"],
            r["profile"],
            r["target_rate"],
            r["send_time"],
            r["first_token_s"],
            [],
            r["end_s"],
            r["prompt_tokens"],
            r["output_tokens"],
            r["status"],
            r["error"],
            r["warmup"],
        )
        out.setdefault(run_key(r), []).append(rec)
    return out


def _catalog() -> Any:
    from cluster.config.loader import load_catalog
    from cluster.errors import QuantsweepError

    try:
        return load_catalog()
    except QuantsweepError:
        return None  # the report still works on bare datasets


def load(root: Path | str) -> RunData:
    """Read every dataset the report uses from a run directory."""
    from cluster.store.datasets import read, rows

    root = Path(root)
    perf = rows(root, "perf")
    return RunData(
        root=root,
        perf=[r for r in perf if r.get("server") != VLLM_SERVE],
        bare=[r for r in perf if r.get("server") == VLLM_SERVE],
        recovery=rows(root, "recovery"),
        scores=rows(root, "eval_scores"),
        quantized=rows(root, "quantized"),
        similarity=read(root, "similarity", columns=_SIMILARITY_COLUMNS).to_pylist(),
        trials=rows(root, "trials"),
        requests=_records(root),
        catalog=_catalog(),
    )

"""What every cell of a run reads: the sweep, the catalog, the output root, the host, provenance.

`RunEnv` is frozen and small, so it travels to every Ray task and actor as is; `CellRun` adds one
cell, the outputs of the cells it depends on, and its session (engine hosts, or Serve URLs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.config.schema import Catalog, SweepConfig
from cluster.plan.cells import Cell
from cluster.store.provenance import CellContext, Provenance
from serve import engine as engine_spec
from serve.host import HostProfile


@dataclass(frozen=True)
class RunEnv:
    """The run's shared, read-only facts."""

    sweep: SweepConfig
    catalog: Catalog
    root: str
    host: HostProfile
    prov: Provenance
    gpu: bool  # the GPU build of vLLM runs the engines (clusters); else the CPU build, one core each

    @property
    def out(self) -> Path:
        return Path(self.root)

    def dtype(self) -> str:
        """The compute dtype of this run's engines and quantization."""
        return engine_spec.dtype(self.sweep.engine, self.host)


@dataclass
class CellRun:
    """One cell as its run function sees it."""

    cell: Cell
    env: RunEnv
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # dep key -> its manifest
    session: Any = None
    progress: Any = None  # the progress board actor (cluster.run.progress)

    def input_of(self, stage: str, fmt: str | None = None) -> dict[str, Any]:
        """The manifest outputs of this cell's dependency from `stage` (and format, when given)."""
        for m in self.inputs.values():
            if m["stage"] == stage and (fmt is None or m["format"] == fmt):
                return m.get("outputs") or {}
        raise KeyError(f"{self.cell.label}: no {stage} {fmt or ''} input among {list(self.inputs)}")

    def context(self, threads: int) -> CellContext:
        """The provenance columns of the rows this cell writes."""
        return CellContext(self.cell.key, self.env.dtype(), threads, self.env.host.describe())

    def report(self, text: str) -> None:
        """Show `text` as this cell's current step (fire and forget)."""
        if self.progress is not None:
            self.progress.set.remote(self.cell.key, text)

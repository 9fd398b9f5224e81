"""What the stages share: the coordinates every row starts with, and a cell's torch threads."""

from __future__ import annotations

from typing import Any

from cluster.run.env import CellRun


def coords(cr: CellRun, *extra: str) -> dict[str, Any]:
    """sweep/model/format (plus the cell's suite, hardware, use case when asked) for a row."""
    c = cr.cell
    row: dict[str, Any] = {"sweep": cr.env.sweep.name, "model": c.model, "format": c.format}
    for name in extra:
        row[name] = getattr(c, name)
    return row


def torch_threads(cr: CellRun) -> int:
    """Set and return torch's intra-op threads for this cell: the config's, else its CPUs (>= 1)."""
    import torch

    q = cr.env.sweep.quantize.threads
    n = q or max(1, int(round(cr.cell.resources.cpus)))
    torch.set_num_threads(n)
    return n


def engine_threads() -> int:
    """Threads one engine host computes with (one core on CPU)."""
    return 1

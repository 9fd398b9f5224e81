"""One colour per format, the same in every figure of a report."""

from __future__ import annotations

PALETTE = ("#4c4c4c", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
ORDER = ("bf16", "w8a8-fp", "w8a8-int", "w4a16-int")  # the study's formats first, in its order


def colours(formats: list[str]) -> dict[str, str]:
    """A colour per format (pass every format the run has)."""
    ranked = sorted(set(formats), key=lambda f: (ORDER.index(f) if f in ORDER else len(ORDER), f))
    return {f: PALETTE[i % len(PALETTE)] for i, f in enumerate(ranked)}

"""The report's figures (matplotlib, Agg): each drawn from dataset rows, saved as a PNG beside the page
and embedded in it, so the HTML is self-contained and the files can go into slides.

Figures: recovery per suite with its 95 % interval and the floor; inter-token latency and TTFT
against achieved QPS per format (the study's latency-constrained view; filled markers meet the SLO);
single-stream latency and queries per dollar per use case; the accuracy x cost Pareto frontiers.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.config.schema import ReportConfig
from cluster.report.data import RunData
from cluster.report.pareto import Point
from cluster.report.style import colours  # noqa: F401 - re-exported for the sections

Row = dict[str, Any]


@dataclass(frozen=True)
class FigureRef:
    """A saved figure: its file (relative to the report), the embedded data URI and a caption."""

    name: str
    path: str
    data_uri: str
    caption: str


class Figures:
    """Saves figures under `<out>/figures/` and remembers them for the page."""

    def __init__(self, out: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        self.dir = out / "figures"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.saved: list[FigureRef] = []

    def save(self, fig: Any, name: str, caption: str) -> FigureRef:
        """Write the figure as PNG (atomically) and return its reference."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name) + ".png"
        tmp = self.dir / f".{safe}.tmp"  # written beside, then renamed: never half a file
        tmp.write_bytes(buf.getvalue())
        tmp.replace(self.dir / safe)
        uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        ref = FigureRef(name, f"figures/{safe}", uri, caption)
        self.saved.append(ref)
        return ref


def _axes(ncols: int = 1, width: float = 6.4, height: float = 3.6) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    # fixed margins: a layout engine would cost a whole extra draw per figure
    fig.subplots_adjust(left=0.6 / (width * ncols) + 0.06, right=0.98, top=0.86, bottom=0.24, wspace=0.28)
    return fig, ax[0]


def recovery(data: RunData, rows: list[Row], cfg: ReportConfig, title: str) -> Any:
    """Recovery % per suite (groups) and format (points) with 95 % CI whiskers and the floor dashed.

    A format without a number shows 'n/a'.
    """
    suites = sorted({r["suite"] for r in rows})
    formats = sorted({r["format"] for r in rows}, key=lambda f: (f != rows[0]["baseline_format"], f))
    col, (fig, (ax,)) = data.colours, _axes(width=max(6.4, 0.5 * len(suites) * len(formats)))
    step = 0.8 / len(formats)
    values = [r["recovery_pct"] for r in rows if r["recovery_pct"] is not None] + [cfg.recovery_floor, 100.0]
    low = min(values + [r["recovery_ci_low"] for r in rows if r["recovery_ci_low"] is not None])
    for i, f in enumerate(formats):
        for j, s in enumerate(suites):
            r = next((r for r in rows if (r["format"], r["suite"]) == (f, s)), None)
            x = j + (i - (len(formats) - 1) / 2) * step
            label = data.format_label(f) if j == 0 else None
            if r is None or r["recovery_pct"] is None:
                ax.text(x, low, "n/a", ha="center", va="bottom", fontsize=7, color=col.get(f, "black"))
                ax.plot([], [], "s", color=col.get(f, "black"), label=label)
                continue
            lo, hi = r["recovery_ci_low"], r["recovery_ci_high"]
            err = (
                [[r["recovery_pct"] - lo], [hi - r["recovery_pct"]]]
                if lo is not None and hi is not None
                else None
            )
            ax.errorbar(
                x, r["recovery_pct"], yerr=err, fmt="o", color=col.get(f, "black"), capsize=3, label=label
            )
    ax.axhline(cfg.recovery_floor, ls="--", color="black", lw=1, label=f"floor {cfg.recovery_floor:g}%")
    ax.axhline(100.0, ls=":", color="grey", lw=0.8)
    ax.set_xticks(range(len(suites)), suites)
    ax.set_xlim(-0.6, len(suites) - 0.4)
    ax.set_ylabel("recovery vs baseline (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return fig


def _async_points(rows: list[Row], fmt: str) -> list[Row]:
    """A format's measured asynchronous runs, by achieved throughput."""
    pts = [r for r in rows if r["format"] == fmt and r["mode"] == "async" and r["status"] == "measured"]
    return sorted(
        (r for r in pts if r["request_throughput"] is not None), key=lambda r: r["request_throughput"]
    )


def latency_vs_qps(data: RunData, rows: list[Row], cfg: ReportConfig, title: str, formats: list[str]) -> Any:
    """ITL, TTFT and goodput against achieved req/s per format; filled markers meet the SLO."""
    fig, axes = _axes(ncols=3, width=4.4)
    col = data.colours
    keys = ("mean_itl_ms", "mean_ttft_ms", "goodput_rps")
    for f in formats:
        pts = _async_points(rows, f)
        x = [r["request_throughput"] for r in pts]
        for ax, key in zip(axes, keys, strict=True):
            if not any(r[key] is not None for r in pts):
                continue
            ax.plot(x, [r[key] for r in pts], "-", color=col[f], lw=1.2, label=data.format_label(f))
            for r in pts:
                ax.plot(
                    r["request_throughput"],
                    r[key],
                    "o",
                    color=col[f],
                    mfc=col[f] if r["slo_met"] else "white",
                )
    bounds = (("ITL (ms, mean)", cfg.slo.tpot_ms, "TPOT"), ("TTFT (ms, mean)", cfg.slo.ttft_ms, "TTFT"))
    for ax, (label, bound, name) in zip(axes, bounds, strict=False):
        if bound is not None:
            ax.axhline(bound, ls="--", color="black", lw=0.8, label=f"{name} bound (p{cfg.slo.percentile:g})")
        ax.set_ylabel(label)
        ax.set_yscale("log")
    top = max([r["request_throughput"] for r in rows if r["request_throughput"] is not None] or [1.0])
    axes[2].plot([0, top], [0, top], ":", color="grey", lw=0.8, label="every request good")
    axes[2].set_ylabel(f"goodput, req/s within SLO '{cfg.slo.name}'")
    for ax in axes:
        ax.set_xlim(left=0)  # throughput from zero: one run per format must not look like a wide spread
        ax.set_xlabel("achieved requests/s")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def bars(
    data: RunData, rows: list[Row], key: str, ylabel: str, title: str, formats: list[str], scale: float = 1.0
) -> Any:
    """Grouped bars: `key` per use case (groups) and format (bars); 'n/a' where a format has no number."""
    ucs = sorted({r["use_case"] for r in rows})
    col, (fig, (ax,)) = data.colours, _axes(width=max(6.4, 0.9 * len(ucs) * len(formats) / 2))
    from matplotlib.patches import Patch

    width, handles = 0.8 / max(1, len(formats)), []
    for i, f in enumerate(formats):
        values = [
            next((r.get(key) for r in rows if (r["format"], r["use_case"]) == (f, uc)), None) for uc in ucs
        ]
        some = any(v is not None for v in values)
        label = data.format_label(f) + ("" if some else ": n/a")
        handles.append(Patch(facecolor=col[f] if some else "white", edgecolor=col[f], label=label))
        for j, value in enumerate(values):
            x = j + (i - (len(formats) - 1) / 2) * width
            if value is None:
                ax.text(x, 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color=col[f])
            else:
                ax.bar(x, value * scale, width, color=col[f])
    ax.set_xticks(range(len(ucs)), [data.use_case_label(u) for u in ucs], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.set_ylim(top=ax.get_ylim()[1] * 1.3)  # headroom: the legend sits above the bars
    ax.legend(handles=handles, fontsize=7, loc="upper left", ncol=min(3, len(handles)))
    return fig


def pareto(data: RunData, pts: list[Point], by: str, title: str) -> Any:
    """Recovery against cost; the frontier joined, dominated points hollow and labelled so."""
    fig, (ax,) = _axes(width=5.6, height=4.0)
    xs = {p: getattr(p, by) for p in pts}
    front = sorted((p for p in pts if not p.dominated), key=lambda p: xs[p])
    ax.plot([xs[p] for p in front], [p.recovery for p in front], "-", color="#1f77b4", lw=1, label="frontier")
    from matplotlib.ticker import FuncFormatter

    mid = (min(xs.values()) + max(xs.values())) / 2
    for k, p in enumerate(sorted(pts, key=lambda p: xs[p])):
        ax.plot(xs[p], p.recovery, "o", color="#1f77b4", mfc="white" if p.dominated else "#1f77b4")
        tag = f"{p.model} {data.format_label(p.fmt)}" + (" (dominated)" if p.dominated else "")
        right = (
            xs[p] > mid
        )  # label towards the middle, alternately above and below: no clipping, less overlap
        offset = (-5 if right else 5, 6 if k % 2 == 0 else -11)
        ax.annotate(
            tag,
            (xs[p], p.recovery),
            fontsize=7,
            xytext=offset,
            textcoords="offset points",
            ha="right" if right else "left",
        )
    if by == "queries_per_dollar":
        ax.xaxis.set_major_formatter(
            FuncFormatter(lambda v, _: f"{v / 1000:,.0f}k" if v >= 10_000 else f"{v:,.0f}")
        )
        ax.set_xlabel("queries per dollar (mean over use cases)")
    else:
        ax.set_xlabel("single-stream latency, s (mean over use cases; less is better)")
    ax.margins(x=0.15, y=0.2)
    ax.set_ylabel("recovery (%), lowest over suites")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return fig

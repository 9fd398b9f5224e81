"""HTML building blocks for the report: escaped tables, figures, sections and the page itself.

The page is one file with its figures embedded as data URIs and its style inline: no script, no
font or stylesheet fetched, so it opens anywhere (a mail attachment, an air-gapped cluster) and a
browser logs nothing while loading it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

from cluster.report.figures import FigureRef

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.muted td{color:#888}tr.bad td{background:#fff3f3}tr.good td{background:#f2fbf2}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.8em;color:#555}
.note{color:#555;font-size:.9em}code{background:#f5f5f5;padding:0 3px}details{margin:.4em 0}
nav a{margin-right:1em}
"""


def esc(value: Any) -> str:
    """A cell value as escaped text ('-' for missing numbers)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return html.escape(str(value))


def num(value: Any, fmt: str = "{:,.2f}") -> str:
    """A number formatted, or '-' when missing."""
    if value is None or (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
        return "-" if value is None or math.isnan(value) else "inf"
    return fmt.format(value)


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    numeric: Iterable[int] = (),
    row_classes: Sequence[str] | None = None,
) -> str:
    """An HTML table; cells are escaped text (pass pre-formatted strings for numbers)."""
    right = set(numeric)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(
            f'<td class="num">{esc(c)}</td>' if j in right else f"<td>{esc(c)}</td>"
            for j, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    if not body:
        return '<p class="note">(no rows)</p>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(ref: FigureRef) -> str:
    """An embedded figure with its caption and a link to the PNG beside the page."""
    alt = esc(ref.caption)
    return (
        f'<figure><img src="{ref.data_uri}" alt="{alt}"><figcaption>{alt} '
        f'(<a href="{esc(ref.path)}">PNG</a>)</figcaption></figure>'
    )


def para(text: str, cls: str = "note") -> str:
    """A paragraph of escaped text."""
    return f'<p class="{cls}">{esc(text)}</p>'


def details(summary: str, body: str) -> str:
    """A collapsed block."""
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"


def section(anchor: str, title: str, blocks: Sequence[str], level: int = 2) -> str:
    """A titled section."""
    return f'<section id="{esc(anchor)}"><h{level}>{esc(title)}</h{level}>{"".join(blocks)}</section>'


def page(title: str, intro: Sequence[str], sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document: title, a table of contents, then the (anchor, title, html) sections."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(s for _, _, s in sections)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{''.join(intro)}<nav>{nav}</nav>{body}"
        f"</body></html>"
    )

"""The one writer of techbench's HTML pages (``techbench report`` and ``techbench probe``).

A page is self-contained: PNGs embedded as base64, CSS and the table-sorting script inline, no
external request, so it can be mailed or archived as one file. Every string that reaches the
page goes through :func:`html.escape` (technique names, summaries, parameters and errors come
from plugins and must render as text); block helpers return already-escaped HTML. The file is
written atomically (a temp file in the same folder, then :func:`os.replace`), so a reader never
sees a half-written page and an interrupted build leaves the previous page in place.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 2em 3em;color:#222}
header{border-bottom:2px solid #446;margin-bottom:1em}
h1{margin:.6em 0 .2em}h2{border-bottom:1px solid #ccd;padding-top:.6em}
nav a{margin-right:1em}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.2em 1em;font-size:90%}
dl.meta dt{font-weight:600}dl.meta dd{margin:0}
.warn{background:#fff4d6;border-left:4px solid #e0a800;padding:.5em .8em;margin:.6em 0}
.note{color:#555;font-size:90%}
table.sortable{border-collapse:collapse;font-size:80%;margin:.5em 0}
table.sortable th,table.sortable td{border:1px solid #ddd;padding:2px 6px;text-align:right}
table.sortable th{background:#eef;cursor:pointer;position:sticky;top:0}
table.sortable td.s,table.sortable th.s{text-align:left}
.scroll{max-height:480px;overflow:auto;display:inline-block;max-width:100%}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}
figure{margin:0 0 1em}figcaption{font-size:90%;color:#444}
"""
JS = """
document.querySelectorAll('table.sortable th').forEach(function(th){
 th.addEventListener('click',function(){
  var t=th.closest('table'),b=t.tBodies[0],i=th.cellIndex,a=th.dataset.dir!=='asc';
  t.querySelectorAll('th').forEach(function(h){h.dataset.dir=''});th.dataset.dir=a?'asc':'desc';
  var r=Array.from(b.rows),k=function(x){var c=x.cells[i],v=c.dataset.v;
   return v!==undefined?parseFloat(v):c.textContent.toLowerCase()};
  r.sort(function(x,y){var p=k(x),q=k(y);if(p===q)return 0;
   if(typeof p==='number'&&isNaN(p))return 1;if(typeof q==='number'&&isNaN(q))return -1;
   return (p<q?-1:1)*(a?1:-1)});
  r.forEach(function(x){b.appendChild(x)});});});
"""

PageSection = tuple[str, str, Sequence[str]]
"""``(anchor, heading, blocks)``: one ``<section>`` of a page; blocks are escaped HTML."""


def esc(value: object) -> str:
    """``str(value)`` as HTML text, quotes included (safe in attributes too)."""
    return html.escape(str(value), quote=True)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return f'<td class="s">{"yes" if value else "no"}</td>'
    if isinstance(value, int | float):
        v = float(value)
        if math.isnan(v):
            return '<td data-v="NaN">–</td>'
        if math.isinf(v):
            return (
                f'<td data-v="{"Infinity" if v > 0 else "-Infinity"}">{"∞" if v > 0 else "-∞"}</td>'
            )
        text = f"{int(v)}" if v.is_integer() and abs(v) < 1e12 else f"{v:.4g}"
        return f'<td data-v="{v!r}">{text}</td>'
    if value is None:
        return '<td class="s"></td>'
    return f'<td class="s">{esc(value)}</td>'


def _py(v: object) -> object:
    if hasattr(v, "item") and not isinstance(v, str):
        try:
            return v.item()
        except (ValueError, AttributeError):
            return v
    return v


def table(df: pd.DataFrame, *, max_rows: int = 300, csv_name: str | None = None) -> str:
    """A sortable table (first ``max_rows`` rows) with a note pointing at the full CSV."""
    from pandas.api.types import is_numeric_dtype

    if df is None or df.empty:
        return '<p class="note">(no rows)</p>'
    head = "".join(
        f'<th class="{"" if is_numeric_dtype(df[c]) else "s"}">{esc(c)}</th>' for c in df.columns
    )
    body = []
    for row in df.head(max_rows).itertuples(index=False):
        body.append("<tr>" + "".join(_cell(_py(v)) for v in row) + "</tr>")
    note = ""
    if len(df) > max_rows:
        note = f'<p class="note">Showing {max_rows} of {len(df)} rows'
        note += f"; all rows in <code>{esc(csv_name)}</code>.</p>" if csv_name else ".</p>"
    elif csv_name:
        note = f'<p class="note">CSV: <code>{esc(csv_name)}</code></p>'
    return (
        f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>{note}"
    )


def figure_png(fig: Any, dpi: int = 80) -> bytes:
    """A matplotlib figure as PNG bytes for :func:`image`; closes the figure (frees its memory)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def image(png: bytes | None, caption: str) -> str:
    """An embedded PNG with its caption, or a note when the figure had too little data."""
    if not png:
        return f'<p class="note">{esc(caption)}: not enough data for this figure.</p>'
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def para(text: str, cls: str = "") -> str:
    klass = f' class="{esc(cls)}"' if cls else ""
    return f"<p{klass}>{esc(text)}</p>"


def heading(text: str) -> str:
    """A sub-heading inside a section (sections carry the ``<h2>``)."""
    return f"<h3>{esc(text)}</h3>"


def link(href: str, text: str) -> str:
    """A relative link, e.g. to a CSV written next to the page."""
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def warning(text: str) -> str:
    return f'<div class="warn">⚠ {esc(text)}</div>'


def meta_list(items: Iterable[tuple[str, object]]) -> str:
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items)
    return f'<dl class="meta">{rows}</dl>'


def render(title: str, header: str, sections: Sequence[PageSection]) -> str:
    """The page text: ``title`` is escaped here, ``header`` and the blocks are escaped HTML."""
    nav = " ".join(f'<a href="#{esc(a)}">{esc(h)}</a>' for a, h, _ in sections)
    body = "".join(
        f'<section id="{esc(a)}"><h2>{esc(h)}</h2>{"".join(blocks)}</section>'
        for a, h, blocks in sections
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1>{header}<nav>{nav}</nav></header>{body}"
        f"<script>{JS}</script></body></html>"
    )


def write_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` via a temp file in the same folder and ``os.replace``.

    Same folder, so the replace is a rename within one file system (atomic on POSIX and
    Windows); the temp file is created with mode 0o666 minus the umask, like ``open``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_page(
    path: str | os.PathLike[str], title: str, header: str, sections: Sequence[PageSection]
) -> Path:
    """Render the page (:func:`render`) and write it atomically to ``path``; returns ``path``."""
    return write_atomic(path, render(title, header, sections))

"""A self-contained HTML page: images embedded as base64, sortable tables with inline JS.

Every string that reaches the page goes through :func:`html.escape` (technique names,
summaries and errors come from plugins and must render as text).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence

import pandas as pd
from pandas.api.types import is_numeric_dtype

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


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return f'<td class="s">{"yes" if value else "no"}</td>'
    if isinstance(value, int | float) and not isinstance(value, bool):
        v = float(value)
        if math.isnan(v):
            return '<td data-v="NaN">–</td>'
        if math.isinf(v):
            return (
                f'<td data-v="{"Infinity" if v > 0 else "-Infinity"}">{"∞" if v > 0 else "-∞"}</td>'
            )
        text = f"{int(v)}" if v.is_integer() and abs(v) < 1e12 else f"{v:.4g}"
        return f'<td data-v="{v!r}">{text}</td>'
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td class="s"></td>'
    return f'<td class="s">{esc(value)}</td>'


def table(df: pd.DataFrame, *, max_rows: int = 300, csv_name: str | None = None) -> str:
    """A sortable table (first ``max_rows`` rows) with a note pointing at the full CSV."""
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


def _py(v: object) -> object:
    if hasattr(v, "item") and not isinstance(v, str):
        try:
            return v.item()
        except (ValueError, AttributeError):
            return v
    return v


def image(png: bytes | None, caption: str) -> str:
    if not png:
        return f'<p class="note">{esc(caption)}: not enough data for this figure.</p>'
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def para(text: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f"<p{klass}>{esc(text)}</p>"


def warning(text: str) -> str:
    return f'<div class="warn">⚠ {esc(text)}</div>'


def meta_list(items: Iterable[tuple[str, object]]) -> str:
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items)
    return f'<dl class="meta">{rows}</dl>'


def page(title: str, header: str, sections: Sequence[tuple[str, str, Sequence[str]]]) -> str:
    """``sections`` are ``(anchor, heading, blocks)``; blocks are already-escaped HTML."""
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

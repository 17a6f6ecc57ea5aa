"""The report's page shell: CSS, escaping, glyphs, figures, anchors.

Notes and warnings are marked by CSS badges holding an ASCII ``i`` / ``!`` (every system
font has those), not by Unicode symbols such as U+24D8 that many fonts lack and browsers
draw as a missing-character box. The page loads nothing from the network.
"""

from __future__ import annotations

import base64
import html
import re
import struct
from pathlib import Path
from typing import Any

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;
max-width:1100px;margin:1.5em auto;padding:0 1em;color:#1d1d1f;line-height:1.45;
overflow-wrap:break-word}
h1{margin:.1em 0 .2em;font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:2em} h3{margin:1.2em 0 .4em;font-size:1.05em}
a{color:#0b57d0}
.muted{color:#5f6368} .small{font-size:.85em}
.ok{color:#17803d} .failed{color:#b3261e} .skipped{color:#8a6d00}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0}
th,td{border:1px solid #ddd;padding:.2em .5em;text-align:right;vertical-align:top}
thead th{background:#f3f4f6} tbody th{background:#fafafa;text-align:left}
td:first-child,th:first-child{text-align:left}
table.kv th{text-align:left;background:#f7f7f7;font-weight:600}
table.kv td{text-align:left;overflow-wrap:anywhere}
table.summary td,table.summary th{text-align:left}
table.summary td:first-child{white-space:nowrap}
caption{text-align:left;font-weight:600;padding:.2em 0}
.scroll{overflow-x:auto;max-width:100%}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.82em;white-space:pre-wrap;
overflow-wrap:anywhere}
code{overflow-wrap:anywhere}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:1em}
figure{margin:.5em 0} figure.wide{grid-column:1/-1}
img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em}
.tag{display:inline-block;background:#e8eefc;border-radius:3px;padding:0 .4em;
margin-left:.3em;font-size:.75em;font-weight:normal;vertical-align:middle}
.note,.warn,.error{display:flex;gap:.5em;align-items:flex-start;margin:.35em 0}
.glyph{flex:none;display:inline-block;width:1.25em;height:1.25em;line-height:1.25em;
border-radius:50%;text-align:center;font-weight:700;font-size:.85em;color:#fff;
font-family:Arial,"DejaVu Sans",sans-serif;margin-top:.1em}
.note .glyph{background:#1a73e8} .warn .glyph{background:#c77700}
.error .glyph{background:#b3261e}
.warn{background:#fff8e1;padding:.3em .5em;border-radius:4px}
.error{background:#fdecea;padding:.3em .5em;border-radius:4px}
details{margin:.5em 0} summary{cursor:pointer}
.csv{font-size:.85em;margin-left:.5em}
.compare{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:1em}
.compare>div{min-width:0}
"""


def e(value: Any) -> str:
    """HTML-escape any value (quotes too)."""
    return html.escape(str(value), quote=True)


def glyph_line(kind: str, text: str) -> str:
    """A note (``i``), warning (``!``) or error (``x``) line; ``text`` is escaped."""
    mark = {"note": "i", "warn": "!", "error": "x"}[kind]
    return (f"<div class={kind}><span class=glyph aria-hidden=true>{mark}</span>"
            f"<span>{e(text)}</span></div>")


def anchor(name: str, used: set[str] | None = None) -> str:
    """A valid, unique HTML id for a section named ``name``."""
    slug = "sec-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "x")
    if used is not None:
        base, k = slug, 2
        while slug in used:
            slug, k = f"{base}-{k}", k + 1
        used.add(slug)
    return slug


def png_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's header (None if it is not a PNG)."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return struct.unpack(">II", data[16:24])


def figure_html(path: Path, alt: str, caption: str) -> str:
    """An embedded PNG (base64) with its alt text and caption; a wide figure (several
    panels side by side) spans the whole row of the figure grid."""
    if not path.is_file():
        return glyph_line("error", f"missing figure {path.name}")
    raw = path.read_bytes()
    size = png_size(raw)
    wide = " class=wide" if size and size[0] > 1.8 * size[1] else ""
    data = base64.b64encode(raw).decode()
    return (f'<figure{wide}><img alt="{e(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption class=muted>{e(caption)}</figcaption></figure>")


def kv_table(rows: dict[str, Any]) -> str:
    cells = "".join(f"<tr><th scope=row>{e(k)}</th><td>{e(v)}</td></tr>"
                    for k, v in rows.items() if v not in (None, ""))
    return f"<div class=scroll><table class=kv>{cells}</table></div>"


def page(title: str, body: list[str]) -> str:
    """A complete, self-contained HTML document."""
    return "\n".join([
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        *body,
        "</body></html>",
    ])

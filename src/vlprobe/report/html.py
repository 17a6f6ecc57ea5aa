"""One self-contained HTML page per run: provenance, each analysis' figures and table,
and how to reproduce it. Figures are embedded as base64 PNG; every user-provided string
(run name, config values, notes, error messages, table cells) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from vlprobe.results.records import atomic_write_text, read_run

MAX_TABLE_ROWS = 300

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.muted{color:#666} .ok{color:#17803d} .failed{color:#b3261e} .skipped{color:#8a6d00}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.2em .5em;text-align:right}
th{background:#f5f5f5} td:first-child,th:first-child{text-align:left}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.85em}
figure{margin:1em 0} img{max-width:100%;border:1px solid #eee}
.tag{display:inline-block;background:#eef;border-radius:3px;padding:0 .4em;margin-left:.3em;
font-size:.8em}
details{margin:.5em 0}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table_html(frame: pd.DataFrame) -> str:
    shown = frame.head(MAX_TABLE_ROWS)
    note = ""
    if len(frame) > MAX_TABLE_ROWS:
        note = (
            f"<p class=muted>first {MAX_TABLE_ROWS} of {len(frame)} rows "
            "(full table in the parquet file)</p>"
        )
    drop = [c for c in ("run_id", "config_hash", "result") if c in shown.columns]
    body = shown.drop(columns=drop).to_html(
        index=False, escape=True, float_format=lambda v: f"{v:.4g}", na_rep=""
    )
    return note + body


def _figure_html(path: Path, caption: str) -> str:
    if not path.is_file():
        return f"<p class=failed>missing figure {_e(path.name)}</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption class=muted>{_e(caption)}</figcaption></figure>"
    )


def _kv_table(rows: dict[str, Any]) -> str:
    cells = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows.items())
    return f"<table>{cells}</table>"


def render_report(run_dir: str | Path) -> str:
    """The HTML text of a run's report."""
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    status = _e(record.get("status"))
    parts = [
        "<!doctype html><html><head><meta charset=utf-8>",
        f"<title>vlprobe: {_e(record.get('name'))}</title><style>{_CSS}</style></head><body>",
        f"<h1>vlprobe run <code>{_e(record.get('name'))}</code></h1>",
        f"<p class=muted>run {_e(record.get('run_id'))} &middot; "
        f"started {_e(record.get('started'))} &middot; "
        f"status <span class={status}>{status}</span></p>",
    ]
    for warning in dict.fromkeys(record.get("warnings") or []):
        parts.append(f"<p class=skipped>&#9888; {_e(warning)}</p>")
    analyses = record.get("analyses", {})
    parts.append("<h2>Analyses</h2><ul>")
    for name, info in analyses.items():
        status = str(info.get("status", "?"))
        css = "ok" if status == "ok" else "failed" if status == "failed" else "skipped"
        tags = "".join(f"<span class=tag>{_e(c)}</span>" for c in info.get("catalogue", []))
        parts.append(
            f"<li><a href='#{_e(name)}'>{_e(name)}</a>{tags} "
            f"<span class={css}>{_e(status)}</span></li>"
        )
    parts.append("</ul>")

    for name, info in analyses.items():
        parts.append(f"<h2 id='{_e(name)}'>{_e(name)}")
        parts.extend(f"<span class=tag>{_e(c)}</span>" for c in info.get("catalogue", []))
        parts.append("</h2>")
        if info.get("status") == "failed":
            parts.append(f"<p class=failed>failed: {_e(info.get('error'))}</p>")
            if info.get("traceback"):
                parts.append(
                    f"<details><summary>traceback</summary><pre>{_e(info['traceback'])}</pre></details>"
                )
            continue
        result_json = run_dir / "results" / f"{name}.json"
        params = {}
        if result_json.is_file():
            params = json.loads(result_json.read_text()).get("params", {})
        parts.append(f"<p class=muted>analysis <code>{_e(info.get('analysis'))}</code></p>")
        if params:
            dumped = _e(json.dumps(params, indent=1, default=str))
            parts.append(f"<details><summary>parameters</summary><pre>{dumped}</pre></details>")
        for note in info.get("notes", []):
            parts.append(f"<p>&#9432; {_e(note)}</p>")
        for fig_name, rel in info.get("figures", {}).items():
            parts.append(_figure_html(run_dir / rel, f"{name}: {fig_name}"))
        for table_name, rel in info.get("extra_tables", {}).items():
            if (run_dir / rel).is_file():
                parts.append(f"<h3>{_e(table_name)}</h3>")
                parts.append(_table_html(pd.read_parquet(run_dir / rel)))
        table_path = run_dir / str(info.get("table", ""))
        if table_path.is_file():
            parts.append(_table_html(pd.read_parquet(table_path)))

    parts.append("<h2>Provenance</h2>")
    parts.append(
        _kv_table(
            {
                "config hash": record.get("config_hash"),
                "seed": record.get("seed"),
                "git": record.get("git") or "not a git checkout",
                "platform": record.get("host", {}).get("platform"),
                "model forward batches in this run": record.get("forward_batches"),
                **{f"version {k}": v for k, v in record.get("versions", {}).items()},
            }
        )
    )
    extractions = record.get("extractions") or []
    if extractions:
        parts.append("<h3>Extractions</h3>")
        parts.append(
            pd.DataFrame(extractions).to_html(
                index=False, escape=True, float_format=lambda v: f"{v:.3g}"
            )
        )
    timings = record.get("timings", {})
    if timings:
        parts.append("<h3>Timings (seconds)</h3>")
        parts.append(_kv_table({k: v for k, v in _flatten(timings).items()}))
    config_yaml = run_dir / "config.yaml"
    if config_yaml.is_file():
        parts.append("<h3>Resolved configuration</h3>")
        parts.append(f"<pre>{_e(config_yaml.read_text())}</pre>")
    parts.append("<h2>How to reproduce</h2>")
    versions = record.get("versions", {})
    parts.append(
        "<pre>"
        + _e(
            "\n".join(
                [
                    "# same library versions as this run:",
                    f"pip install torch=={versions.get('torch', '2.13.0').split('+')[0]} "
                    f"transformers=={versions.get('transformers', '')}",
                    f"pip install 'vlprobe=={versions.get('vlprobe', '')}'"
                    + (f"   # source commit {record['git']}" if record.get("git") else ""),
                    f"vlprobe run {run_dir / 'config.yaml'}",
                ]
            )
        )
        + "</pre>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def write_report(run_dir: str | Path) -> Path:
    """(Re)build ``report.html`` in a run directory and return its path."""
    run_dir = Path(run_dir)
    path = run_dir / "report.html"
    atomic_write_text(path, render_report(run_dir))
    return path

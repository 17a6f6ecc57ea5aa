"""``vlprobe report RUN_A RUN_B ...``: one self-contained page comparing runs.

Analyses are matched by their result name (the config's ``analyses[].name``), so two runs
of one config with different seeds, models or data line up. The page has: the runs and how
their configs differ; a summary (one row per analysis, one column per run, the key numbers
in each cell); per analysis the runs' figures side by side and one pivot of all runs' values
(a ``run`` column dimension); per run its versions, model identities and warnings.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd

from vlprobe.errors import VLProbeError
from vlprobe.report.html import ResultView, load_results, status_html, table_block, tags_html
from vlprobe.report.style import anchor, e, figure_html, glyph_line, kv_table, page
from vlprobe.report.tables import frame_html, pivots_html
from vlprobe.results.records import atomic_write_text, read_run


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        out = {}
        for i, v in enumerate(data):
            out.update(_flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: data}


def config_differences(records: list[dict[str, Any]], labels: list[str]) -> pd.DataFrame:
    """One row per config field whose value differs between the runs."""
    flat = [_flatten(r.get("config") or {}) for r in records]
    fields = list(dict.fromkeys(k for f in flat for k in f))
    rows = []
    for name in fields:
        values = [f.get(name, "(absent)") for f in flat]
        if len({repr(v) for v in values}) > 1 and name not in ("output_dir", "cache_dir"):
            rows.append({"config field": name, **{lab: str(v) for lab, v in zip(labels, values)}})
    return pd.DataFrame(rows)


def _labels(records: list[dict[str, Any]]) -> list[str]:
    ids = [str(r.get("run_id") or r.get("name")) for r in records]
    if len(set(ids)) < len(ids):  # the same run directory twice: number them
        ids = [f"{i + 1}: {rid}" for i, rid in enumerate(ids)]
    return ids


def render_comparison(run_dirs: list[str | Path]) -> str:
    """The HTML text comparing the runs in ``run_dirs`` (at least one)."""
    if not run_dirs:
        raise VLProbeError("vlprobe report: name at least one run directory")
    dirs = [Path(d) for d in run_dirs]
    records = [read_run(d) for d in dirs]
    labels = _labels(records)
    views = [{v.name: v for v in load_results(d, r)} for d, r in zip(dirs, records)]
    names = list(dict.fromkeys(n for vs in views for n in vs))
    used = {"summary", "runs", "provenance"}
    anchors = {n: anchor(n, used) for n in names}

    body = [f"<h1>vlprobe: {len(dirs)} runs compared</h1>", "<h2 id=runs>Runs</h2>"]
    runs = pd.DataFrame([{
        "run": lab, "name": r.get("name"), "status": r.get("status"), "seed": r.get("seed"),
        "started": r.get("started"), "seconds": (r.get("timings") or {}).get("total_s"),
        "forward batches": r.get("forward_batches"), "directory": str(d),
    } for lab, r, d in zip(labels, records, dirs)])
    body.append(frame_html(runs))
    diff = config_differences(records, labels)
    body.append("<h3>How the configs differ</h3>")
    body.append(frame_html(diff) if len(diff) else "<p class=muted>the configs are identical "
                "(apart from where they write)</p>")

    body.append("<h2 id=summary>Summary</h2>")
    head = "<th scope=col>analysis</th>" + "".join(f"<th scope=col>{e(x)}</th>" for x in labels)
    rows = ""
    for name in names:
        cells = "".join(f"<td>{_cell(vs.get(name))}</td>" for vs in views)
        rows += f"<tr><td><a href='#{anchors[name]}'>{e(name)}</a></td>{cells}</tr>"
    body.append(f"<div class=scroll><table class=summary><thead><tr>{head}</tr></thead>"
                f"<tbody>{rows}</tbody></table></div>")
    for lab, record in zip(labels, records):
        body += [glyph_line("warn", f"{lab}: {w}")
                 for w in dict.fromkeys(record.get("warnings") or [])]

    for name in names:
        body += _analysis(name, anchors[name], labels, dirs, [vs.get(name) for vs in views])

    body.append("<h2 id=provenance>Provenance</h2>")
    versions = pd.DataFrame([r.get("versions") or {} for r in records], index=labels).T
    body += ["<h3>Versions</h3>", frame_html(versions.reset_index(names="package"))]
    models = pd.DataFrame([
        {"run": lab, "model": m, "adapter": info.get("adapter"),
         "checkpoint": info.get("checkpoint"), "identity hash": info.get("identity_hash")}
        for lab, r in zip(labels, records) for m, info in (r.get("models") or {}).items()
    ])
    if len(models):
        body += ["<h3>Models</h3>", frame_html(models)]
    body += ["<h3>Runs</h3>"] + [
        f"<h4>{e(lab)}</h4>" + kv_table({"config hash": r.get("config_hash"),
                                         "git": r.get("git"), "config file": r.get("config_path"),
                                         "report": str(d / "report.html")})
        for lab, r, d in zip(labels, records, dirs)
    ]
    return page(f"vlprobe: {len(dirs)} runs compared", body)


def _cell(view: ResultView | None) -> str:
    if view is None:
        return "<span class=muted>not in this run</span>"
    if view.status == "failed":
        return f"{status_html('failed')}: {e(view.info.get('error'))}"
    return e(view.key_result()) or status_html(view.status)


def _analysis(
    name: str, section_id: str, labels: list[str], dirs: list[Path],
    views: list[ResultView | None],
) -> list[str]:
    first = next((v for v in views if v is not None), None)
    parts = [f"<section id={section_id}>",
             f"<h2>{e(name)}{tags_html(first.info if first else {})}</h2>", "<div class=compare>"]
    for lab, d, view in zip(labels, dirs, views):
        parts.append(f"<div><h3>{e(lab)}</h3>")
        if view is None:
            parts.append("<p class=muted>not in this run</p></div>")
            continue
        if view.status == "failed":
            parts.append(glyph_line("error", f"failed: {view.info.get('error')}") + "</div>")
            continue
        key = view.key_result()
        if key:
            parts.append(f"<p class=small><b>Key result:</b> {e(key)}</p>")
        parts.extend(glyph_line("note", n) for n in view.info.get("notes", []))
        for fig_name, rel in view.info.get("figures", {}).items():
            alt = view.figure_alt.get(fig_name) or f"{name}: {fig_name}"
            parts.append(figure_html(d / rel, alt, f"{lab}: {fig_name}"))
        parts.append("</div>")
    parts.append("</div>")
    tables = [v.table.assign(run=lab) for lab, v in zip(labels, views)
              if v is not None and v.table is not None and len(v.table)]
    if tables:
        both = pd.concat(tables, ignore_index=True)
        pivot = pivots_html(both)
        if pivot:
            parts += ["<h3>Values side by side</h3>", pivot]
        parts.append(table_block(both, "Full tables of all runs", f"{name}__runs.csv",
                                 open_=pivot is None))
    return [*parts, "</section>"]


def write_comparison(run_dirs: list[str | Path], output: str | Path | None = None) -> Path:
    """Write the comparison page (default: ``comparison-<hash>.html`` beside the first run
    directory) and return its path."""
    dirs = [Path(d) for d in run_dirs]
    if output is None:
        digest = hashlib.sha256("\n".join(str(d.resolve()) for d in dirs).encode()).hexdigest()
        output = dirs[0].resolve().parent / f"comparison-{digest[:10]}.html"
    output = Path(output)
    atomic_write_text(output, render_comparison(dirs))
    return output

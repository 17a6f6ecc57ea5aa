"""One self-contained HTML page per run (works offline: figures are base64 PNGs, CSVs are
``data:`` links, no script, no web font).

Top to bottom: a summary (one line per analysis with its key numbers, linking to its
section) and the run's warnings; a section per analysis (key numbers, notes, figures, a
compact pivot, the full table collapsed with a CSV download, parameters); provenance
(models, datasets, versions, seeds, timings, cache hits, forward passes) and how to
reproduce the run. Every user-provided string (run name, config values, notes, errors,
table cells) is HTML-escaped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vlprobe.report.headlines import headline
from vlprobe.report.provenance import provenance_html
from vlprobe.report.style import anchor, e, figure_html, glyph_line, page
from vlprobe.report.tables import (
    constants_html,
    csv_link,
    frame_html,
    pivots_html,
    split_constant,
)
from vlprobe.results.records import atomic_write_text, read_run

#: extra tables this small (a best-layer summary) are shown open; larger ones collapsed
SMALL_ROWS, SMALL_COLUMNS = 20, 12


@dataclass
class ResultView:
    """One analysis of a run as the report reads it back from the run directory."""

    name: str
    info: dict[str, Any]
    table: pd.DataFrame | None = None
    params: dict[str, Any] = field(default_factory=dict)
    figure_alt: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return str(self.info.get("status", "?"))

    @property
    def analysis(self) -> str:
        return str(self.info.get("analysis") or "")

    def key_result(self) -> str:
        if self.status == "failed":
            return "failed: " + str(self.info.get("error", ""))
        return headline(self.analysis, self.table)


def load_results(run_dir: Path, record: dict[str, Any]) -> list[ResultView]:
    """Every analysis of ``record`` with its table, params and figure descriptions."""
    views = []
    for name, info in (record.get("analyses") or {}).items():
        view = ResultView(name, info)
        table_path = run_dir / str(info.get("table", ""))
        if info.get("status") != "failed" and info.get("table") and table_path.is_file():
            view.table = pd.read_parquet(table_path)
        saved = run_dir / "results" / f"{name}.json"
        if info.get("status") != "failed" and saved.is_file():
            data = json.loads(saved.read_text())
            view.params = data.get("params") or {}
            view.figure_alt = data.get("figure_alt") or {}
        views.append(view)
    return views


def status_html(status: str) -> str:
    css = "ok" if status == "ok" else "failed" if status == "failed" else "skipped"
    return f"<span class={css}>{e(status)}</span>"


def tags_html(info: dict[str, Any]) -> str:
    return "".join(f"<span class=tag>{e(c)}</span>" for c in info.get("catalogue", []))


def summary_html(views: list[ResultView], anchors: dict[str, str]) -> str:
    rows = "".join(
        f"<tr><td><a href='#{anchors[v.name]}'>{e(v.name)}</a>{tags_html(v.info)}</td>"
        f"<td>{status_html(v.status)}</td><td>{e(v.key_result())}</td></tr>"
        for v in views
    )
    return ("<div class=scroll><table class=summary><thead><tr><th scope=col>analysis</th>"
            "<th scope=col>status</th><th scope=col>key result</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>")


def table_block(frame: pd.DataFrame, title: str, filename: str, *, open_: bool = False) -> str:
    """A collapsed full table: constant columns said once, the rest shown, CSV link."""
    varying, constant = split_constant(frame)
    attr = " open" if open_ else ""
    return (f"<details{attr}><summary>{e(title)} ({len(frame)} rows)</summary>"
            f"{constants_html(constant)}{frame_html(varying)}</details>"
            f"<p class=small>{csv_link(frame, filename)}</p>")


def analysis_html(run_dir: Path, view: ResultView, section_id: str) -> list[str]:
    """The section of one analysis."""
    info = view.info
    parts = [f"<section id={section_id}>",
             f"<h2>{e(view.name)}{tags_html(info)} <small>{status_html(view.status)}</small></h2>"]
    if view.status == "failed":
        parts.append(glyph_line("error", f"failed: {info.get('error')}"))
        if info.get("traceback"):
            parts.append(f"<details><summary>traceback</summary><pre>{e(info['traceback'])}"
                         "</pre></details>")
        return [*parts, "</section>"]
    facts = [f"analysis <code>{e(view.analysis)}</code>"]
    cache = info.get("cache")
    if cache == "hit":
        facts.append(f"result from the cache (computing it took {info.get('compute_seconds')} s)")
    elif cache:
        facts.append(f"{e(cache)} in {info.get('compute_seconds', info.get('seconds'))} s")
    if view.status.startswith("skipped"):
        facts.append("kept from an earlier run (--skip-existing)")
    parts.append(f"<p class='muted small'>{' &middot; '.join(facts)}</p>")
    key = view.key_result()
    if key:
        parts.append(f"<p><b>Key result:</b> {e(key)}</p>")
    parts.extend(glyph_line("note", note) for note in info.get("notes", []))
    figures = info.get("figures", {})
    if figures:
        parts.append("<div class=figs>")
        for fig_name, rel in figures.items():
            alt = view.figure_alt.get(fig_name) or f"{view.name}: {fig_name}"
            parts.append(figure_html(run_dir / rel, alt, f"{view.name}: {fig_name}"))
        parts.append("</div>")
    if view.table is not None and len(view.table):
        pivot = pivots_html(view.table)
        if pivot:
            parts += ["<h3>Values</h3>", pivot]
        parts.append(table_block(view.table, "Full table", f"{view.name}.csv",
                                 open_=pivot is None))
    for table_name, rel in info.get("extra_tables", {}).items():
        if (run_dir / rel).is_file():
            extra = pd.read_parquet(run_dir / rel)
            small = len(extra) <= SMALL_ROWS and len(extra.columns) <= SMALL_COLUMNS
            parts.append(table_block(extra, f"Table {table_name}",
                                     f"{view.name}__{table_name}.csv", open_=small))
    if view.params:
        dumped = e(json.dumps(view.params, indent=1, default=str))
        parts.append(f"<details><summary>Parameters</summary><pre>{dumped}</pre></details>")
    return [*parts, "</section>"]


def header_html(record: dict[str, Any], views: list[ResultView]) -> list[str]:
    n_ok = sum(v.status == "ok" for v in views)
    n_failed = sum(v.status == "failed" for v in views)
    total = (record.get("timings") or {}).get("total_s")
    facts = [f"run {e(record.get('run_id'))}", f"started {e(record.get('started'))}",
             f"status {status_html(str(record.get('status')))}",
             f"{len(views)} analyses: {n_ok} ok" + (f", {n_failed} failed" if n_failed else "")]
    if total is not None:
        facts.append(f"{e(total)} s")
    facts.append(f"{e(record.get('forward_batches'))} model forward batches")
    return [f"<h1>vlprobe run <code>{e(record.get('name'))}</code></h1>",
            f"<p class=muted>{' &middot; '.join(facts)}</p>"]


def render_report(run_dir: str | Path) -> str:
    """The HTML text of a run's report."""
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    views = load_results(run_dir, record)
    used = {"summary", "provenance", "reproduce"}
    anchors = {v.name: anchor(v.name, used) for v in views}
    body = header_html(record, views)
    body += ["<h2 id=summary>Summary</h2>", summary_html(views, anchors)]
    body += [glyph_line("warn", w) for w in dict.fromkeys(record.get("warnings") or [])]
    body.append("<p class=small><a href='#provenance'>Provenance</a> &middot; "
                "<a href='#reproduce'>How to reproduce</a></p>")
    for view in views:
        body += analysis_html(run_dir, view, anchors[view.name])
    body += provenance_html(record, run_dir)
    return page(f"vlprobe: {record.get('name')}", body)


def write_report(run_dir: str | Path) -> Path:
    """(Re)build ``report.html`` in a run directory and return its path."""
    run_dir = Path(run_dir)
    path = run_dir / "report.html"
    atomic_write_text(path, render_report(run_dir))
    return path

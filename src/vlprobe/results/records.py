"""Run directories on disk: ``run.json`` + one tidy table per analysis (parquet + JSON).

Layout of a run directory::

    <run_dir>/
      run.json                 resolved config, versions, git hash, seeds, timings, status
      config.yaml              the resolved config (``vlprobe run config.yaml`` reproduces it)
      results/<name>.parquet   tidy table of one analysis (+ run/config columns)
      results/<name>.json      the same rows + params + notes (human/JSON readable)
      results/<name>__<table>.parquet   extra tables (e.g. RDMs in long form)
      figures/<name>__<figure>.png
      report.html
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from vlprobe.analyses.base import Result
from vlprobe.fileio import make_temp_file

RESULTS_DIR = "results"
FIGURES_DIR = "figures"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same dir + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp_file(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_parquet(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp_file(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _stringify_objects(frame: pd.DataFrame) -> pd.DataFrame:
    """Parquet needs one type per column: cast mixed object columns to strings."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object:
            kinds = {type(v) for v in frame[column].dropna()}
            if len(kinds) > 1 or (kinds and not kinds <= {str}):
                frame[column] = frame[column].map(lambda v: None if v is None else str(v))
    return frame


def write_result(
    run_dir: Path, name: str, result: Result, *, run_id: str, config_hash: str,
    palette: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write one analysis' tables and figures; return an index entry for ``run.json``.

    Figures are styled first (:func:`~vlprobe.analyses.figure_style.style_figure`: one colour
    per model from ``palette`` -- the run's, in config order; by default the models of this
    result's table -- and integer layer ticks) and described for the report (``figure_alt``).
    """
    from vlprobe.analyses.figure_style import alt_text, model_palette, style_figure

    if palette is None:
        models = list(result.table["model"].dropna().astype(str)) if (
            "model" in getattr(result.table, "columns", ())) else []
        palette = model_palette(models)
    results_dir = run_dir / RESULTS_DIR
    table = result.table.copy()
    table.insert(0, "result", name)
    table["run_id"] = run_id
    table["config_hash"] = config_hash
    table = _stringify_objects(table)
    _atomic_parquet(table, results_dir / f"{name}.parquet")
    extra_files = {}
    for table_name, extra in result.extra_tables.items():
        path = results_dir / f"{name}__{table_name}.parquet"
        _atomic_parquet(_stringify_objects(extra), path)
        extra_files[table_name] = str(path.relative_to(run_dir))
    figure_files, figure_alt = {}, {}
    for fig_name, figure in result.figures.items():
        path = run_dir / FIGURES_DIR / f"{name}__{fig_name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        style_figure(figure, palette)
        figure.savefig(path, dpi=120, bbox_inches="tight")
        figure_alt[fig_name] = alt_text(figure, fallback=f"{name}: {fig_name}")  # drawn now
        figure_files[fig_name] = str(path.relative_to(run_dir))
        import matplotlib.pyplot as plt

        plt.close(figure)
    record = {
        "result": name,
        "analysis": result.analysis,
        "catalogue": list(result.catalogue),
        "params": result.params,
        "notes": result.notes,
        "rows": json.loads(table.to_json(orient="records")),
        "extra_tables": extra_files,
        "figures": figure_files,
        "figure_alt": figure_alt,
    }
    atomic_write_text(
        results_dir / f"{name}.json", json.dumps(record, indent=1, default=_json_default)
    )
    return {
        "analysis": result.analysis,
        "catalogue": list(result.catalogue),
        "table": f"{RESULTS_DIR}/{name}.parquet",
        "json": f"{RESULTS_DIR}/{name}.json",
        "figures": figure_files,
        "figure_alt": figure_alt,
        "extra_tables": extra_files,
        "notes": result.notes,
        "n_rows": len(table),
    }


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The ``run.json`` of a run directory."""
    from vlprobe.errors import VLProbeError

    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise VLProbeError(f"{run_dir} is not a vlprobe run directory (no run.json)")
    return json.loads(path.read_text())


def read_result_table(run_dir: str | Path, name: str) -> pd.DataFrame:
    """The tidy table of one analysis of a run."""
    return pd.read_parquet(Path(run_dir) / RESULTS_DIR / f"{name}.parquet")


def result_exists(run_dir: Path, name: str) -> bool:
    """Whether a result (table + JSON) was written completely."""
    return (run_dir / RESULTS_DIR / f"{name}.parquet").is_file() and (
        run_dir / RESULTS_DIR / f"{name}.json"
    ).is_file()


def list_runs(root: str | Path) -> list[dict[str, Any]]:
    """All runs under ``root`` (one dict per run: dir, name, status, date, analyses)."""
    runs = []
    root = Path(root)
    if not root.is_dir():
        return runs
    for run_json in sorted(root.glob("*/run.json")):
        try:
            data = json.loads(run_json.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        runs.append({"dir": str(run_json.parent), **data})
    runs.sort(key=lambda r: r.get("started", ""))
    return runs

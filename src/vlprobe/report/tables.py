"""Compact tables for the report: constant columns said once, pivots (layer x model), CSV.

A tidy result table repeats analysis / model / dataset on every row. The report shows:

- a **pivot** of ``value``: rows = layers (or models, where there is no layer axis), columns
  = models plus whichever other key columns (probe, classifier, shots, metric, ...) are
  needed to make each cell one number (:func:`pivot_dims`);
- the **full table** collapsed, without its constant columns (listed once above it), and
  downloadable as CSV (a ``data:`` link: the page stays self-contained).
"""

from __future__ import annotations

import base64
import html
import math
from typing import Any

import pandas as pd

#: bookkeeping columns never shown (the page says run and config once)
HIDDEN = ("result", "run_id", "config_hash")
#: rows of a full table shown in the page (the CSV has all)
MAX_ROWS = 300
#: largest CSV embedded as a download link
MAX_CSV_BYTES = 8_000_000
#: widest pivot (columns) before the full table is shown instead
MAX_PIVOT_COLUMNS = 24
#: row dimension preferred for pivots, in order
ROW_DIMS = ("layer", "shots", "model")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def missing(value: Any) -> bool:
    """None, NaN, NA (scalars only; a list cell is not missing)."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def fmt(value: Any) -> str:
    """A cell: 4 significant digits for floats, blank for missing, text as is."""
    if missing(value):
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def _is_constant(column: pd.Series) -> bool:
    return column.map(_key).nunique(dropna=False) <= 1


def split_constant(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``(frame without constant and hidden columns, {constant column: its value})``."""
    frame = frame.drop(columns=[c for c in HIDDEN if c in frame.columns])
    if len(frame) <= 1:
        return frame, {}
    constant = {c: frame[c].iloc[0] for c in frame.columns if _is_constant(frame[c])}
    return frame.drop(columns=list(constant)), constant


def constants_html(constant: dict[str, Any]) -> str:
    if not constant:
        return ""
    items = ", ".join(f"{_e(k)} = <b>{_e(fmt(v))}</b>" for k, v in constant.items())
    return f"<p class='muted small'>Same in every row: {items}</p>"


def frame_html(frame: pd.DataFrame, *, max_rows: int = MAX_ROWS) -> str:
    """An HTML table (escaped, formatted cells) in a horizontally scrolling box."""
    shown = frame.head(max_rows)
    head = "".join(f"<th scope=col>{_e(c)}</th>" for c in shown.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(fmt(v))}</td>" for v in row) + "</tr>"
        for row in shown.itertuples(index=False)
    )
    note = ""
    if len(frame) > max_rows:
        note = f"<p class='muted small'>first {max_rows} of {len(frame)} rows (all in the CSV)</p>"
    return (f"{note}<div class=scroll><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def csv_link(frame: pd.DataFrame, filename: str) -> str:
    """A download link holding the table as CSV (every column, every row)."""
    data = frame.drop(columns=[c for c in HIDDEN if c in frame.columns]).to_csv(index=False)
    raw = data.encode("utf-8")
    if len(raw) > MAX_CSV_BYTES:
        size = len(raw) // 1_000_000
        return f"<span class='muted small'>CSV too large to embed ({size} MB)</span>"
    b64 = base64.b64encode(raw).decode("ascii")
    return (f"<a class=csv download='{_e(filename)}' "
            f"href='data:text/csv;charset=utf-8;base64,{b64}'>download CSV</a>")


def _key(value: Any) -> str:
    return "" if missing(value) else fmt(value)


def _keys(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell as its text key (missing -> ``""``), for grouping."""
    return frame.apply(lambda column: column.map(_key))


def pivot_dims(frame: pd.DataFrame) -> tuple[str, list[str]] | None:
    """``(row dimension, column dimensions)`` that make every cell of a ``value`` pivot one
    row of ``frame``, or None when no such pivot exists (no ``value``, float-only keys).

    The row dimension is the first varying one of :data:`ROW_DIMS`; columns start with
    ``model`` and grow greedily by the key column (non-float, varying) that splits the
    largest groups, preferring columns with few distinct values.
    """
    if "value" not in frame.columns or not len(frame):
        return None
    keys = _keys(frame.drop(columns=[c for c in HIDDEN if c in frame.columns]))
    varying = [c for c in keys.columns if c != "value" and keys[c].nunique() > 1]

    def within_models(dim: str) -> bool:  # RSA's layer is one per model: not an axis
        return "model" not in keys.columns or keys.groupby("model")[dim].nunique().max() > 1

    row = next((d for d in ROW_DIMS if d in varying and within_models(d)), None)
    if row is None:
        row = "model" if "model" in keys.columns else None
    if row is None:
        return None
    cols = ["model"] if "model" in keys.columns and row != "model" else []
    candidates = [
        c for c in varying if c not in (row, *cols)
        and not pd.api.types.is_float_dtype(frame[c])
    ]
    while True:
        dims = [row, *cols]
        largest = keys.groupby(dims).size().max()
        if largest <= 1:
            return row, cols
        best, best_score = None, None
        for c in candidates:
            if c in cols:
                continue
            score = (keys.groupby([*dims, c]).size().max(), keys[c].nunique())
            if best_score is None or score < best_score:
                best, best_score = c, score
        if best is None or best_score[0] >= largest:  # type: ignore[index]
            return None
        cols.append(best)


def pivots_html(frame: pd.DataFrame) -> str | None:
    """One pivot per metric (captioned) where the table has several, else one pivot; None
    when the values do not pivot."""
    if "metric" in frame.columns and frame["metric"].nunique() > 1:
        parts = [pivot_html(frame[frame["metric"] == m], str(m))
                 for m in dict.fromkeys(frame["metric"])]
        return None if any(p is None for p in parts) else "".join(parts)  # type: ignore[misc]
    return pivot_html(frame, main_metric(frame))


def pivot_html(frame: pd.DataFrame, metric: str | None = None) -> str | None:
    """The pivot of ``frame``'s values (cells ``value`` or ``value ± se``), or None."""
    dims = pivot_dims(frame)
    if dims is None:
        return None
    row, cols = dims
    keys = _keys(frame)
    cells = frame["value"].map(fmt)
    if "se" in frame.columns:
        se = frame["se"]
        cells = [
            c + (f" ± {s:.2g}" if isinstance(s, float) and not math.isnan(s) and c else "")
            for c, s in zip(cells, se)
        ]
    table = pd.DataFrame({"_row": keys[row].to_numpy(), "_cell": list(cells)})
    col_labels = (
        keys[cols].agg(" / ".join, axis=1) if cols else pd.Series(["value"] * len(frame))
    )
    table["_col"] = col_labels.to_numpy()
    col_order = list(dict.fromkeys(table["_col"]))
    if len(col_order) > MAX_PIVOT_COLUMNS:
        return None
    row_order = _row_order(frame, row, keys)
    wide = table.pivot(index="_row", columns="_col", values="_cell").reindex(
        index=row_order, columns=col_order)
    corner = row + (f" \\ {' / '.join(cols)}" if cols else "")
    head = f"<th scope=col>{_e(corner)}</th>" + "".join(
        f"<th scope=col>{_e(c)}</th>" for c in col_order)
    body = "".join(
        f"<tr><th scope=row>{_e(r or '-')}</th>"
        + "".join(f"<td>{_e('' if pd.isna(v) else v)}</td>" for v in wide.loc[r])
        + "</tr>"
        for r in row_order
    )
    caption = f"<caption>{_e(metric)}</caption>" if metric else ""
    return (f"<div class=scroll><table class=pivot>{caption}<thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def _row_order(frame: pd.DataFrame, row: str, keys: pd.DataFrame) -> list[str]:
    """Rows in numeric order for numeric dimensions (layer 2 before 10), else first seen."""
    labels = list(dict.fromkeys(keys[row]))
    if pd.api.types.is_numeric_dtype(frame[row]):
        def numeric(label: str) -> float:
            try:
                return float(label)
            except ValueError:
                return math.inf
        labels.sort(key=numeric)
    return labels


def main_metric(frame: pd.DataFrame) -> str | None:
    """The metric the headline and pivot show first (the table's first metric)."""
    if "metric" not in frame.columns or not len(frame):
        return None
    return str(frame["metric"].iloc[0])

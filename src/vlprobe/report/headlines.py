"""One line per analysis with its key numbers, for the report's summary.

:func:`headline` picks a function by analysis name (:data:`HEADLINES`) and falls back to
:func:`best_per_model` (each model's best value of the table's first metric, and where). A
new analysis adds its own function here when the fallback does not say what it found.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from vlprobe.report.tables import fmt, missing

#: metrics where smaller is better (everything else: larger is better)
LOWER_IS_BETTER = ("mse", "loss", "error", "distance", "perplexity", "rank")


def _lower_better(metric: str) -> bool:
    return any(word in str(metric).lower() for word in LOWER_IS_BETTER)


def _where(row: pd.Series) -> str:
    """``layer 7`` (or the site when there is no layer index)."""
    if "layer" in row.index and not missing(row["layer"]):
        return f"layer {fmt(row['layer'])}"
    if "site" in row.index and not missing(row["site"]):
        return f"site {row['site']}"
    return ""


def _finite(table: pd.DataFrame) -> pd.DataFrame:
    values = pd.to_numeric(table["value"], errors="coerce")
    return table[np.isfinite(values.to_numpy(dtype=float))].assign(value=values)


def _main(table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    if "metric" not in table.columns:
        return table, "value"
    metric = str(table["metric"].iloc[0])
    return table[table["metric"].astype(str) == metric], metric


def best_per_model(table: pd.DataFrame, by: tuple[str, ...] = ()) -> str:
    """Each model's best value of the first metric: ``model: accuracy 0.91 at layer 7``."""
    table = _finite(table)
    if not len(table) or "model" not in table.columns:
        return ""
    table, metric = _main(table)
    keys = ["model", *[c for c in by if c in table.columns and table[c].nunique() > 1]]
    parts = []
    for group, rows in table.groupby(keys, sort=False):
        group = group if isinstance(group, tuple) else (group,)
        best = rows.loc[rows["value"].idxmin() if _lower_better(metric)
                        else rows["value"].idxmax()]
        label = " ".join(str(g) for g in group)
        where = _where(best) if rows.get("layer", pd.Series()).nunique() > 1 else ""
        chance = ""
        if "chance" in best.index and not missing(best["chance"]):
            chance = f" (chance {fmt(round(float(best['chance']), 3))})"
        parts.append(f"{label}: {metric} {fmt(round(float(best['value']), 3))}"
                     + (f" at {where}" if where else "") + chance)
    return "; ".join(parts)


def layer_probe(table: pd.DataFrame) -> str:
    """Best layer and its accuracy per model (and probe type)."""
    return "best layer per model: " + best_per_model(table, by=("probe",))


def few_shot(table: pd.DataFrame) -> str:
    """Accuracy at N = 10 shots (or the largest N below), each model's last layer."""
    table = _finite(table)
    if not len(table):
        return ""
    shots = sorted(int(n) for n in table["shots"].unique())
    n = 10 if 10 in shots else max([s for s in shots if s < 10] or shots)
    t = table[table["shots"] == n]
    if "layer" in t.columns and t["layer"].notna().any():
        last = t.groupby("model")["layer"].transform("max")
        t = t[(t["layer"] == last) | t["layer"].isna()]
    parts = []
    for model, rows in t.groupby("model", sort=False):
        cells = []
        for _, r in rows.iterrows():
            se = f" ± {r['se']:.2g}" if "se" in r.index and not missing(r["se"]) else ""
            cells.append(f"{r.get('classifier', '')} {fmt(round(float(r['value']), 3))}{se}")
        parts.append(f"{model}: " + ", ".join(cells))
    return f"N = {n}: " + "; ".join(parts)


def pairs(table: pd.DataFrame) -> str:
    """Between-model comparisons (RSA, CKA): each unordered model pair's value of the first
    metric (the largest over layers where there are several)."""
    table = _finite(table)
    if not len(table) or "model_b" not in table.columns:
        return best_per_model(table)
    table, metric = _main(table)
    order = list(dict.fromkeys([*table["model"], *table["model_b"]]))
    cross = table[table["model"] != table["model_b"]]
    if not len(cross):  # one model against itself: its layers
        cross = table[table.get("layer", 0) != table.get("layer_b", 0)]
    seen, parts = set(), []
    for (a, b), rows in cross.groupby(["model", "model_b"], sort=False):
        pair = tuple(sorted((a, b), key=order.index))
        if pair in seen:
            continue
        seen.add(pair)
        best = rows.loc[rows["value"].idxmax()]
        where = ""
        if len(rows) > 1 and "layer" in rows.columns and "layer_b" in rows.columns:
            where = f" (max, layers {fmt(best['layer'])} / {fmt(best['layer_b'])})"
        name = f"{a} vs {b}" if a != b else f"{a}"
        parts.append(f"{name} {fmt(round(float(best['value']), 3))}{where}")
    return f"{metric}: " + "; ".join(parts)


def sentence_probing(table: pd.DataFrame) -> str:
    """Per model: the mean over tasks of each task's best-layer accuracy."""
    table = _finite(table)
    if not len(table) or "task" not in table.columns:
        return best_per_model(table)
    best = table.groupby(["model", "task"], sort=False)["value"].max().reset_index()
    parts = [f"{m}: mean best-layer accuracy {fmt(round(float(g['value'].mean()), 3))} over "
             f"{len(g)} task(s)" for m, g in best.groupby("model", sort=False)]
    return "; ".join(parts)


HEADLINES: dict[str, Callable[[pd.DataFrame], str]] = {
    "layer_probe": layer_probe,
    "few_shot": few_shot,
    "rsa": pairs,
    "cka": pairs,
    "sentence_probing": sentence_probing,
}


def headline(analysis: str, table: pd.DataFrame | None) -> str:
    """The key numbers of one result (empty when its table says nothing summarisable)."""
    if table is None or not len(table) or "value" not in table.columns:
        return ""
    fn = HEADLINES.get(analysis, best_per_model)
    try:
        return fn(table)
    except (KeyError, ValueError, TypeError) as exc:  # an unusual table: say so, not crash
        return f"(no summary: {type(exc).__name__}: {exc})"


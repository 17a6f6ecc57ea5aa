"""Figures of the transfer (V2), clustering (V4) and CKA (R2) analyses (Agg Figures)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.0, 4.0)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def plot_transfer_bars(table: Any, title: str = "") -> Any:
    """Grouped bars: one group per metric (top-1, top-5, mean per-class recall), one bar per
    (model, site); a dotted chance segment per metric (seed 004 fig 4.4)."""
    fig, axes = _figure(size=(7.0, 4.0))
    ax = axes[0, 0]
    metrics = list(dict.fromkeys(table["metric"])) if len(table) else []
    series = list(dict.fromkeys(zip(table["model"], table["site"]))) if len(table) else []
    width = 0.8 / max(len(series), 1)
    for k, (model, site) in enumerate(series):
        g = table[(table["model"] == model) & (table["site"] == site)].set_index("metric")
        vals = [float(g.loc[m, "value"]) if m in g.index else np.nan for m in metrics]
        xs = np.arange(len(metrics)) + (k - (len(series) - 1) / 2) * width
        label = model if table["site"].nunique() == 1 else f"{model} / {site}"
        ax.bar(xs, vals, width, label=label)
    for i, metric in enumerate(metrics):  # chance differs per metric (top-5 > top-1)
        chance = float(table.loc[table["metric"] == metric, "chance"].max())
        ax.hlines(chance, i - 0.45, i + 0.45, color="grey", ls=":", lw=1,
                  label="chance" if i == 0 else None)
    if len(table):
        ax.legend(fontsize=7)
    ax.set_xticks(np.arange(len(metrics)), metrics, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test score")
    ax.set_title(title)
    return fig


def plot_c_sweep(sweep: Any, title: str = "") -> Any:
    """Validation accuracy vs C (log x axis), one line per (model, site); chosen C marked."""
    fig, axes = _figure()
    ax = axes[0, 0]
    if len(sweep):
        for (model, site), g in sweep.groupby(["model", "site"], sort=False):
            g = g.sort_values("C")
            (line,) = ax.plot(g["C"], g["val_accuracy"], marker=".", ms=4,
                              label=f"{model} / {site}")
            chosen = g[g["chosen"]]
            ax.plot(chosen["C"], chosen["val_accuracy"], "*", ms=10, color=line.get_color())
        ax.set_xscale("log")
        ax.legend(fontsize=7)
    ax.set_xlabel("C (inverse L2 strength)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    return fig


def plot_clustering_vs_layer(table: Any, title: str = "") -> Any:
    """One panel per metric (accuracy, NMI, ARI) vs layer, one line per model."""
    metrics = list(dict.fromkeys(table["metric"])) if len(table) else ["accuracy"]
    fig, axes = _figure(1, len(metrics), size=(3.2 * len(metrics), 3.4))
    for ax, metric in zip(axes[0], metrics):
        t = table[table["metric"] == metric] if len(table) else table
        for model, g in (t.groupby("model", sort=False) if len(t) else []):
            g = g.sort_values("layer")
            ax.plot(g["layer"].to_numpy(float), g["value"].to_numpy(float), marker="o", ms=3,
                    label=model)
        if metric == "accuracy" and len(t):
            ax.axhline(float(t["chance"].max()), color="grey", ls=":", lw=1, label="chance")
        ax.set_xlabel("layer")
        ax.set_title(metric, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig


def plot_cka_heatmap(
    matrix: np.ndarray, rows: Sequence[Any], cols: Sequence[Any], model_a: str, model_b: str,
    title: str = "",
) -> Any:
    """Layer x layer CKA heatmap (rows: layers of ``model_a``, columns: layers of ``model_b``)."""
    na, nb = matrix.shape
    fig, axes = _figure(size=(1.5 + 0.35 * max(nb, 6), 1.0 + 0.35 * max(na, 6)))
    ax = axes[0, 0]
    im = ax.imshow(matrix, origin="lower", cmap="magma", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(nb), [str(c) for c in cols], fontsize=7)
    ax.set_yticks(range(na), [str(r) for r in rows], fontsize=7)
    ax.set_xlabel(f"{model_b} layer")
    ax.set_ylabel(f"{model_a} layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="CKA")
    return fig

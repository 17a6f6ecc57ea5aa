"""Figures of the fusion analyses (F1 fusion degree, F2 / F3 head maps, F6 layer curves).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
figure registry, no backend change).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlprobe.analyses.plotting import new_figure


def plot_fusion_degree(table: Any, title: str = "") -> Any:
    """NMI (mean +- standard error over pairs) by layer, one line per model."""
    fig, axes = new_figure()
    ax = axes[0, 0]
    nmi = table[table["metric"] == "nmi"] if len(table) else table
    for model in dict.fromkeys(nmi["model"]) if len(nmi) else []:
        g = nmi[nmi["model"] == model].sort_values("layer")
        ax.errorbar(g["layer"], g["value"], yerr=g["se"].fillna(0.0), marker="o", capsize=3,
                    label=model)
    if len(nmi):
        ax.legend(fontsize=7)
    ax.set_xlabel("layer (two-stream: cross-modality layer)")
    ax.set_ylabel("NMI(clusters, modality)")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    return fig


def plot_head_maps(table: Any, metrics: list[str], title: str = "",
                   vmax: float | None = None) -> Any:
    """One layer x head heatmap per (model, metric), from the per-head rows (``head`` set);
    layers in order of their index, then site name."""
    heads = table[table["head"].notna()] if len(table) else table
    panels = [(m, x) for m in (dict.fromkeys(heads["model"]) if len(heads) else [])
              for x in metrics if len(heads[(heads["model"] == m) & (heads["metric"] == x)])]
    fig, axes = new_figure(1, max(len(panels), 1), size=(3.6 * max(len(panels), 1), 4.0))
    for ax, (model, metric) in zip(axes[0], panels):
        g = heads[(heads["model"] == model) & (heads["metric"] == metric)]
        sites = sorted(dict.fromkeys(g["site"]), key=lambda s: (
            _layer(g, s), s))
        n_heads = int(g["head"].max()) + 1
        grid = np.full((len(sites), n_heads), np.nan)
        for i, site in enumerate(sites):
            rows = g[g["site"] == site]
            grid[i, rows["head"].astype(int).to_numpy()] = rows["value"].to_numpy()
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax)
        ax.set_yticks(np.arange(len(sites)), [s.removesuffix(".attn") for s in sites],
                      fontsize=6)
        ax.set_xticks(np.arange(n_heads))
        ax.set_xlabel("head")
        ax.set_title(f"{model}: {metric}", fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8)
    if not panels:
        axes[0, 0].set_axis_off()
    fig.suptitle(title, fontsize=9)
    return fig


def _layer(g: Any, site: str) -> float:
    vals = g.loc[g["site"] == site, "layer"].dropna()
    return float(vals.iloc[0]) if len(vals) else float("inf")


def plot_layer_means(table: Any, metrics: list[str], ylabel: str = "", title: str = "",
                     by_site_group: bool = False) -> Any:
    """Layer means over heads (rows without ``head``), mean +- standard error over pairs,
    by layer: one line per (model, metric[, site group])."""
    fig, axes = new_figure()
    ax = axes[0, 0]
    layer_rows = table[table["head"].isna() & table["metric"].isin(metrics)] if len(
        table) else table
    keys = ["model", "metric"] + (["site_group"] if by_site_group and "site_group" in
                                  layer_rows.columns else [])
    if len(layer_rows):
        for key, g in layer_rows.groupby(keys, sort=False):
            g = g.sort_values("layer")
            label = " / ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
            ax.errorbar(g["layer"], g["value"], yerr=g["se"].fillna(0.0), marker="o",
                        capsize=3, label=label)
        ax.legend(fontsize=6)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig

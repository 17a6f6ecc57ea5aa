"""Figures of the probe / few-shot / RSA analyses. Every function returns a Figure (Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.0, 4.0)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def plot_accuracy_vs_layer(table: Any, x: str = "layer", title: str = "") -> Any:
    """Accuracy vs layer, one line per (model, probe); dashed chance line.

    ``x="relative"`` plots layer / last layer of that model (models of different depths).
    """
    fig, axes = _figure()
    ax = axes[0, 0]
    if len(table):
        groups = table.groupby(["model", "probe"], sort=False)
        for (model, probe), g in groups:
            g = g.sort_values("layer")
            xs = g["layer"].to_numpy(dtype=float)
            if x == "relative":
                xs = xs / max(xs.max(), 1.0)
            label = model if table["probe"].nunique() == 1 else f"{model} ({probe})"
            ax.plot(xs, g["value"].to_numpy(), marker="o", ms=3,
                    ls="-" if probe == "linear" else "--", label=label)
        ax.axhline(float(table["chance"].max()), color="grey", ls=":", lw=1, label="chance")
        ax.legend(fontsize=7)
    ax.set_xlabel("relative depth" if x == "relative" else "layer")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    return fig


def plot_few_shot_bars(table: Any, title: str = "") -> Any:
    """Grouped bars: one group per N, one bar per (model, classifier); error bars = se.

    Uses each model's last layer in the table when several layers were evaluated.
    """
    fig, axes = _figure(size=(7.0, 4.0))
    ax = axes[0, 0]
    last = table.groupby("model")["layer"].transform("max")
    t = table[(table["layer"] == last) | table["layer"].isna()]
    shots = sorted(t["shots"].unique())
    series = list(dict.fromkeys(zip(t["model"], t["classifier"])))
    width = 0.8 / max(len(series), 1)
    for k, (model, clf) in enumerate(series):
        g = t[(t["model"] == model) & (t["classifier"] == clf)].set_index("shots")
        vals = [float(g.loc[n, "value"]) if n in g.index else np.nan for n in shots]
        errs = [float(g.loc[n, "se"]) if n in g.index else 0.0 for n in shots]
        xs = np.arange(len(shots)) + (k - (len(series) - 1) / 2) * width
        ax.bar(xs, vals, width, yerr=errs, capsize=2, label=f"{model} / {clf}")
    if len(t):
        ax.axhline(float(t["chance"].max()), color="grey", ls=":", lw=1, label="chance")
    ax.set_xticks(np.arange(len(shots)), [f"N={n}" for n in shots])
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return fig


def plot_matrix_heatmap(
    matrix: np.ndarray, labels: Sequence[str], title: str = "", annotate: bool = True,
    cmap: str = "viridis",
) -> Any:
    """Annotated square heatmap (e.g. model x model RDM correlations)."""
    n = len(labels)
    fig, axes = _figure(size=(2.0 + 0.6 * max(n, 4), 1.0 + 0.6 * max(n, 4)))
    ax = axes[0, 0]
    im = ax.imshow(matrix, cmap=cmap, vmin=np.nanmin(matrix), vmax=np.nanmax(matrix))
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    if annotate and n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] < np.nanmean(matrix) else "black")
    fig.colorbar(im, ax=ax)
    fig.suptitle(title, fontsize=10)  # a figure title never collides with the colour bar
    return fig


def plot_dendrogram(similarity: np.ndarray, labels: Sequence[str], title: str = "") -> Any:
    """Average-linkage dendrogram of models with distance = 1 - r."""
    from scipy.cluster.hierarchy import dendrogram, linkage
    from scipy.spatial.distance import squareform

    dist = 1.0 - np.nan_to_num(np.asarray(similarity, float), nan=0.0)
    dist = np.clip((dist + dist.T) / 2, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    fig, axes = _figure()
    ax = axes[0, 0]
    z = linkage(squareform(dist, checks=False), method="average")
    # one link colour: scipy's cluster colours would look like the run's model colours
    dendrogram(z, labels=list(labels), ax=ax, leaf_rotation=45, color_threshold=0,
               above_threshold_color="#444444")
    ax.set_ylabel("1 - r")
    ax.set_title(title or "Average-linkage clustering of RDMs")
    return fig


def plot_mds(similarity: np.ndarray, labels: Sequence[str], seed: int = 0, title: str = "") -> Any:
    """2-D metric MDS of models on the dissimilarity 1 - r (seeded)."""
    from sklearn.manifold import MDS

    dist = 1.0 - np.nan_to_num(np.asarray(similarity, float), nan=0.0)
    dist = np.clip((dist + dist.T) / 2, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    import inspect

    if "metric_mds" in inspect.signature(MDS).parameters:  # sklearn >= 1.8
        mds = MDS(n_components=2, metric="precomputed", random_state=seed, n_init=4,
                  init="random")
    else:
        mds = MDS(n_components=2, dissimilarity="precomputed", random_state=seed, n_init=4)
    xy = mds.fit_transform(dist)
    fig, axes = _figure()
    ax = axes[0, 0]
    ax.scatter(xy[:, 0], xy[:, 1])
    for (px, py), name in zip(xy, labels):
        ax.annotate(name, (px, py), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_title(title or "MDS of models (1 - RDM correlation)")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def plot_rdms(
    rdms: Mapping[str, np.ndarray], class_names: Sequence[str],
    distances: Mapping[str, str] | None = None, title: str = "",
) -> Any:
    """One RDM heatmap per model (rank-transformed colours are not used: raw distances);
    ``distances`` (model -> distance name) goes into each panel's title."""
    n = len(rdms)
    ncols = min(n, 4)
    nrows = int(np.ceil(n / ncols))
    fig, axes = _figure(nrows, ncols, size=(3.2 * ncols, 3.0 * nrows))
    show_ticks = len(class_names) <= 20
    for k, (model, rdm) in enumerate(rdms.items()):
        ax = axes[k // ncols, k % ncols]
        im = ax.imshow(rdm, cmap="magma")
        ax.set_title(f"{model}" + (f" ({distances[model]})" if distances else ""), fontsize=8)
        if show_ticks:
            ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=6)
            ax.set_yticks(range(len(class_names)), class_names, fontsize=6)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.7)
    for k in range(n, nrows * ncols):
        axes[k // ncols, k % ncols].set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig

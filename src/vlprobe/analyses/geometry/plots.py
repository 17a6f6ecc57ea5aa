"""Figures of the geometry family: R1 (RSA: RDMs, their correlation, dendrogram, MDS) and
R2 (CKA heatmaps). Every function returns a matplotlib Figure built without pyplot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlprobe.analyses.plotting import new_figure as _figure


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

"""V4 ``clustering``: unsupervised spectral clustering of one split, scored against the labels.

Protocol (SCIENCE.md V4; seed 004):

1. Features of the ``split`` items (default ``"test"``; no training data is involved), every
   selected layer of every model.
2. Affinity = cosine similarity of the items' features. Negative similarities are
   ``clip``-ped to 0 (default) or replaced by their absolute value (``abs``); the choice is
   written in the table (column ``negative``) and in the notes. The diagonal is 1.
3. ``sklearn.cluster.SpectralClustering(n_clusters=k, affinity="precomputed",
   random_state=seed)`` with ``k`` = the number of classes in the split (or ``k``).
4. Metrics: ``accuracy`` after a GREEDY one-to-one cluster -> class assignment (repeatedly
   take the largest remaining entry of the cluster x class contingency table, ties -> the
   lowest (cluster, class) index, and remove its row and column; items of unassigned clusters
   count as errors), ``nmi`` (``normalized_mutual_info_score``, arithmetic mean) and ``ari``
   (``adjusted_rand_score``). The optimal (Hungarian) assignment accuracy is an extra column
   (``accuracy_hungarian``); ``chance`` is the majority-class rate of the clustered items.

Items whose features are all zero have cosine 0 with every item (isolated in the graph); this
and a disconnected affinity graph are reported in the notes. A layer whose features are
constant over the items carries no cluster structure: its metrics are NaN (noted). Memory is
``O(n^2)``: ``max_items`` caps n by a seeded stratified subsample (noted).

Bad input: a single class, NaN/Inf features, and ``k`` (or the number of classes) larger
than the number of items clustered raise :class:`AnalysisError` naming the model, split and
where ``k`` came from. ``k`` equal to the number of items is allowed (sklearn's warnings are
copied into the notes). The affinity is precomputed, so there is no ``n_neighbors``.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses._common import (
    SingleSplitPlan,
    check_finite,
    check_labels,
    check_layer_spec,
    select_layer_sites,
)
from vlprobe.analyses.base import Analysis, FeatureSource, Result
from vlprobe.errors import AnalysisError, ConfigError

NEGATIVE = ("clip", "abs")


# --------------------------------------------------------------------------------------------
# maths
# --------------------------------------------------------------------------------------------


def cosine_affinity(x: np.ndarray, negative: str = "clip") -> np.ndarray:
    """``[n, n]`` cosine similarity with negatives clipped to 0 or made absolute; diag = 1."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    z = x / np.maximum(norms, 1e-12)
    s = z @ z.T
    if negative == "clip":
        s = np.maximum(s, 0.0)
    elif negative == "abs":
        s = np.abs(s)
    else:
        raise ConfigError(f"clustering: negative must be one of {NEGATIVE}, got {negative!r}")
    s = np.minimum((s + s.T) / 2, 1.0)
    np.fill_diagonal(s, 1.0)
    return s


def contingency(clusters: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray]:
    """``[n_clusters, n_classes]`` counts, with the cluster ids and class ids (sorted)."""
    cl, ci = np.unique(clusters, return_inverse=True)
    la, li = np.unique(labels, return_inverse=True)
    table = np.zeros((len(cl), len(la)), dtype=np.int64)
    np.add.at(table, (ci, li), 1)
    return table, cl, la


def greedy_assignment(table: np.ndarray) -> list[tuple[int, int]]:
    """Greedy one-to-one (row, column) matching of a contingency table, largest overlap first.

    Ties go to the lowest (row, column) index. Stops when rows or columns run out.
    """
    t = np.asarray(table, dtype=np.float64).copy()
    pairs: list[tuple[int, int]] = []
    rows_left = np.ones(t.shape[0], bool)
    cols_left = np.ones(t.shape[1], bool)
    for _ in range(min(t.shape)):
        masked = np.where(rows_left[:, None] & cols_left[None, :], t, -np.inf)
        r, c = np.unravel_index(int(np.argmax(masked)), t.shape)  # argmax: first = lowest index
        pairs.append((int(r), int(c)))
        rows_left[r] = False
        cols_left[c] = False
    return pairs


def greedy_accuracy(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy after the greedy one-to-one cluster -> class assignment."""
    table, _, _ = contingency(clusters, labels)
    hits = sum(table[r, c] for r, c in greedy_assignment(table))
    return float(hits / len(labels))


def hungarian_accuracy(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy after the optimal one-to-one assignment (scipy ``linear_sum_assignment``)."""
    from scipy.optimize import linear_sum_assignment

    table, _, _ = contingency(clusters, labels)
    r, c = linear_sum_assignment(-table)
    return float(table[r, c].sum() / len(labels))


def spectral_cluster(
    x: np.ndarray, k: int, negative: str = "clip", seed: int = 0, n_init: int = 10,
    assign_labels: str = "kmeans",
) -> tuple[np.ndarray, list[str]]:
    """Cluster ids of the rows of ``x`` and the warnings sklearn raised."""
    from sklearn.cluster import SpectralClustering

    aff = cosine_affinity(x, negative)
    model = SpectralClustering(n_clusters=int(k), affinity="precomputed", random_state=int(seed),
                               n_init=int(n_init), assign_labels=assign_labels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pred = model.fit_predict(aff)
    return np.asarray(pred), [str(w.message) for w in caught]


def clustering_metrics(clusters: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """accuracy (greedy), accuracy_hungarian, nmi and ari of a clustering."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {
        "accuracy": greedy_accuracy(clusters, labels),
        "accuracy_hungarian": hungarian_accuracy(clusters, labels),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
    }


# --------------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------------


class Clustering(SingleSplitPlan, Analysis):
    """Spectral clustering accuracy / NMI / ARI per layer (V4).

    Params:
        split: split to cluster (default ``"test"``).
        layers: ``"all"`` (default), ``"last"``, an int or a list of layer indices.
        k: number of clusters; ``None`` (default) = number of classes in the split.
        negative: ``"clip"`` (default: negative cosines -> 0) or ``"abs"`` (|cos|).
        n_init: k-means restarts in the spectral embedding (10).
        assign_labels: sklearn's ``assign_labels`` (``"kmeans"``, ``"discretize"``,
            ``"cluster_qr"``; default ``"kmeans"``).
        max_items: cap on the number of items (seeded stratified subsample; default 5000;
            ``None`` = all; the affinity is ``n x n`` float64).
        pooling, modality: as for ``layer_probe``.
    """

    name: ClassVar[str] = "clustering"
    catalogue: ClassVar[tuple[str, ...]] = ("V4",)
    summary: ClassVar[str] = "Spectral clustering (cosine affinity): greedy accuracy, NMI, ARI"
    defaults: ClassVar[dict[str, Any]] = {
        "split": "test",
        "layers": "all",
        "k": None,
        "negative": "clip",
        "n_init": 10,
        "assign_labels": "kmeans",
        "max_items": 5000,
        "pooling": None,
        "modality": None,
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        if p["negative"] not in NEGATIVE:
            raise ConfigError(f"clustering: negative must be one of {NEGATIVE}, "
                              f"got {p['negative']!r}")
        if p["k"] is not None and (not isinstance(p["k"], int | np.integer) or p["k"] < 2):
            raise ConfigError(f"clustering: k must be an integer >= 2 or null, got {p['k']!r}")
        if (not isinstance(p["n_init"], int | np.integer) or isinstance(p["n_init"], bool)
                or p["n_init"] < 1):
            raise ConfigError(f"clustering: n_init must be a positive integer, "
                              f"got {p['n_init']!r}")
        if p["assign_labels"] not in ("kmeans", "discretize", "cluster_qr"):
            raise ConfigError(f"clustering: unknown assign_labels {p['assign_labels']!r}")
        if p["max_items"] is not None and int(p["max_items"]) < 2:
            raise ConfigError(f"clustering: max_items must be >= 2 or null, "
                              f"got {p['max_items']!r}")
        check_layer_spec(self.name, "layers", p["layers"], ("all", "last"), allow_none=True)

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        from vlprobe.analyses.vision.plots import plot_clustering_vs_layer

        p = self.params
        plan, notes = self._plan(source)
        notes.append(f"clustering: cosine affinity with negative similarities "
                     f"{'clipped to 0' if p['negative'] == 'clip' else 'replaced by |cos|'} "
                     f"(negative={p['negative']!r})")
        rows: list[dict[str, Any]] = []
        for model, req in plan.items():
            feats = source.get(req)
            labels_all = check_labels(feats, model, f"split {p['split']!r}")
            n_classes = len(np.unique(labels_all))
            if n_classes < 2:
                raise AnalysisError(f"clustering: model {model!r}: split {p['split']!r} of "
                                    f"dataset {self.dataset!r} has a single class; clustering "
                                    "accuracy needs at least 2")
            keep = np.arange(len(labels_all))
            if p["max_items"] is not None and len(keep) > int(p["max_items"]):
                from vlprobe.data.splits import stratified_indices

                keep = stratified_indices(labels_all, int(p["max_items"]), seed=self.seed)
                notes.append(f"clustering: model {model!r}: {len(keep)} of {len(labels_all)} "
                             f"items clustered (seeded stratified subsample, "
                             f"max_items={p['max_items']})")
            labels = labels_all[keep]
            k = int(p["k"]) if p["k"] is not None else n_classes
            if k > len(labels):
                origin = ("parameter `k`" if p["k"] is not None
                          else f"the number of classes in split {p['split']!r}")
                capped = (f" (after the max_items={p['max_items']} subsample of "
                          f"{len(labels_all)})" if len(labels) < len(labels_all) else "")
                raise AnalysisError(
                    f"clustering: model {model!r}: k={k} clusters ({origin}) but only "
                    f"{len(labels)} items to cluster in split {p['split']!r} of dataset "
                    f"{self.dataset!r}{capped}; k must be <= the number of items: lower `k` "
                    "or raise `max_items`")
            counts = np.bincount(np.unique(labels, return_inverse=True)[1])
            chance = float(counts.max() / counts.sum())
            for site in select_layer_sites(feats, p["layers"], model, default="all"):
                x = np.asarray(feats.features[site])[keep]
                check_finite(x, model, site, f"dataset {self.dataset!r} split {p['split']!r}",
                             [feats.ids[i] for i in keep])
                base = {
                    "analysis": self.name, "model": model, "dataset": self.dataset,
                    "layer": feats.layers[site], "site": site, "k": k, "n": len(labels),
                    "n_classes": n_classes, "chance": chance, "negative": p["negative"],
                    "seed": self.seed,
                }
                if np.all(np.ptp(x, axis=0) == 0):
                    notes.append(f"clustering: model {model!r} site {site!r}: features are "
                                 "constant over the items; metrics = NaN")
                    for metric in ("accuracy", "nmi", "ari"):
                        rows.append({**base, "metric": metric, "value": np.nan,
                                     "accuracy_hungarian": np.nan})
                    continue
                n_zero = int((np.linalg.norm(x, axis=1) == 0).sum())
                if n_zero:
                    notes.append(f"clustering: model {model!r} site {site!r}: {n_zero} item(s) "
                                 "with all-zero features (cosine 0 to every item)")
                pred, warns = spectral_cluster(x, k, p["negative"], self.seed, int(p["n_init"]),
                                               p["assign_labels"])
                for w in dict.fromkeys(warns):
                    notes.append(f"clustering: model {model!r} site {site!r}: sklearn: {w}")
                m = clustering_metrics(pred, labels)
                for metric in ("accuracy", "nmi", "ari"):
                    rows.append({**base, "metric": metric, "value": m[metric],
                                 "accuracy_hungarian": m["accuracy_hungarian"]})
        table = pd.DataFrame(rows)
        fig = plot_clustering_vs_layer(table, title=f"Spectral clustering ({self.dataset}, "
                                                    f"negative={p['negative']})")
        return Result(analysis=self.name, catalogue=self.catalogue, table=table,
                      figures={"clustering_vs_layer": fig}, params=dict(p), notes=notes)

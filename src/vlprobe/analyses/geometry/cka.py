"""R2 ``cka``: centred kernel alignment between every layer of two models (or of one model).

For items ``i = 1..n`` (the same items, in the same order, for both models) with features
``X`` ``[n, Dx]`` and ``Y`` ``[n, Dy]``, kernels ``K = k(X, X)`` and ``L = l(Y, Y)``:

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))

Kernels:

- ``linear``: ``K = Xc Xc^T`` (features centred first).
- ``rbf``: ``K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2))`` with ``sigma = rbf_sigma x median``
  of the pairwise Euclidean distances (off-diagonal), the median heuristic of Kornblith et al.
  (2019).

HSIC estimators:

- ``unbiased`` (default; Song et al. 2012, as used for "debiased" CKA by Nguyen et al. 2021):
  with ``K~``, ``L~`` the kernels with zeroed diagonals and ``n >= 4``::

      HSIC_u = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3))

  computed as ``<U(K), U(L)>_F / (n(n-3))`` with the U-centred Gram ``U`` (Szekely & Rizzo):
  ``U_ij = K~_ij - r_i/(n-2) - r_j/(n-2) + s/((n-1)(n-2))`` off the diagonal, 0 on it
  (``r`` row sums, ``s`` total sum of ``K~``). CKA is then the cosine between U-centred Grams;
  it is 1 for identical representations and can be slightly negative for unrelated ones.
- ``biased``: ``HSIC_b = tr(K H L H) / (n-1)^2`` (``H`` the centring matrix). With the linear
  kernel this is ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on centred features.

Linear kernel in feature space: no ``[n, n]`` Gram is formed. With ``K = Xc Xc^T``,
``L = Yc Yc^T``, ``k = diag(K)`` (squared row norms), ``K~ 1 = Xc (Xc^T 1) - k``::

    tr(K~ L~)  = ||Xc^T Yc||_F^2 - k . l
    1^T K~ 1   = ||Xc^T 1||^2 - sum(k)
    1^T K~ L~ 1 = (K~ 1) . (L~ 1)

so the unbiased HSIC costs ``O(n Dx Dy)`` instead of ``O(n^2 (Dx + Dy))`` (10k x 768: about
7x faster; bench/bench_cka.py, numbers in bench/RESULTS.md). ``||Xc^T Yc||_F^2 = <K, L>_F``
goes through the Grams instead when the features are wide (``Dx Dy > n (Dx + Dy) / 2``).
The biased linear HSIC is ``||Xc^T Yc||_F^2 / (n-1)^2``. The RBF kernel uses the Grams.

A layer whose kernel is degenerate (features identical for every item; RBF median distance
0; a U-centred Gram that is 0) gets NaN with a note (never a division by zero). NaN/Inf
features, models that saw different items and fewer than 4 items raise
:class:`AnalysisError` naming the model, site and split. Memory: the RBF kernel holds one
``[n, n]`` float64 Gram per layer; ``max_items`` (default 2000) caps ``n`` by a seeded,
stratified subsample (the same items for every model; noted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses._common import (
    SingleSplitPlan,
    check_finite,
    embedding_site,
    is_constant,
    select_layer_sites,
)
from vlprobe.analyses.base import Analysis, FeatureSource, LayerFeatures, Result
from vlprobe.errors import AnalysisError, ConfigError

KERNELS = ("linear", "rbf")
ESTIMATORS = ("unbiased", "biased")


# --------------------------------------------------------------------------------------------
# maths
# --------------------------------------------------------------------------------------------


def gram_linear(x: np.ndarray) -> np.ndarray:
    """``Xc Xc^T`` of the centred features (float64)."""
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(0, keepdims=True)
    return xc @ xc.T


def gram_rbf(x: np.ndarray, sigma_factor: float = 1.0) -> np.ndarray | None:
    """RBF Gram with ``sigma = sigma_factor x median pairwise distance``; None if that is 0."""
    x = np.asarray(x, dtype=np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    np.fill_diagonal(d2, 0.0)
    off = d2[~np.eye(len(x), dtype=bool)]
    med = float(np.median(np.sqrt(off))) if off.size else 0.0
    sigma = float(sigma_factor) * med
    if not sigma > 0:
        return None
    return np.exp(-d2 / (2.0 * sigma**2))


def center_gram(k: np.ndarray, estimator: str = "unbiased") -> np.ndarray:
    """U-centred (``unbiased``, needs n >= 4) or doubly centred ``H K H`` (``biased``) Gram."""
    k = np.array(k, dtype=np.float64, copy=True)
    n = k.shape[0]
    if estimator == "biased":
        k -= k.mean(0, keepdims=True)
        k -= k.mean(1, keepdims=True)
        return k
    if estimator != "unbiased":
        raise ConfigError(f"cka: unknown estimator {estimator!r}; known: {ESTIMATORS}")
    if n < 4:
        raise AnalysisError(f"cka: the unbiased HSIC estimator needs n >= 4 items, got {n}")
    np.fill_diagonal(k, 0.0)
    means = k.sum(0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    k -= means[:, None]
    k -= means[None, :]
    np.fill_diagonal(k, 0.0)
    return k


def hsic(k: np.ndarray, l_: np.ndarray, estimator: str = "unbiased") -> float:
    """HSIC of two Gram matrices (see the module docstring for both estimators)."""
    n = k.shape[0]
    a, b = center_gram(k, estimator), center_gram(l_, estimator)
    scale = n * (n - 3) if estimator == "unbiased" else (n - 1) ** 2
    return float(np.sum(a * b) / scale)


def cka_from_centered(a: np.ndarray, b: np.ndarray) -> float:
    """CKA of two centred Grams (cosine of the flattened matrices); NaN if one is zero."""
    den = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / den) if den > 0 else float("nan")


# Hand-written: none of vlprobe's dependencies (scipy, sklearn, rsatoolbox) offers CKA, and
# the feature-space expansion of the unbiased estimator is what makes 10k items cheap.
# Checked against the Gram formulas in tests/unit/test_cka.py.
@dataclass
class LinearTerms:
    """Feature-space summary of one layer for linear-kernel HSIC (``K = Xc Xc^T``, never formed).

    Attributes:
        xc: ``[n, D]`` centred features (float64).
        sq: ``[n]`` squared row norms ``diag(K)``.
        k1: ``[n]`` row sums of ``K~`` (``K`` with a zeroed diagonal): ``Xc (Xc^T 1) - sq``.
        total: ``1^T K~ 1 = ||Xc^T 1||^2 - sum(sq)``.
        estimator: ``"unbiased"`` or ``"biased"``.
        hsic_self: ``HSIC(K, K)`` of ``estimator`` (set by :func:`linear_terms`).
    """

    xc: np.ndarray
    sq: np.ndarray
    k1: np.ndarray
    total: float
    estimator: str
    hsic_self: float = float("nan")


def linear_terms(x: np.ndarray, estimator: str = "unbiased") -> LinearTerms:
    """:class:`LinearTerms` of features ``x`` ``[n, D]`` (O(n D^2) for the self-HSIC)."""
    if estimator not in ESTIMATORS:
        raise ConfigError(f"cka: unknown estimator {estimator!r}; known: {ESTIMATORS}")
    n = len(x)
    if estimator == "unbiased" and n < 4:
        raise AnalysisError(f"cka: the unbiased HSIC estimator needs n >= 4 items, got {n}")
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(0, keepdims=True)
    sq = np.einsum("ij,ij->i", xc, xc)
    col = xc.sum(0)  # Xc^T 1: zero up to rounding, kept so the identities hold exactly
    terms = LinearTerms(xc, sq, xc @ col - sq, float(col @ col - sq.sum()), estimator)
    terms.hsic_self = linear_hsic(terms, terms)
    return terms


def _self_frobenius(a: np.ndarray) -> float:
    """``||A^T A||_F^2 = ||A A^T||_F^2`` of float64 ``A`` ``[n, D]`` through BLAS ``dsyrk`` on
    the smaller side: it fills one triangle, half the work of numpy's ``a.T @ a``."""
    from scipy.linalg.blas import dsyrk

    n, d = a.shape
    # a.T is Fortran-ordered, so neither call copies; dsyrk returns the upper triangle
    upper = dsyrk(1.0, a.T, trans=0) if d <= n else dsyrk(1.0, a.T, trans=1)
    diag = np.diagonal(upper)
    return float(2.0 * np.vdot(upper, upper) - np.vdot(diag, diag))


def _frobenius_cross(a: np.ndarray, b: np.ndarray) -> float:
    """``||A^T B||_F^2 = <A A^T, B B^T>_F`` for ``A`` ``[n, Da]``, ``B`` ``[n, Db]``, by
    whichever side is cheaper (features when ``Da Db <= n (Da + Db) / 2``, else the Grams)."""
    n, da = a.shape
    db = b.shape[1]
    if a is b:
        return _self_frobenius(a)
    if da * db <= n * (da + db) / 2:
        m = a.T @ b
        return float(np.vdot(m, m))
    return float(np.vdot(a @ a.T, b @ b.T))


def linear_hsic(a: LinearTerms, b: LinearTerms) -> float:
    """HSIC of two linear kernels from their :class:`LinearTerms` (same items, estimator)."""
    n = len(a.sq)
    if len(b.sq) != n or a.estimator != b.estimator:
        raise AnalysisError(f"cka: linear terms of {n} and {len(b.sq)} items "
                            f"({a.estimator} vs {b.estimator}) cannot be combined")
    cross = _frobenius_cross(a.xc, b.xc)  # tr(K L)
    if a.estimator == "biased":
        return cross / (n - 1) ** 2
    trace = cross - float(a.sq @ b.sq)  # tr(K~ L~)
    return (trace + a.total * b.total / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * float(a.k1 @ b.k1)) / (n * (n - 3))


def linear_cka(a: LinearTerms, b: LinearTerms) -> float:
    """Linear CKA from :class:`LinearTerms`; NaN if a self-HSIC is not positive."""
    den = a.hsic_self * b.hsic_self
    return linear_hsic(a, b) / np.sqrt(den) if a.hsic_self > 0 and b.hsic_self > 0 else np.nan


def cka(
    x: np.ndarray, y: np.ndarray, kernel: str = "linear", estimator: str = "unbiased",
    rbf_sigma: float = 1.0,
) -> float:
    """CKA between features ``x`` ``[n, Dx]`` and ``y`` ``[n, Dy]`` of the same n items
    (linear: in feature space; rbf: through the ``[n, n]`` Grams)."""
    if len(x) != len(y):
        raise AnalysisError(f"cka: x has {len(x)} items, y has {len(y)}")
    if kernel == "linear":
        a, b = linear_terms(x, estimator), linear_terms(y, estimator)
        return float("nan") if is_constant(x) or is_constant(y) else float(linear_cka(a, b))
    grams = [_gram(z, kernel, rbf_sigma) for z in (x, y)]
    if grams[0] is None or grams[1] is None:
        return float("nan")
    return cka_from_centered(center_gram(grams[0], estimator), center_gram(grams[1], estimator))


def _gram(x: np.ndarray, kernel: str, rbf_sigma: float) -> np.ndarray | None:
    """The ``[n, n]`` Gram of the kernels that need one (rbf; linear works in feature space)."""
    if kernel == "rbf":
        return gram_rbf(x, rbf_sigma)
    raise ConfigError(f"cka: unknown kernel {kernel!r}; known: {KERNELS}")


def cka_matrix(
    grams_a: list[np.ndarray | None], grams_b: list[np.ndarray | None]
) -> np.ndarray:
    """``[len(a), len(b)]`` CKA between lists of centred Grams (None -> NaN row/column)."""
    out = np.full((len(grams_a), len(grams_b)), np.nan)
    flat_a = [None if g is None else np.ravel(g) for g in grams_a]
    flat_b = [None if g is None else np.ravel(g) for g in grams_b]
    norms_b = [0.0 if g is None else float(np.sqrt(np.dot(g, g))) for g in flat_b]
    for i, ga in enumerate(flat_a):
        if ga is None:
            continue
        na = float(np.sqrt(np.dot(ga, ga)))
        for j, gb in enumerate(flat_b):
            if gb is None or na == 0 or norms_b[j] == 0:
                continue
            out[i, j] = float(np.dot(ga, gb) / (na * norms_b[j]))
    return out


def linear_cka_matrix(
    terms_a: list[LinearTerms | None], terms_b: list[LinearTerms | None]
) -> np.ndarray:
    """``[len(a), len(b)]`` linear CKA between lists of :class:`LinearTerms` (None -> NaN)."""
    out = np.full((len(terms_a), len(terms_b)), np.nan)
    for i, ta in enumerate(terms_a):
        for j, tb in enumerate(terms_b):
            if ta is not None and tb is not None:
                out[i, j] = float(linear_cka(ta, tb))
    return out


def _layer_kernel(
    x: np.ndarray, kernel: str, estimator: str, rbf_sigma: float
) -> LinearTerms | np.ndarray | None:
    """What one layer contributes to CKA: :class:`LinearTerms` (linear kernel) or the centred
    ``[n, n]`` Gram (rbf); None if the kernel is degenerate (constant features)."""
    if kernel == "linear":
        terms = linear_terms(x, estimator)
        return None if is_constant(x) or not terms.hsic_self > 0 else terms
    g = _gram(x, kernel, rbf_sigma)
    c = None if g is None else center_gram(g, estimator)
    return None if c is None or not np.any(c) else c


# --------------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------------


def _tick(feats: LayerFeatures, site: str) -> str:
    layer = feats.layers[site]
    return "emb" if layer is None else str(layer)


class CKA(SingleSplitPlan, Analysis):
    """Layer x layer CKA between models (R2).

    Params:
        split: split whose items all models see (default ``"test"``).
        layers: ``"all"`` (default), ``"last"``, an int or a list of layer indices (per model).
        kernels: subset of ``["linear", "rbf"]`` (default both).
        estimator: ``"unbiased"`` (default, Song et al. 2012) or ``"biased"``.
        rbf_sigma: RBF bandwidth as a multiple of the median pairwise distance (1.0).
        max_items: cap on the number of items (seeded stratified subsample; default 2000;
            ``None`` = all).
        pairs: list of ``[model_a, model_b]`` pairs; ``None`` (default) = every unordered pair
            of the models, plus each model with itself when ``self_pairs`` is true.
        self_pairs: include (model, model) layer x layer matrices (default true).
        include_embedding: also compare each model's embedding site (its final pooled /
            projected output; layer = None, shown as "emb" in the heatmaps); default false.
        pooling, modality: as for ``layer_probe``.
    """

    name: ClassVar[str] = "cka"
    catalogue: ClassVar[tuple[str, ...]] = ("R2",)
    summary: ClassVar[str] = "Layer x layer CKA (linear / RBF, unbiased HSIC) between models"
    defaults: ClassVar[dict[str, Any]] = {
        "split": "test",
        "layers": "all",
        "kernels": list(KERNELS),
        "estimator": "unbiased",
        "rbf_sigma": 1.0,
        "max_items": 2000,
        "pairs": None,
        "self_pairs": True,
        "include_embedding": False,
        "pooling": None,
        "modality": None,
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        kernels = [p["kernels"]] if isinstance(p["kernels"], str) else list(p["kernels"] or [])
        if not kernels or any(k not in KERNELS for k in kernels):
            raise ConfigError(f"cka: kernels must be a subset of {KERNELS}, got {p['kernels']!r}")
        p["kernels"] = kernels
        if p["estimator"] not in ESTIMATORS:
            raise ConfigError(f"cka: estimator must be one of {ESTIMATORS}, "
                              f"got {p['estimator']!r}")
        if not float(p["rbf_sigma"]) > 0:
            raise ConfigError(f"cka: rbf_sigma must be > 0, got {p['rbf_sigma']!r}")
        if p["max_items"] is not None and int(p["max_items"]) < 4:
            raise ConfigError(f"cka: max_items must be >= 4 or null, got {p['max_items']!r}")
        if p["pairs"] is not None:
            pairs = []
            for pair in p["pairs"]:
                if len(pair) != 2 or any(m not in self.models for m in pair):
                    raise ConfigError(f"cka: each pair must name two of the analysis' models "
                                      f"{self.models}, got {pair!r}")
                pairs.append([str(pair[0]), str(pair[1])])
            p["pairs"] = pairs

    def _pairs(self, models: list[str]) -> list[tuple[str, str]]:
        p = self.params
        if p["pairs"] is not None:
            return [(a, b) for a, b in p["pairs"] if a in models and b in models]
        pairs = []
        for i, a in enumerate(models):
            for b in models[i:]:
                if a != b or p["self_pairs"] or len(models) == 1:
                    pairs.append((a, b))
        return pairs

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        from vlprobe.analyses.geometry.plots import plot_cka_heatmap

        p = self.params
        plan, notes = self._plan(source)
        feats: dict[str, LayerFeatures] = {m: source.get(r) for m, r in plan.items()}
        models = list(feats)
        ref = models[0]
        ref_ids = list(feats[ref].ids)
        # same items in the same order for every model
        order: dict[str, np.ndarray] = {}
        for m in models:
            ids = list(feats[m].ids)
            if ids == ref_ids:
                order[m] = np.arange(len(ids))
            elif sorted(ids) == sorted(ref_ids) and len(set(ids)) == len(ids):
                pos = {item: i for i, item in enumerate(ids)}
                order[m] = np.array([pos[item] for item in ref_ids])
                notes.append(f"cka: model {m!r}: items reordered to match model {ref!r}")
            else:
                extra = sorted(set(ids) ^ set(ref_ids))[:3]
                raise AnalysisError(
                    f"cka: models {ref!r} and {m!r} saw different items of split "
                    f"{p['split']!r} ({len(ref_ids)} vs {len(ids)} items; e.g. {extra}); CKA "
                    "needs the same items in the same order"
                )
        n_all = len(ref_ids)
        if n_all < 4:
            raise AnalysisError(f"cka: split {p['split']!r} has {n_all} items; CKA needs >= 4")
        keep = np.arange(n_all)
        if p["max_items"] is not None and n_all > int(p["max_items"]):
            from vlprobe.data.splits import stratified_indices

            labels = feats[ref].labels
            strata = np.asarray(labels) if labels is not None else np.zeros(n_all)
            keep = stratified_indices(strata, int(p["max_items"]), seed=self.seed)
            notes.append(f"cka: {len(keep)} of {n_all} items used (seeded stratified subsample, "
                         f"max_items={p['max_items']})")
        n = len(keep)

        sites: dict[str, list[str]] = {}
        # per (model, kernel): one entry per site: LinearTerms (linear), a centred Gram (rbf)
        # or None (degenerate)
        centred: dict[tuple[str, str], list[Any]] = {}
        for m in models:
            sites[m] = select_layer_sites(feats[m], p["layers"], m, default="all")
            if p["include_embedding"]:
                emb = embedding_site(feats[m])
                if emb is None:
                    notes.append(f"cka: model {m!r} has no embedding site")
                else:
                    sites[m].append(emb)
            for kernel in p["kernels"]:
                layer_kernels: list[Any] = []
                for site in sites[m]:
                    x = feats[m].features[site][order[m][keep]]
                    check_finite(x, m, site, f"dataset {self.dataset!r} split {p['split']!r}",
                                 [feats[m].ids[i] for i in order[m][keep]])
                    c = _layer_kernel(x, kernel, p["estimator"], float(p["rbf_sigma"]))
                    if c is None:
                        notes.append(f"cka: model {m!r} site {site!r}: features are constant "
                                     f"over the items ({kernel} Gram degenerate); CKA = NaN")
                    layer_kernels.append(c)
                centred[(m, kernel)] = layer_kernels

        rows: list[dict[str, Any]] = []
        figures: dict[str, Any] = {}
        for a, b in self._pairs(models):
            fa, fb = feats[a], feats[b]
            for kernel in p["kernels"]:
                matrix = linear_cka_matrix if kernel == "linear" else cka_matrix
                mat = matrix(centred[(a, kernel)], centred[(b, kernel)])
                for i, sa in enumerate(sites[a]):
                    for j, sb in enumerate(sites[b]):
                        rows.append({
                            "analysis": self.name, "model": a, "dataset": self.dataset,
                            "layer": fa.layers[sa], "site": sa, "model_b": b,
                            "layer_b": fb.layers[sb], "site_b": sb, "metric": f"cka_{kernel}",
                            "value": float(mat[i, j]), "kernel": kernel,
                            "estimator": p["estimator"], "n": n, "seed": self.seed,
                        })
                figures[f"cka_{kernel}_{a}_vs_{b}"] = plot_cka_heatmap(
                    mat, [_tick(fa, s) for s in sites[a]], [_tick(fb, s) for s in sites[b]], a, b,
                    title=f"{kernel} CKA ({p['estimator']}), {self.dataset}: {a} vs {b}",
                )
        notes = list(dict.fromkeys(notes))
        return Result(analysis=self.name, catalogue=self.catalogue, table=pd.DataFrame(rows),
                      figures=figures, params=dict(p), notes=notes)

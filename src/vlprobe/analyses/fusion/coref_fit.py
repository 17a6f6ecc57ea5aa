"""Probers of F5 (scikit-learn): grouped cross-validated accuracy of a linear or bilinear
logistic-regression prober, and the attention prober's per-feature weights."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from vlprobe.errors import AnalysisError


def bilinear_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``[N, (d_u + 1) * (d_v + 1)]`` outer products ``vec([u_i; 1] [v_i; 1]^T)``: a linear
    model on them is the bilinear form ``[u; 1]^T M [v; 1]`` (one ``M`` per class). The
    constant 1 keeps the terms that are linear in ``u`` or ``v`` alone, which eq. 4's product
    of projections of UNcentred embeddings has too (PCA centres them); without it a phrase
    that names its category could not be read unless the region's embedding helped."""
    ones = np.ones((len(u), 1))
    u1, v1 = np.hstack([u, ones]), np.hstack([v, ones])
    return np.einsum("ni,nj->nij", u1, v1).reshape(len(u), -1)


def _prober(cs: Sequence[float], max_iter: int, seed: int):
    """Standardisation + logistic regression; ``C`` chosen among ``cs`` by 3 inner folds
    (one value: no inner search)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(cs) == 1:
        return make_pipeline(StandardScaler(), LogisticRegression(
            C=float(cs[0]), max_iter=int(max_iter), random_state=seed))
    return make_pipeline(StandardScaler(), LogisticRegressionCV(
        Cs=[float(c) for c in cs], cv=3, max_iter=int(max_iter), random_state=seed))


def _fold_features(x, z, train, test, dim, seed):
    """Features of one fold: ``x`` as is, or the bilinear features of ``x`` and ``z`` each
    reduced to ``dim`` principal components fit on the training rows."""
    if z is None:
        return x[train], x[test]
    from sklearn.decomposition import PCA

    out = []
    for m in (x, z):
        k = int(min(dim, m.shape[1], len(train) - 1))
        pca = PCA(n_components=k, random_state=seed).fit(m[train])
        out.append((pca.transform(m[train]), pca.transform(m[test])))
    return (bilinear_features(out[0][0], out[1][0]), bilinear_features(out[0][1], out[1][1]))


def cv_accuracy(
    x: np.ndarray, z: np.ndarray | None, y: np.ndarray, groups: np.ndarray, seed: int,
    n_folds: int = 5, Cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0), max_iter: int = 2000,
    bilinear_dim: int = 16,
) -> tuple[float, float]:
    """``(mean accuracy, standard error)`` over ``n_folds`` outer folds grouped by
    ``groups`` (``StratifiedGroupKFold``, shuffled with ``seed``); inside each, the prober
    (standardised features, ``LogisticRegressionCV`` over ``Cs``) is fit on the training rows.
    ``z`` given: the bilinear prober of ``x`` and ``z`` (:func:`bilinear_features`)."""
    from sklearn.model_selection import StratifiedGroupKFold

    x = np.asarray(x, dtype=np.float64)
    z = None if z is None else np.asarray(z, dtype=np.float64)
    y = np.asarray(y)
    k = int(min(n_folds, len(np.unique(groups))))
    if k < 2:
        raise AnalysisError(f"cross-validation needs items of at least 2 images, got {k}")
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    accs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence / tiny-class warnings of small folds
        for train, test in folds.split(x, y, groups):
            if len(np.unique(y[train])) < 2:
                continue
            xt, xs = _fold_features(x, z, train, test, bilinear_dim, seed)
            model = _prober(Cs, max_iter, seed).fit(xt, y[train])
            accs.append(float(np.mean(model.predict(xs) == y[test])))
    if not accs:
        raise AnalysisError("no cross-validation fold had two classes to train on")
    a = np.asarray(accs)
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0


def head_importance(x: np.ndarray, y: np.ndarray, c: float, max_iter: int) -> np.ndarray:
    """``[F]`` mean |coefficient| per feature of a logistic regression on standardised ``x``
    (all rows): the features a linear prober leans on."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xs = StandardScaler().fit_transform(np.asarray(x, dtype=np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LogisticRegression(C=float(c), max_iter=int(max_iter)).fit(xs, y)
    return np.abs(model.coef_).mean(axis=0)


__all__ = ["bilinear_features", "cv_accuracy", "head_importance"]

"""One-vs-rest binary logistic probes for multi-label targets (M7's multi-label probe): one
batched solve per label over every feature set, C chosen on validation
(:func:`~vlprobe.estimators.logistic.select.select_and_evaluate`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from vlprobe.estimators.logistic.path import DEFAULT_CS
from vlprobe.estimators.logistic.select import select_and_evaluate


def fit_ovr_logistic(
    train: tuple[Sequence[np.ndarray], np.ndarray],
    val: tuple[Sequence[np.ndarray], np.ndarray],
    test_X: Sequence[np.ndarray],
    Cs: Sequence[float] = DEFAULT_CS,
    **fit_kwargs: Any,
) -> tuple[list[np.ndarray], np.ndarray, list[int], list[Any]]:
    """One-vs-rest binary logistic probes, every feature set at once per label.

    ``train`` / ``val``: ``(X_sets, Y [N, K])``. Returns (per set ``[N_test, K]`` 0/1
    predictions, ``[n_sets, K]`` chosen C (NaN for constant labels), indices of the labels
    predicted constant because train has a single value for them, the per-label
    :class:`~vlprobe.estimators.logistic.ProbeSelection` s with their coefficients dropped
    (for the convergence and memory notes)).
    """
    Xtr, Ytr = train
    Xva, Yva = val
    n_sets, K = len(Xtr), Ytr.shape[1]
    n_test = len(test_X[0])
    preds = [np.zeros((n_test, K), dtype=np.int64) for _ in range(n_sets)]
    best_C = np.full((n_sets, K), np.nan)
    constant = []
    fits = []
    for k in range(K):
        ytr, yva = Ytr[:, k], Yva[:, k]
        if len(np.unique(ytr)) < 2:
            constant.append(k)
            for s in range(n_sets):
                preds[s][:, k] = int(ytr[0])
            continue
        sel = select_and_evaluate((Xtr, ytr), (Xva, yva), (test_X, np.zeros(n_test, np.int64)),
                                  Cs, **fit_kwargs)
        p = sel.refit.predict(test_X)[:, 0, :]  # [n_sets, N_test] in {0, 1}
        for s in range(n_sets):
            preds[s][:, k] = p[s]
        best_C[:, k] = sel.best_C
        fits.extend(replace(path, coef=[], intercept=[]) for path in (sel.path, sel.refit))
    return preds, best_C, constant, fits

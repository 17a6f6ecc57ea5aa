"""Selection protocol: choose C per layer on validation, refit on train + val, test
(:func:`select_and_evaluate`); and :func:`convergence_note`, the line every solver-backed
analysis writes when some probes did not meet the gradient tolerance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlprobe.estimators.logistic.lbfgs import STOP_REASONS
from vlprobe.estimators.logistic.path import DEFAULT_CS, ProbePath, fit_logistic_path

_REASON_TEXT = {
    "max_iter": "stopped at max_iter",
    "stagnation": "stopped because the objective stagnated (no decrease at float precision)",
    "line_search": "stopped on a failed line search",
}


def convergence_note(what: str, converged: Any, stop_reason: Any, tol: float,
                     max_iter: int) -> str | None:
    """``None`` if every probe met ``max |grad| <= tol``; else one line giving how many did
    not, by stop reason, e.g. ``"layer_probe: model 'm': 3 of 112 logistic probes did not
    reach max |grad| <= tol=0.0001: 2 stopped at max_iter (1000); 1 ..."``.

    ``converged`` / ``stop_reason``: same-shaped arrays (e.g. :attr:`ProbePath.converged` and
    :attr:`ProbePath.stop_reason`, or their concatenation over several fits).
    """
    conv = np.asarray(converged, dtype=bool).ravel()
    reasons = np.asarray(stop_reason, dtype=object).ravel()
    bad = ~conv
    if not bad.any():
        return None
    parts = []
    for r in STOP_REASONS:  # (a probe stopped by the gradient test is always converged)
        k = int((reasons[bad] == r).sum())
        if k:
            parts.append(f"{k} {_REASON_TEXT.get(r, r)}"
                         + (f" ({max_iter})" if r == "max_iter" else ""))
    return (f"{what}: {int(bad.sum())} of {conv.size} logistic probes did not reach max |grad| "
            f"<= tol={tol:g}: " + "; ".join(parts))


def stop_diagnostics(paths: Sequence[ProbePath]) -> tuple[np.ndarray, np.ndarray]:
    """``(converged, stop_reason)`` of every probe of ``paths``, flattened and concatenated."""
    return (np.concatenate([np.asarray(p.converged).ravel() for p in paths]),
            np.concatenate([np.asarray(p.stop_reason, dtype=object).ravel() for p in paths]))


def memory_note(what: str, paths: Sequence[ProbePath]) -> str | None:
    """The solver's peak-memory estimate of the largest of ``paths`` (one line), or None."""
    plans = [p.plan for p in paths if p.plan is not None]
    if not plans:
        return None
    return f"{what}: " + max(plans, key=lambda pl: pl.peak_bytes).describe()


@dataclass
class ProbeSelection:
    """Outcome of :func:`select_and_evaluate` (one entry per layer).

    Attributes:
        Cs: the sweep.
        val_accuracy: ``[L, P]`` validation accuracy of the probes fitted on train.
        best_C: ``[L]`` selected C (highest val accuracy; ties -> the smallest C).
        test_accuracy: ``[L]`` test accuracy of the probe refitted on train + val at best_C.
        path: the train-only path; refit: the train+val probes.
    """

    Cs: np.ndarray
    val_accuracy: np.ndarray
    best_C: np.ndarray
    test_accuracy: np.ndarray
    path: ProbePath
    refit: ProbePath

    @property
    def converged(self) -> bool:
        """Whether every probe (train-only path and refit) met the gradient tolerance."""
        return bool(self.path.converged.all() and self.refit.converged.all())

    def convergence_note(self, what: str, tol: float, max_iter: int) -> str | None:
        """:func:`convergence_note` over the path and the refit."""
        return convergence_note(what, *stop_diagnostics([self.path, self.refit]), tol, max_iter)

    def memory_note(self, what: str) -> str | None:
        """:func:`memory_note` over the path and the refit."""
        return memory_note(what, [self.path, self.refit])

    def layer_summary(self, layer: int) -> dict[str, float]:
        """``value`` (test accuracy), selected ``C`` and its ``val_accuracy`` for one layer."""
        best = int(np.flatnonzero(np.asarray(self.Cs) == self.best_C[layer])[0])
        return {
            "value": float(self.test_accuracy[layer]),
            "C": float(self.best_C[layer]),
            "val_accuracy": float(self.val_accuracy[layer, best]),
        }


def select_and_evaluate(
    train: tuple[Sequence[np.ndarray], np.ndarray],
    val: tuple[Sequence[np.ndarray], np.ndarray],
    test: tuple[Sequence[np.ndarray], np.ndarray],
    Cs: Sequence[float] = DEFAULT_CS,
    *,
    refit: bool = True,
    **fit_kwargs: Any,
) -> ProbeSelection:
    """CLIP protocol: fit the C path on train, pick C per layer on val, refit on train + val.

    Each argument is ``(X_layers, y)``. With ``refit=False`` the train-only probe at the
    selected C is evaluated instead.
    """
    Xtr, ytr = train
    Xva, yva = val
    Xte, yte = test
    Cs_arr = np.asarray(Cs, dtype=np.float64)
    path = fit_logistic_path(Xtr, ytr, Cs_arr, **fit_kwargs)
    val_acc = path.score(Xva, yva)  # [L, P]
    # ties -> first index of the sorted sweep = the smallest C (strongest regularisation)
    order = np.argsort(Cs_arr)
    best = np.array(
        [order[np.flatnonzero(row[order] >= row.max() - 1e-12)[0]] for row in val_acc]
    )
    best_C = Cs_arr[best]
    if refit:
        X_all = [(a, b) for a, b in zip(Xtr, Xva)]  # row blocks: no concatenated copy
        y_all = np.concatenate([np.asarray(ytr), np.asarray(yva)])
        # warm start from the train-only probe at the selected C (fewer iterations)
        init = []
        for layer, p_idx in enumerate(best):
            w, b0 = path.coef_original(layer, int(p_idx))
            init.append((w[None], b0[None]))
        same_classes = np.array_equal(np.unique(y_all), path.classes)
        final = fit_logistic_path(X_all, y_all, layer_Cs=best_C[:, None],
                                  init=init if same_classes else None, **fit_kwargs)
        test_acc = final.score(Xte, yte)[:, 0]
    else:
        final = path
        test_acc = path.score(Xte, yte)[np.arange(len(best)), best]
    return ProbeSelection(Cs_arr, val_acc, best_C, test_acc, path, final)

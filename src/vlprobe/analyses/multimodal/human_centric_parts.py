"""The pieces of M7 (:mod:`vlprobe.analyses.multimodal.human_centric`): metrics, label sets and
the probes of one encoder pair (the one-vs-rest logistic probes are
:func:`vlprobe.estimators.logistic.ovr.fit_ovr_logistic`; the figure is in
:mod:`vlprobe.analyses.multimodal.plots`).

- :func:`single_label_scores` / :func:`multi_label_scores`: the metrics of the result table.
- :func:`parse_label_sets` / :func:`label_matrix`: multi-label descriptors -> ``[N, K]`` 0/1.
- :func:`align_rows` / :func:`check_same_labels`: the two towers' rows of one item set.
- :func:`probe_single_label` / :func:`probe_multi_label`: the linear and MLP probes of one
  encoder pair's feature sets, scored on test, with the solver's notes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlprobe.analyses._common import solver_options
from vlprobe.errors import AnalysisError
from vlprobe.estimators.logistic import (
    convergence_note,
    memory_note,
    select_and_evaluate,
    stop_diagnostics,
)
from vlprobe.estimators.logistic.ovr import fit_ovr_logistic
from vlprobe.estimators.mlp import fit_mlp_multilabel_probes, fit_mlp_probes

FEATURE_SETS = ("image", "text", "image+text")
SINGLE_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted")
MULTI_METRICS = ("f1_samples", "f1_micro", "f1_macro", "subset_accuracy", "label_accuracy")


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def single_label_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """accuracy, balanced accuracy (mean recall over test classes), macro / weighted F1."""
    from sklearn.metrics import f1_score

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        raise AnalysisError("human_centric: no test items to score")
    hit = y_pred == y_true
    classes = np.unique(y_true)
    return {
        "accuracy": float(hit.mean()),
        "balanced_accuracy": float(np.mean([hit[y_true == c].mean() for c in classes])),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
    }


def multi_label_scores(Y_true: np.ndarray, Y_pred: np.ndarray) -> dict[str, float]:
    """Sample-averaged F1 (thesis), micro / macro F1, subset and per-label accuracy.

    ``Y_true``, ``Y_pred``: ``[N, K]`` 0/1 indicator matrices.
    """
    from sklearn.metrics import f1_score

    Y_true = np.asarray(Y_true, dtype=np.int64)
    Y_pred = np.asarray(Y_pred, dtype=np.int64)
    if Y_true.shape != Y_pred.shape or Y_true.ndim != 2 or len(Y_true) == 0:
        raise AnalysisError(f"human_centric: label matrices of shapes {Y_true.shape} and "
                            f"{Y_pred.shape}; expected the same non-empty [N, K]")
    return {
        "f1_samples": float(f1_score(Y_true, Y_pred, average="samples", zero_division=0)),
        "f1_micro": float(f1_score(Y_true, Y_pred, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(Y_true, Y_pred, average="macro", zero_division=0)),
        "subset_accuracy": float((Y_true == Y_pred).all(1).mean()),
        "label_accuracy": float((Y_true == Y_pred).mean()),
    }


def parse_label_sets(values: Sequence[Any], separator: str = "|") -> list[tuple[str, ...]]:
    """Per-item label sets from a descriptor column (lists, or ``separator``-joined strings)."""
    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append(())
        elif isinstance(v, str):
            out.append(tuple(sorted({s.strip() for s in v.split(separator) if s.strip()})))
        elif isinstance(v, list | tuple | set | frozenset | np.ndarray):
            out.append(tuple(sorted({str(s) for s in v})))
        else:
            raise AnalysisError(f"human_centric: item {i}: multi-label value {v!r} is neither a "
                                f"list of labels nor a {separator!r}-joined string")
    return out


def label_matrix(sets: Sequence[Sequence[str]], vocabulary: Sequence[str]) -> np.ndarray:
    """``[N, K]`` 0/1 indicators of ``sets`` over ``vocabulary``."""
    index = {name: k for k, name in enumerate(vocabulary)}
    Y = np.zeros((len(sets), len(vocabulary)), dtype=np.int64)
    for i, labels in enumerate(sets):
        for name in labels:
            Y[i, index[name]] = 1
    return Y


# --------------------------------------------------------------------------------------------
# rows of two towers
# --------------------------------------------------------------------------------------------


def align_rows(ids: Sequence[str], ref_ids: list[str], what: str, ref_what: str) -> np.ndarray:
    """Row order that puts ``ids`` in the order of ``ref_ids`` (same items required)."""
    from collections import Counter

    for who, lst in ((what, ids), (ref_what, ref_ids)):
        if len(set(lst)) != len(lst):
            dup = sorted(i for i, n in Counter(lst).items() if n > 1)[:3]
            raise AnalysisError(
                f"human_centric: cannot concatenate: {who} has duplicate item ids (e.g. "
                f"{dup}), so its rows cannot be aligned with the other tower by id")
    if len(ids) != len(ref_ids) or set(ids) != set(ref_ids):
        only_a = sorted(set(ids) - set(ref_ids))[:3]
        only_b = sorted(set(ref_ids) - set(ids))[:3]
        raise AnalysisError(
            f"human_centric: cannot concatenate {what} ({len(ids)} items) with {ref_what} "
            f"({len(ref_ids)} items): the item ids differ (only in the first: {only_a}, "
            f"only in the second: {only_b}); both towers must see the same items (all "
            "feature sets of an encoder pair are fitted and tested on the same items)")
    pos = {i: k for k, i in enumerate(ids)}
    return np.array([pos[i] for i in ref_ids], dtype=np.int64)


def check_same_labels(labels, ref_labels, what: str, ref_what: str) -> None:
    """AnalysisError when two towers' label arrays of the same items differ (None: skip)."""
    if labels is None or ref_labels is None:
        return
    a, b = np.asarray(labels), np.asarray(ref_labels)
    if a.shape != b.shape or not np.array_equal(a, b):
        raise AnalysisError(f"human_centric: {what} and {ref_what} carry different labels "
                            "for the same item ids")


# --------------------------------------------------------------------------------------------
# the probes of one encoder pair
# --------------------------------------------------------------------------------------------

# (probe, feature-set index, scores, extra columns) per fitted probe
ProbeRows = list[tuple[str, int, dict[str, float], dict[str, Any]]]


def probe_single_label(
    X: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]],
    y: tuple[np.ndarray, np.ndarray, np.ndarray],
    probes: Sequence[str],
    params: dict[str, Any],
    what: str,
    notes: list[str],
    mlp_kw: dict[str, Any],
) -> tuple[ProbeRows, dict[str, float]]:
    """Linear and / or MLP probes of every feature set, single-label.

    ``X``: (train, val, test) lists of ``[N, D_s]`` per feature set; ``y``: ``(ytr, yva,
    yte)`` int labels. The logistic probes take the analysis' solver options (C from
    ``params["Cs"]`` chosen on val, refitted on train + val); their convergence and memory
    notes are appended to ``notes``. Returns (rows, majority-class baseline scores).
    """
    (Xtr, Xva, Xte), (ytr, yva, yte) = X, y
    counts = np.bincount(np.concatenate([ytr, yva]))
    baseline = single_label_scores(yte, np.full(len(yte), int(counts.argmax())))
    results: ProbeRows = []
    if "linear" in probes:
        sel = select_and_evaluate((Xtr, ytr), (Xva, yva), (Xte, yte), params["Cs"],
                                  **solver_options(params))
        pred = sel.refit.predict(Xte)[:, 0, :]
        notes.extend(n for n in (sel.convergence_note(what, float(params["tol"]),
                                                      int(params["max_iter"])),
                                 sel.memory_note(what)) if n)
        for s in range(len(Xtr)):
            results.append(("linear", s, single_label_scores(yte, pred[s]),
                            {"C": float(sel.best_C[s]),
                             "val_accuracy": float(sel.val_accuracy[s].max())}))
    if "mlp" in probes:
        mlps = fit_mlp_probes((Xtr, ytr), (Xva, yva), (Xte, yte), **mlp_kw)
        for s, r in enumerate(mlps):
            results.append(("mlp", s, single_label_scores(yte, r.test_predictions),
                            {"hidden": r.hidden, "weight_decay": r.weight_decay,
                             "val_accuracy": r.val_accuracy}))
    return results, baseline


def probe_multi_label(
    X: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]],
    Y: tuple[np.ndarray, np.ndarray, np.ndarray],
    probes: Sequence[str],
    params: dict[str, Any],
    what: str,
    notes: list[str],
    mlp_kw: dict[str, Any],
) -> tuple[ProbeRows, dict[str, float], list[int]]:
    """Linear (one-vs-rest) and / or MLP (sigmoid outputs) probes of every feature set.

    ``Y``: (train, val, test) ``[N, K]`` 0/1 label matrices. Returns (rows, baseline scores of
    predicting every label with train + val prevalence >= 0.5 (at least the most frequent
    one), indices of the labels constant in train).
    """
    (Xtr, Xva, Xte), (Ytr, Yva, Yte) = X, Y
    prevalence = np.concatenate([Ytr, Yva]).mean(0)
    base = (prevalence >= 0.5).astype(np.int64)
    if not base.any():
        base[int(prevalence.argmax())] = 1
    baseline = multi_label_scores(Yte, np.broadcast_to(base, Yte.shape))
    results: ProbeRows = []
    constant: list[int] = []
    if "linear" in probes:
        preds, best_C, constant, fits = fit_ovr_logistic((Xtr, Ytr), (Xva, Yva), Xte,
                                                         params["Cs"], **solver_options(params))
        note = convergence_note(what, *stop_diagnostics(fits), float(params["tol"]),
                                int(params["max_iter"])) if fits else None
        notes.extend(n for n in (note, memory_note(what, fits)) if n)
        for s, pred in enumerate(preds):
            c = best_C[s][np.isfinite(best_C[s])]
            results.append(("linear", s, multi_label_scores(Yte, pred),
                            {"C": float(np.exp(np.log(c).mean())) if len(c) else None}))
    if "mlp" in probes:
        mlps = fit_mlp_multilabel_probes((Xtr, Ytr), (Xva, Yva), Xte, **mlp_kw)
        for s, (pred, info) in enumerate(mlps):
            results.append(("mlp", s, multi_label_scores(Yte, pred),
                            {"hidden": info["hidden"], "weight_decay": info["weight_decay"]}))
    return results, baseline, constant

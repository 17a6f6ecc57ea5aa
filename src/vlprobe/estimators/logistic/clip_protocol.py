"""CLIP's linear-probe protocol over the batched logistic solver: a coarse-to-fine C sweep
chosen on validation, a refit on train + val, top-k scores on test (every layer at once).

Used by V2 (:mod:`vlprobe.analyses.vision.transfer`, whose docstring gives the protocol and
its sources) and by M1's linear-probe comparison (:mod:`vlprobe.analyses.multimodal.zeroshot`).

- coarse: ``coarse_Cs`` (default :data:`COARSE_CS` = 1e-6, 1e-4, ..., 1e6);
- ``refine_rounds`` finer rounds: ``fine_points`` log-spaced values centred on the best C so
  far, spanning +- the previous step (the step halves every round), clipped to the coarse
  range; each stage is one batched solve of all layers (each layer with its own grid);
- the best C over every evaluated value wins: highest validation accuracy, ties -> lowest
  validation log-loss, then the smallest C; the probe is refitted on train + val at that C;
- test scores: ``top1_accuracy``, ``top<k>_accuracy`` (when there are more than k classes)
  and ``mean_per_class_recall`` (:func:`topk_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vlprobe.estimators.logistic.memory import SolvePlan
from vlprobe.estimators.logistic.path import ProbePath, fit_logistic_path
from vlprobe.estimators.logistic.select import stop_diagnostics

COARSE_CS = tuple(float(c) for c in np.logspace(-6, 6, 7))


@dataclass
class TransferOutcome:
    """Result of :func:`clip_linear_probe` (one entry per layer).

    Attributes:
        best_C: ``[L]`` selected C. val_accuracy: ``[L]`` its validation accuracy.
        sweep: one dict per (layer index, stage, C) evaluated: ``layer_index, stage, C,
            val_accuracy, val_log_loss, chosen``.
        refit: the train + val probes at ``best_C``.
        scores: metric -> ``[L]`` test scores. predictions: ``[L, N_test]`` top-1 labels.
        converged: every solve reached ``max |grad| <= tol``.
        probe_converged / stop_reason: per probe of every solve (all stages and the refit,
            flattened): gradient tolerance met / why it stopped (see
            :func:`~vlprobe.estimators.logistic.convergence_note`).
        memory: the solve plan with the largest peak-memory estimate.
    """

    best_C: np.ndarray
    val_accuracy: np.ndarray
    sweep: list[dict[str, Any]]
    refit: ProbePath
    scores: dict[str, np.ndarray]
    predictions: np.ndarray
    converged: bool = True
    probe_converged: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    stop_reason: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    memory: SolvePlan | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _best(evaluated: dict[float, tuple[float, float]]) -> tuple[float, float]:
    """(C, accuracy) with the highest accuracy; ties -> the lowest validation log-loss, then
    the smallest C. ``evaluated``: C -> (accuracy, log-loss)."""
    top = max(a for a, _ in evaluated.values())
    tied = [(loss, c) for c, (a, loss) in evaluated.items() if a >= top - 1e-12]
    c = min(tied)[1]
    return c, evaluated[c][0]


def _val_log_loss(path: ProbePath, X: Sequence[np.ndarray], y: np.ndarray) -> np.ndarray:
    """``[L, P]`` mean validation cross-entropy (items of classes unseen in training skipped)."""
    lookup = {c: i for i, c in enumerate(path.classes.tolist())}
    idx = np.array([lookup.get(c, -1) for c in np.asarray(y).tolist()], dtype=np.int64)
    seen = idx >= 0
    out = []
    for layer, x in enumerate(X):
        prob = path.layer_proba(layer, x)  # [P, N, K], one layer at a time
        p = prob[:, seen, :][:, np.arange(int(seen.sum())), idx[seen]]
        out.append(-np.log(np.maximum(p, 1e-300)).mean(1) if seen.any() else np.zeros(len(p)))
    return np.stack(out)


def _log_step(Cs: Sequence[float]) -> float:
    logs = np.unique(np.log10(np.asarray(Cs, dtype=float)))
    return float(np.median(np.diff(logs))) if len(logs) > 1 else 1.0


def topk_scores(
    logits: np.ndarray, classes: np.ndarray, y: np.ndarray, top_k: int
) -> dict[str, Any]:
    """top-1 / top-k accuracy and mean per-class recall from ``[N, K]`` logits.

    Binary probes (``[N, 1]`` logits of the second class) are expanded to ``[N, 2]``.
    """
    if logits.shape[-1] == 1:
        logits = np.concatenate([np.zeros_like(logits), logits], axis=-1)
    y = np.asarray(y)
    order = np.argsort(-logits, axis=1, kind="stable")
    pred = classes[order[:, 0]]
    hit1 = pred == y
    out: dict[str, Any] = {"top1_accuracy": float(hit1.mean()), "predictions": pred}
    if len(classes) > top_k:
        topk = classes[order[:, :top_k]]
        out[f"top{top_k}_accuracy"] = float((topk == y[:, None]).any(1).mean())
    out["mean_per_class_recall"] = float(np.mean([hit1[y == c].mean() for c in np.unique(y)]))
    return out


def clip_linear_probe(
    train: tuple[Sequence[np.ndarray], np.ndarray],
    val: tuple[Sequence[np.ndarray], np.ndarray],
    test: tuple[Sequence[np.ndarray], np.ndarray],
    coarse_Cs: Sequence[float] = COARSE_CS,
    fine_points: int = 5,
    refine_rounds: int = 4,
    top_k: int = 5,
    *,
    standardize: bool = False,
    **fit_kwargs: Any,
) -> TransferOutcome:
    """CLIP linear-probe protocol for every layer at once (see the module docstring).

    Each of ``train``, ``val``, ``test`` is ``(X_layers, y)``. ``standardize``: False (CLIP's
    protocol) fits the raw features. ``fit_kwargs`` go to
    :func:`~vlprobe.estimators.logistic.fit_logistic_path` (``dtype``, ``max_iter``, ``tol``,
    ``memory_budget``).
    """
    fit_kwargs = {**fit_kwargs, "standardize": bool(standardize)}
    (Xtr, ytr), (Xva, yva), (Xte, yte) = train, val, test
    L = len(Xtr)
    coarse = np.sort(np.asarray(coarse_Cs, dtype=np.float64))
    evaluated: list[dict[float, tuple[float, float]]] = [{} for _ in range(L)]
    sweep: list[dict[str, Any]] = []
    fits: list[ProbePath] = []  # (coefficients dropped: only the diagnostics are kept)

    def diagnose(path: ProbePath) -> None:
        fits.append(replace(path, coef=[], intercept=[], means=[], scales=[]))

    def evaluate(grid: np.ndarray, stage: int) -> None:
        path = fit_logistic_path(Xtr, ytr, layer_Cs=grid, **fit_kwargs)
        diagnose(path)
        acc = path.score(Xva, yva)  # [L, P]
        loss = _val_log_loss(path, Xva, yva)
        for li in range(L):
            for pi, c in enumerate(grid[li]):
                c = float(c)
                if c not in evaluated[li]:  # the first evaluation of a C is kept
                    evaluated[li][c] = (float(acc[li, pi]), float(loss[li, pi]))
                    sweep.append({"layer_index": li, "stage": stage, "C": c,
                                  "val_accuracy": float(acc[li, pi]),
                                  "val_log_loss": float(loss[li, pi])})

    evaluate(np.broadcast_to(coarse, (L, len(coarse))).copy(), 0)
    step = _log_step(coarse)
    for stage in range(1, int(refine_rounds) + 1):
        centres = np.array([_best(e)[0] for e in evaluated])
        offsets = np.linspace(-step, step, int(fine_points))
        grid = np.clip(centres[:, None] * 10.0 ** offsets[None, :], coarse[0], coarse[-1])
        evaluate(grid, stage)
        step = 2 * step / (int(fine_points) - 1)

    chosen = [_best(e) for e in evaluated]
    best_C = np.array([c for c, _ in chosen])
    best_acc = np.array([a for _, a in chosen])
    for rec in sweep:
        rec["chosen"] = bool(rec["C"] == best_C[rec["layer_index"]])

    X_all = [(a, b) for a, b in zip(Xtr, Xva)]  # row blocks: no concatenated copy
    y_all = np.concatenate([np.asarray(ytr), np.asarray(yva)])
    refit = fit_logistic_path(X_all, y_all, layer_Cs=best_C[:, None], **fit_kwargs)
    diagnose(refit)
    conv, reasons = stop_diagnostics(fits)
    scores: dict[str, list[float]] = {}
    preds = []
    for li in range(L):
        logits = refit.layer_logits(li, Xte[li])[0]  # [N_test, K], one layer at a time
        s = topk_scores(logits, refit.classes, np.asarray(yte), int(top_k))
        preds.append(s.pop("predictions"))
        for k, v in s.items():
            scores.setdefault(k, []).append(v)
    return TransferOutcome(
        best_C=best_C, val_accuracy=best_acc, sweep=sweep, refit=refit,
        scores={k: np.asarray(v) for k, v in scores.items()}, predictions=np.stack(preds),
        converged=bool(conv.all()), probe_converged=conv, stop_reason=reasons,
        memory=max((f.plan for f in fits if f.plan is not None), key=lambda pl: pl.peak_bytes),
    )

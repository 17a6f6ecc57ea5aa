"""V2 ``transfer``: linear-probe transfer on the final embedding, CLIP protocol.

Protocol (SCIENCE.md V2; Radford et al. 2021, appendix A.3; seed 004 fig 4.4):

1. Features of ``train_split`` and ``test_split`` at the model's embedding site (``layer``
   ``"embedding"``, the default; or chosen layers).
2. A validation split is carved out of train (stratified, seeded, ``val_fraction``); it never
   contains test items (checked on item ids). Test items with the same content as train
   items are counted in the notes (dataset option ``drop_cross_split_duplicates`` drops
   them).
3. L2-regularised multinomial logistic regression (the sklearn ``lbfgs`` objective, solved by
   the batched solver of :mod:`vlprobe.estimators.logistic`) on the RAW features, as CLIP's
   own linear probe (sklearn ``LogisticRegression`` on unstandardised features);
   ``standardize: true`` z-scores them with the fitting rows' statistics instead. The table's
   ``standardized`` column and a note say which was used. The inverse strength ``C`` is
   chosen on validation accuracy by a coarse-to-fine log sweep:

   - coarse: ``coarse_Cs`` (default 1e-6, 1e-4, ..., 1e6: every 2 decades);
   - ``refine_rounds`` (default 4) finer rounds: ``fine_points`` (5) log-spaced values
     centred on the best C so far, spanning +- the previous step, so the step halves every
     round (2 -> 1 -> 0.5 -> 0.25 -> 0.125 decades). Each stage is one batched solve of all
     layers (each layer with its own grid).

   Fine values are clipped to the coarse range (a C already evaluated is not re-scored). The
   best C over every evaluated value wins: highest validation accuracy, ties -> lowest
   validation log-loss (accuracy ties are common on small validation sets, where even a tiny
   C ranks the classes right), then the smallest C. The probe is refitted on train + val at
   that C.
4. Reported on test: ``top1_accuracy``, ``top5_accuracy`` (``top_k``; skipped with a note
   when there are <= top_k classes, where it is trivially 1) and ``mean_per_class_recall``
   (mean over the test classes of the fraction of their items predicted correctly). Test
   items of a class absent from train count as errors.

Bad input: NaN/Inf features, a single training class, or no validation carve (every class
< 2 items) raise :class:`~vlprobe.errors.AnalysisError` naming the model, site and split.
Features constant on train are kept unscaled (std 0 is never divided by) and counted in the
notes; a wholly constant layer gives a prior-only probe (noted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses._common import (
    SplitPairPlan,
    assert_disjoint_ids,
    carve_validation,
    check_finite,
    check_labels,
    check_layer_spec,
    check_solver_params,
    embedding_site,
    select_layer_sites,
    solver_options,
)
from vlprobe.analyses.base import Analysis, FeatureSource, Result
from vlprobe.errors import AnalysisError, ConfigError
from vlprobe.estimators.logistic import (
    ProbePath,
    SolvePlan,
    convergence_note,
    fit_logistic_path,
    stop_diagnostics,
)

COARSE_CS = tuple(float(c) for c in np.logspace(-6, 6, 7))


# --------------------------------------------------------------------------------------------
# protocol
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------------


class Transfer(SplitPairPlan, Analysis):
    """Linear-probe transfer, CLIP protocol (V2).

    Params:
        layer: ``"embedding"`` (default: the model's final embedding site; falls back to the
            last layer with a note when there is none), ``"last"``, ``"all"``, an int or a list
            of layer indices.
        train_split / test_split: split names (``"train"`` / ``"test"``).
        val_fraction: fraction of each train class carved out for validation (0.2).
        coarse_Cs: coarse C sweep (default 1e-6 ... 1e6, 7 values).
        fine_points: C values per refinement round (5, odd so the centre is re-used).
        refine_rounds: number of refinement rounds (4; 0 = coarse sweep only).
        top_k: k of the top-k accuracy (5).
        standardize: false (default, CLIP's protocol): fit the raw features; true: z-score
            them with the fitting rows' statistics. Recorded in the ``standardized`` column.
        dtype, max_iter, tol: solver precision and L-BFGS limits (sklearn semantics); a fit
            counts as converged only when ``max |grad| <= tol``.
        solver_memory_gb: memory the logistic solver may use (larger fits are chunked).
        pooling, modality: as for ``layer_probe``.
    """

    name: ClassVar[str] = "transfer"
    catalogue: ClassVar[tuple[str, ...]] = ("V2",)
    summary: ClassVar[str] = "Linear-probe transfer on the embedding (CLIP protocol C sweep)"
    defaults: ClassVar[dict[str, Any]] = {
        "layer": "embedding",
        "train_split": "train",
        "test_split": "test",
        "val_fraction": 0.2,
        "coarse_Cs": list(COARSE_CS),
        "fine_points": 5,
        "refine_rounds": 4,
        "top_k": 5,
        "standardize": False,
        "dtype": "float32",
        "max_iter": 1000,
        "tol": 1e-4,
        "solver_memory_gb": 2.0,
        "pooling": None,
        "modality": None,
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        if not 0.0 < float(p["val_fraction"]) < 1.0:
            raise ConfigError(f"transfer: val_fraction must be in (0, 1), got {p['val_fraction']}")
        check_solver_params(self.name, p, cs_key="coarse_Cs")
        for key, low in (("fine_points", 3), ("refine_rounds", 0), ("top_k", 1)):
            if not isinstance(p[key], int | np.integer) or p[key] < low:
                raise ConfigError(f"transfer: {key} must be an integer >= {low}, got {p[key]!r}")
        if p["train_split"] == p["test_split"]:
            raise ConfigError("transfer: train_split and test_split must differ")
        check_layer_spec(self.name, "layer", p["layer"], ("embedding", "last", "all"))

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        from vlprobe.analyses.vision.plots import plot_c_sweep, plot_transfer_bars

        p = self.params
        plan, notes = self._plan(source)
        rows: list[dict[str, Any]] = []
        sweep_rows: list[dict[str, Any]] = []
        for model, modality in plan.items():
            ftr = source.get(self._request(model, p["train_split"], modality))
            fte = source.get(self._request(model, p["test_split"], modality))
            ytr_all = check_labels(ftr, model, f"split {p['train_split']!r}")
            yte = check_labels(fte, model, f"split {p['test_split']!r}")
            if len(np.unique(ytr_all)) < 2:
                raise AnalysisError(f"transfer: model {model!r}: split {p['train_split']!r} of "
                                    f"dataset {self.dataset!r} has a single class; a classifier "
                                    "needs at least 2")
            sites = select_layer_sites(ftr, p["layer"], model, fallback="last", notes=notes,
                                       analysis=self.name)
            tr_idx, va_idx = carve_validation(
                ytr_all, float(p["val_fraction"]), self.seed,
                f"transfer: model {model!r}: split {p['train_split']!r} of dataset "
                f"{self.dataset!r}")
            ids_tr = [ftr.ids[i] for i in tr_idx]
            ids_va = [ftr.ids[i] for i in va_idx]
            assert_disjoint_ids(ids_tr, ids_va, f"the training part of split {p['train_split']!r}",
                                "the validation split carved from it (duplicate item ids?)")
            assert_disjoint_ids(ids_va, fte.ids, "validation split", f"split {p['test_split']!r}")
            assert_disjoint_ids(ids_tr, fte.ids, f"split {p['train_split']!r}",
                                f"split {p['test_split']!r}")
            if len(np.unique(ytr_all[tr_idx])) < 2:
                raise AnalysisError(f"transfer: model {model!r}: the training part of split "
                                    f"{p['train_split']!r} has a single class")
            Xtr, Xva, Xte = [], [], []
            for site in sites:
                if site not in fte.features:
                    raise AnalysisError(f"transfer: model {model!r}: site {site!r} missing from "
                                        f"split {p['test_split']!r}")
                a, b = np.asarray(ftr.features[site]), np.asarray(fte.features[site])
                check_finite(a, model, site, f"dataset {self.dataset!r} split "
                             f"{p['train_split']!r}", ftr.ids)
                check_finite(b, model, site, f"dataset {self.dataset!r} split "
                             f"{p['test_split']!r}", fte.ids)
                n_const = int((np.ptp(a, axis=0) == 0).sum())
                if n_const:
                    notes.append(f"transfer: model {model!r} site {site!r}: {n_const} of "
                                 f"{a.shape[1]} feature(s) constant on train (kept, unscaled)"
                                 + ("; the whole layer is constant, so the probe can only "
                                    "predict the class prior" if n_const == a.shape[1] else ""))
                Xtr.append(a[tr_idx])
                Xva.append(a[va_idx])
                Xte.append(b)
            ytr, yva = ytr_all[tr_idx], ytr_all[va_idx]
            out = clip_linear_probe(
                (Xtr, ytr), (Xva, yva), (Xte, yte), p["coarse_Cs"], int(p["fine_points"]),
                int(p["refine_rounds"]), int(p["top_k"]), **solver_options(p),
            )
            what = f"transfer: model {model!r}"
            note = convergence_note(what, out.probe_converged, out.stop_reason,
                                    float(p["tol"]), int(p["max_iter"]))
            if note:
                notes.append(note + " (typical for the weakest regularisation)")
            if out.memory is not None:
                notes.append(f"{what}: {out.memory.describe()}")
            n_classes = len(np.unique(np.concatenate([ytr_all, yte])))
            if f"top{p['top_k']}_accuracy" not in out.scores:
                notes.append(f"transfer: top-{p['top_k']} accuracy skipped: {n_classes} classes "
                             f"<= {p['top_k']} makes it trivially 1")
            counts = np.bincount(yte)
            chance = {
                "top1_accuracy": max(1.0 / n_classes, float(counts.max() / counts.sum())),
                f"top{p['top_k']}_accuracy": min(1.0, int(p["top_k"]) / n_classes),
                "mean_per_class_recall": 1.0 / n_classes,
            }
            for li, site in enumerate(sites):
                for metric, vals in out.scores.items():
                    rows.append({
                        "analysis": self.name, "model": model, "dataset": self.dataset,
                        "layer": ftr.layers[site], "site": site, "metric": metric,
                        "value": float(vals[li]), "C": float(out.best_C[li]),
                        "val_accuracy": float(out.val_accuracy[li]), "n_train": len(tr_idx),
                        "n_val": len(va_idx), "n_test": len(yte), "n_classes": n_classes,
                        "chance": chance[metric], "standardized": bool(p["standardize"]),
                        "modality": modality, "seed": self.seed,
                    })
            for rec in out.sweep:
                site = sites[rec["layer_index"]]
                sweep_rows.append({"model": model, "site": site, "layer": ftr.layers[site],
                                   "stage": rec["stage"], "C": rec["C"],
                                   "val_accuracy": rec["val_accuracy"],
                                   "val_log_loss": rec["val_log_loss"], "chosen": rec["chosen"]})
        notes.append(
            "transfer: features z-scored with the fitting rows' statistics (standardize: true; "
            "CLIP's protocol fits them raw)" if p["standardize"] else
            "transfer: probes fitted on the raw features, as CLIP's linear probe (sklearn "
            "LogisticRegression on unstandardised features); standardize: true z-scores them")
        table = pd.DataFrame(rows)
        sweep = pd.DataFrame(sweep_rows)
        figures = {
            "transfer": plot_transfer_bars(table, title=f"Linear-probe transfer ({self.dataset})"),
            "c_sweep": plot_c_sweep(sweep, title=f"Validation accuracy vs C ({self.dataset})"),
        }
        return Result(analysis=self.name, catalogue=self.catalogue, table=table, figures=figures,
                      params=dict(p), notes=list(dict.fromkeys(notes)),
                      extra_tables={"c_sweep": sweep})


# embedding_site lives in _common; re-exported here for the modules that import it from here
__all__ = ["Transfer", "TransferOutcome", "clip_linear_probe", "embedding_site", "topk_scores"]

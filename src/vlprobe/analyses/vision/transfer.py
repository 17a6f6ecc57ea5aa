"""V2 ``transfer``: linear-probe transfer on the final embedding, CLIP protocol.

Protocol (SCIENCE.md V2; Radford et al. 2021, appendix A.3; seed 004 fig 4.4):

1. Features of ``train_split`` and ``test_split`` at the model's embedding site (``layer``
   ``"embedding"``, the default; or chosen layers).
2. A validation split is carved out of train (stratified, seeded, ``val_fraction``); it never
   contains test items (checked on item ids). Test items with the same content as train
   items are counted in the notes (dataset option ``drop_cross_split_duplicates`` drops
   them).
3. L2-regularised multinomial logistic regression (the sklearn ``lbfgs`` objective, solved by
   the batched solver of :mod:`vlprobe.estimators.logistic`; the protocol's code is
   :func:`vlprobe.estimators.logistic.clip_protocol.clip_linear_probe`) on the RAW features,
   as CLIP's own linear probe (sklearn ``LogisticRegression`` on unstandardised features);
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
    select_layer_sites,
    solver_options,
)
from vlprobe.analyses.base import Analysis, FeatureSource, Result
from vlprobe.errors import AnalysisError, ConfigError
from vlprobe.estimators.logistic import convergence_note
from vlprobe.estimators.logistic.clip_protocol import COARSE_CS, clip_linear_probe

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


__all__ = ["Transfer"]

"""V1 ``layer_probe``: a linear (and optionally MLP) probe on every layer of every model.

Protocol (SCIENCE.md V1; CLIP-style linear probe):

1. Features of the ``train_split`` and ``test_split`` items, every layer site of the tower that
   reads the dataset (image tower for image data, text tower for sentences).
2. A validation split is carved out of train (stratified, seeded, ``val_fraction``); it never
   contains test items (checked on item ids). Test items with the same content as train
   items (image bytes, normalised text) are counted in the notes
   (:func:`~vlprobe.analyses._common.split_pair_duplicates`; the dataset option
   ``drop_cross_split_duplicates: true`` drops them).
3. Linear probe: sklearn-equivalent multinomial L2 logistic regression for every layer x C
   (``Cs``) solved at once (:mod:`vlprobe.estimators.logistic`); C chosen per layer on val
   (ties -> smallest C), then refitted on train + val; test accuracy reported.
4. MLP probe (``probe`` = ``"mlp"``/``"both"``): 1 hidden layer, Adam; hidden size / weight
   decay chosen on val with early stopping; test accuracy of the selected model.

``chance`` = max(1 / n_classes, majority-class rate of the test split).

Bad input: NaN/Inf features, a train split with a single class, or one where no class has
>= 2 items (no validation carve) raise :class:`~vlprobe.errors.AnalysisError` naming the
model, site and split. Constant features are z-scored with std 1 instead of 0 (no division
by zero); a layer constant over all training items is noted (its probe predicts one class).
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
    is_constant,
    run_device,
    select_layer_sites,
    solver_options,
)
from vlprobe.analyses.base import Analysis, FeatureSource, Result
from vlprobe.errors import AnalysisError, ConfigError
from vlprobe.estimators.logistic import DEFAULT_CS, select_and_evaluate
from vlprobe.estimators.mlp import MLP_PARAM_DEFAULTS, fit_mlp_probes, mlp_options

_PROBES = ("linear", "mlp", "both")


class LayerProbe(SplitPairPlan, Analysis):
    """Layer-wise probe accuracy (V1).

    Params:
        train_split / test_split: split names (default ``"train"`` / ``"test"``).
        val_fraction: fraction of each train class carved out for validation (0.2).
        Cs: C sweep of the logistic probe (8 values, 1e-3 ... 1e4, log-spaced).
        probe: ``"linear"`` (default), ``"mlp"`` or ``"both"``.
        layers: ``"all"`` (default), ``"last"``, an int or a list of layer indices.
        pooling: pooling method, ``None`` = the adapter's default.
        modality: tower to probe when both could read the data (``None``: image first).
        x_axis: figure x axis, ``"layer"`` (index) or ``"relative"`` (index / depth).
        dtype: solver precision, ``"float32"`` (default) or ``"float64"``.
        max_iter, tol: L-BFGS limits (sklearn semantics); a probe counts as converged only
            when ``max |grad| <= tol`` (the notes count the others by stop reason).
        solver_memory_gb: memory the logistic solver may use; larger fits are split into
            several batched solves (same answer). The estimate is written to the notes.
        mlp_hidden, mlp_weight_decay, mlp_max_epochs, mlp_patience: the MLP sweep.
    """

    name: ClassVar[str] = "layer_probe"
    catalogue: ClassVar[tuple[str, ...]] = ("V1",)
    summary: ClassVar[str] = "Linear / MLP probe accuracy at every layer (C chosen on val)"
    defaults: ClassVar[dict[str, Any]] = {
        "train_split": "train",
        "test_split": "test",
        "val_fraction": 0.2,
        "Cs": list(DEFAULT_CS),
        "probe": "linear",
        "layers": "all",
        "pooling": None,
        "modality": None,
        "x_axis": "layer",
        "dtype": "float32",
        "max_iter": 1000,
        "tol": 1e-4,
        "solver_memory_gb": 2.0,
        **MLP_PARAM_DEFAULTS,
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        if p["probe"] not in _PROBES:
            raise ConfigError(f"layer_probe: probe must be one of {_PROBES}, got {p['probe']!r}")
        if not 0.0 < float(p["val_fraction"]) < 1.0:
            raise ConfigError(
                f"layer_probe: val_fraction must be in (0, 1), got {p['val_fraction']}"
            )
        check_solver_params(self.name, p)
        check_layer_spec(self.name, "layers", p["layers"], ("all", "last"), allow_none=True)
        if p["x_axis"] not in ("layer", "relative"):
            raise ConfigError(
                f"layer_probe: x_axis must be 'layer' or 'relative', got {p['x_axis']!r}"
            )
        if p["train_split"] == p["test_split"]:
            raise ConfigError("layer_probe: train_split and test_split must differ")

    # ----------------------------------------------------------------------------------------
    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        from vlprobe.analyses.plotting import plot_accuracy_vs_layer

        p = self.params
        plan, notes = self._plan(source)
        rows: list[dict[str, Any]] = []
        for model, modality in plan.items():
            ftr = source.get(self._request(model, p["train_split"], modality))
            fte = source.get(self._request(model, p["test_split"], modality))
            ytr_all = check_labels(ftr, model, f"split {p['train_split']!r}")
            yte = check_labels(fte, model, f"split {p['test_split']!r}")
            if len(np.unique(ytr_all)) < 2:
                raise AnalysisError(
                    f"layer_probe: model {model!r}: split {p['train_split']!r} of dataset "
                    f"{self.dataset!r} has a single class; a probe needs at least 2"
                )
            sites = select_layer_sites(ftr, p["layers"], model, default="all")
            tr_idx, va_idx = carve_validation(
                ytr_all, float(p["val_fraction"]), self.seed,
                f"layer_probe: model {model!r}: split {p['train_split']!r} of dataset "
                f"{self.dataset!r}")
            ids_tr = [ftr.ids[i] for i in tr_idx]
            ids_va = [ftr.ids[i] for i in va_idx]
            assert_disjoint_ids(ids_tr, ids_va, f"the training part of split {p['train_split']!r}",
                                "the validation split carved from it (duplicate item ids?)")
            assert_disjoint_ids(ids_va, fte.ids, "validation split", f"split {p['test_split']!r}")
            assert_disjoint_ids(ids_tr, fte.ids, f"split {p['train_split']!r}",
                                f"split {p['test_split']!r}")
            Xtr, Xva, Xte = [], [], []
            for site in sites:
                a, b = ftr.features[site], fte.features[site]
                check_finite(a, model, site, f"dataset {self.dataset!r} split "
                             f"{p['train_split']!r}", ftr.ids)
                check_finite(b, model, site, f"dataset {self.dataset!r} split "
                             f"{p['test_split']!r}", fte.ids)
                Xtr.append(a[tr_idx])
                Xva.append(a[va_idx])
                Xte.append(b)
                if is_constant(Xtr[-1]):
                    notes.append(
                        f"layer_probe: model {model!r} site {site!r}: features are constant "
                        f"over the training items (identical for all {len(tr_idx)}); they are "
                        "left unscaled (std 0 is not divided by) and the probe can only "
                        "predict the class prior (one class for every item)"
                    )
            ytr, yva = ytr_all[tr_idx], ytr_all[va_idx]
            n_classes = len(np.unique(np.concatenate([ytr_all, yte])))
            counts = np.bincount(yte)
            chance = max(1.0 / n_classes, float(counts.max() / counts.sum()))
            base = {
                "analysis": self.name, "model": model, "dataset": self.dataset,
                "metric": "accuracy", "n_train": len(tr_idx), "n_val": len(va_idx),
                "n_test": len(yte), "chance": chance, "n_classes": n_classes,
                "modality": modality, "seed": self.seed,
            }
            if p["probe"] in ("linear", "both"):
                sel = select_and_evaluate(
                    (Xtr, ytr), (Xva, yva), (Xte, yte), p["Cs"], **solver_options(p),
                )
                what = f"layer_probe: model {model!r}"
                notes.extend(n for n in (sel.convergence_note(what, float(p["tol"]),
                                                              int(p["max_iter"])),
                                         sel.memory_note(what)) if n)
                rows.extend(
                    {**base, "layer": ftr.layers[site], "site": site, "probe": "linear",
                     **sel.layer_summary(li)}
                    for li, site in enumerate(sites)
                )
            if p["probe"] in ("mlp", "both"):
                mlps = fit_mlp_probes((Xtr, ytr), (Xva, yva), (Xte, yte),
                                      **mlp_options(p, self.seed, run_device(source)))
                for site, res in zip(sites, mlps):
                    rows.append({**base, "layer": ftr.layers[site], "site": site,
                                 "probe": "mlp", **res.summary()})
        table = pd.DataFrame(rows)
        fig = plot_accuracy_vs_layer(
            table, x=p["x_axis"], title=f"Layer-wise probe accuracy ({self.dataset})"
        )
        return Result(
            analysis=self.name, catalogue=self.catalogue, table=table,
            figures={"accuracy_vs_layer": fig}, params=dict(p), notes=notes,
        )

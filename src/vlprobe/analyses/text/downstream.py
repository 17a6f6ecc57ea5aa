"""T3 ``downstream``: a trained classification head on frozen features (BoolQ, WiC, ...).

Protocol (SCIENCE.md T3; seed 000 §3.5, table 1):

1. Pooled text features (``pooling``; ``None`` = the adapter's default, e.g. CLIP ``eos``) of
   the ``train_split`` and ``eval_split`` items, at the chosen ``layers`` of the text tower
   (default: the last layer; ``"all"``, ``"embedding"`` (the model's final pooled embedding
   site), an int or a list of ints also work). The encoder is frozen.
2. A validation split of ``val_fraction`` of train is carved out (stratified, seeded); it is
   used only for model selection and never overlaps the evaluation items (checked on ids).
   Evaluation items with the same content as train items are counted in the notes (dataset
   option ``drop_cross_split_duplicates`` drops them).
3. Head ``"linear"``: L2 logistic regression for every layer x C of ``Cs`` solved at once
   (:func:`~vlprobe.estimators.logistic.select_and_evaluate`), C chosen on the carved
   validation split (ties -> smallest C), refitted on train + validation.
   Head ``"mlp"``: 1-hidden-layer MLP (:func:`~vlprobe.estimators.mlp.fit_mlp_probes`),
   hidden size x weight decay chosen on validation with early stopping. ``"both"``: both.
4. Accuracy on ``eval_split`` (default ``validation``). SuperGLUE test labels are hidden, so
   the official dev set (``val.jsonl``, loaded as ``validation``) is the test proxy, as usual.

Truncation: every input longer than the model's maximum length is cut by the adapter and
counted; the table carries ``n_truncated_train``, ``n_truncated_eval``, ``n_truncated``
(their sum), ``fraction_truncated`` (sum / all train + eval items) and ``max_length`` (the
model's maximum text length in tokens when the feature source can tell it, else missing);
the same counts are written in ``Result.notes``. CLIP's 77-token limit cuts most BoolQ
passages (seed 000 §3.5).

Not implemented: fine-tuning the encoder (SCIENCE.md T3 mentions "frozen or fine-tuned"
encoders); only frozen features are supported.
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
    run_device,
    select_layer_sites,
)
from vlprobe.analyses.base import Analysis, FeatureSource, Result
from vlprobe.errors import AnalysisError, ConfigError
from vlprobe.estimators.logistic import DEFAULT_CS, select_and_evaluate
from vlprobe.estimators.mlp import MLP_PARAM_DEFAULTS, fit_mlp_probes, mlp_options

_HEADS = ("linear", "mlp", "both")


def model_max_length(source: Any, model: str) -> int | None:
    """The model's maximum text length in tokens, when ``source`` exposes its adapter
    (the runner's feature source has ``adapter(model)``); ``None`` otherwise."""
    adapter = getattr(source, "adapter", None)
    if not callable(adapter):
        return None
    try:
        value = adapter(model).max_text_length()
    except Exception:  # an unknown max length is reported as missing
        return None
    return int(value) if isinstance(value, int | np.integer) and value > 0 else None


class Downstream(SplitPairPlan, Analysis):
    """Trained head on frozen features: accuracy on a downstream task (T3).

    Params:
        train_split / eval_split: split names (``"train"`` / ``"validation"``: SuperGLUE's
            dev set is the test proxy).
        val_fraction: fraction of each train class carved out for model selection (0.1).
        head: ``"linear"`` (default, logistic regression with a C sweep), ``"mlp"`` or
            ``"both"``.
        layers: ``"last"`` (default), ``"all"``, ``"embedding"``, an int or a list of ints.
        pooling: pooling method, ``None`` = the adapter's default.
        modality: tower to use (``"text"``).
        Cs, dtype, max_iter, tol: the logistic sweep and solver (as in ``layer_probe``).
        mlp_hidden, mlp_weight_decay, mlp_max_epochs, mlp_patience: the MLP sweep.
    """

    split_params = ("train_split", "eval_split")
    name: ClassVar[str] = "downstream"
    catalogue: ClassVar[tuple[str, ...]] = ("T3",)
    summary: ClassVar[str] = (
        "Downstream task accuracy (BoolQ, WiC) of a trained head on frozen features, "
        "truncation counted"
    )
    defaults: ClassVar[dict[str, Any]] = {
        "train_split": "train",
        "eval_split": "validation",
        "val_fraction": 0.1,
        "head": "linear",
        "layers": "last",
        "pooling": None,
        "modality": "text",
        "Cs": list(DEFAULT_CS),
        "dtype": "float32",
        "max_iter": 1000,
        "tol": 1e-4,
        **MLP_PARAM_DEFAULTS,
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        if p["head"] not in _HEADS:
            raise ConfigError(f"downstream: head must be one of {_HEADS}, got {p['head']!r}")
        if not 0.0 < float(p["val_fraction"]) < 1.0:
            raise ConfigError(f"downstream: val_fraction must be in (0, 1), "
                              f"got {p['val_fraction']}")
        check_solver_params(self.name, p)
        check_layer_spec(self.name, "layers", p["layers"], ("all", "last", "embedding"),
                         allow_none=True)
        if p["train_split"] == p["eval_split"]:
            raise ConfigError("downstream: train_split and eval_split must differ")

    # ----------------------------------------------------------------------------------------
    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        p = self.params
        plan, notes = self._plan(source)
        train_name, eval_name = p["train_split"], p["eval_split"]
        notes.append(
            f"downstream: accuracy on split {eval_name!r} of {self.dataset!r}; for SuperGLUE "
            "tasks (test labels hidden) the official dev set is the test proxy. Model selection "
            f"on {float(p['val_fraction']):.0%} of {train_name!r} (stratified, seed {self.seed}); "
            "frozen encoder (fine-tuning not implemented)."
        )
        heads = ["linear", "mlp"] if p["head"] == "both" else [p["head"]]
        rows: list[dict[str, Any]] = []
        for model, modality in plan.items():
            ftr = source.get(self._request(model, train_name, modality))
            fev = source.get(self._request(model, eval_name, modality))
            ytr_all = check_labels(ftr, model, f"split {train_name!r}")
            yev = check_labels(fev, model, f"split {eval_name!r}")
            if len(np.unique(ytr_all)) < 2:
                raise AnalysisError(f"downstream: model {model!r}: split {train_name!r} has a "
                                    "single class; a classifier needs at least 2")
            sites = select_layer_sites(ftr, p["layers"], model, default="last",
                                       analysis=self.name)
            tr_idx, va_idx = carve_validation(
                ytr_all, float(p["val_fraction"]), self.seed,
                f"downstream: model {model!r}: split {train_name!r} of dataset {self.dataset!r}")
            ids_tr = [ftr.ids[i] for i in tr_idx]
            ids_va = [ftr.ids[i] for i in va_idx]
            assert_disjoint_ids(ids_tr, fev.ids, f"split {train_name!r}", f"split {eval_name!r}")
            assert_disjoint_ids(ids_va, fev.ids, "validation carve", f"split {eval_name!r}")
            Xtr, Xva, Xev = [], [], []
            for site in sites:
                check_finite(ftr.features[site], model, site)
                check_finite(fev.features[site], model, site)
                Xtr.append(ftr.features[site][tr_idx])
                Xva.append(ftr.features[site][va_idx])
                Xev.append(fev.features[site])
            ytr, yva = ytr_all[tr_idx], ytr_all[va_idx]
            n_classes = len(np.unique(np.concatenate([ytr_all, yev])))
            counts = np.bincount(yev)
            chance = max(1.0 / n_classes, float(counts.max() / counts.sum()))
            max_len = model_max_length(source, model)
            n_tr_trunc, n_ev_trunc = int(ftr.n_truncated), int(fev.n_truncated)
            n_items = len(ytr_all) + len(yev)
            base = {
                "analysis": self.name, "model": model, "dataset": self.dataset,
                "metric": "accuracy", "eval_split": eval_name, "n_train": len(ytr),
                "n_val": len(yva), "n_eval": len(yev), "chance": chance,
                "n_classes": n_classes, "modality": modality,
                "pooling": p["pooling"] or "default", "seed": self.seed,
                "n_truncated_train": n_tr_trunc, "n_truncated_eval": n_ev_trunc,
                "n_truncated": n_tr_trunc + n_ev_trunc,
                "fraction_truncated": (n_tr_trunc + n_ev_trunc) / n_items,
                "max_length": max_len,
            }
            limit = f"the maximum length of {max_len} tokens" if max_len else "its maximum length"
            notes.append(
                f"downstream: model {model!r} truncated {n_tr_trunc} of {len(ytr_all)} "
                f"{train_name!r} and {n_ev_trunc} of {len(yev)} {eval_name!r} inputs at {limit} "
                f"({base['fraction_truncated']:.1%} of all inputs)"
            )
            if "linear" in heads:
                sel = select_and_evaluate((Xtr, ytr), (Xva, yva), (Xev, yev), p["Cs"],
                                          dtype=p["dtype"], max_iter=int(p["max_iter"]),
                                          tol=float(p["tol"]))
                note = sel.convergence_note(f"downstream: model {model!r}", float(p["tol"]),
                                            int(p["max_iter"]))
                if note:
                    notes.append(note)
                rows.extend(
                    {**base, "layer": ftr.layers[site], "site": site, "head": "linear",
                     **sel.layer_summary(li)}
                    for li, site in enumerate(sites)
                )
            if "mlp" in heads:
                mlps = fit_mlp_probes((Xtr, ytr), (Xva, yva), (Xev, yev),
                                      **mlp_options(p, self.seed, run_device(source)))
                for site, res in zip(sites, mlps):
                    rows.append({**base, "layer": ftr.layers[site], "site": site,
                                 "head": "mlp", **res.summary()})
        table = pd.DataFrame(rows)
        if len(table):
            table["max_length"] = table["max_length"].astype("Int64")
        figures = {}
        if len(table) and table["layer"].notna().sum() > 1:
            from vlprobe.analyses.plotting import plot_accuracy_vs_layer

            figures["accuracy_vs_layer"] = plot_accuracy_vs_layer(
                table.assign(probe=table["head"]),
                title=f"Downstream accuracy ({self.dataset}, {eval_name})",
            )
        return Result(analysis=self.name, catalogue=self.catalogue, table=table,
                      figures=figures, params={**p, "heads": heads}, notes=notes)


__all__ = ["Downstream", "model_max_length"]

"""T1 ``sentence_probing``: SentEval probing tasks, per layer (Conneau et al. 2018).

Protocol (SCIENCE.md T1), a thin layer over the V1 solvers of
:mod:`vlprobe.analyses.probe_solver`:

1. Pooled text features (``pooling``: ``mean`` by default, or ``cls``/``eos``/``last``;
   recorded in the table) of the task's ``train``, ``validation`` and ``test`` splits at every
   layer site of the text tower.
2. The dev split is the task's own ``validation`` split (SentEval's ``va``); only when the
   dataset has none is one carved from train (stratified, seeded, ``val_fraction``, noted).
3. Probe: SentEval's MLP probe (1 hidden layer; hidden size x weight decay swept on dev,
   early stopping on dev loss; :func:`~vlprobe.analyses.probe_solver.fit_mlp_probe`, which
   uses ReLU and AdamW where SentEval uses a sigmoid and also sweeps dropout) for
   every task except WC, which uses logistic regression only (as SentEval does): L2 logistic
   probes for a C sweep, C chosen on dev, refitted on train + dev
   (:func:`~vlprobe.analyses.probe_solver.select_and_evaluate`). ``probe: linear`` / ``both``
   adds / uses the logistic probe for the other tasks too.
4. Test accuracy per layer; columns ``task`` and ``category`` (surface / syntactic /
   semantic) are added. The task comes from ``params.task`` or is recognised in the dataset
   key (``sentlen``, ``bigram_shift``, ...).

Figure: accuracy vs layer, one panel per task, one line per model (and probe); tables of
several runs can be drawn together with :func:`plot_sentence_probing`.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses._common import (
    assert_disjoint_ids,
    check_finite,
    check_labels,
    check_solver_params,
    readable_models,
    select_layer_sites,
    stratified_split,
)
from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, Result
from vlprobe.analyses.probe_solver import DEFAULT_CS, fit_mlp_probe, select_and_evaluate
from vlprobe.errors import AnalysisError, ConfigError

CATEGORIES = {
    "SentLen": "surface", "WC": "surface",
    "TreeDepth": "syntactic", "TopConst": "syntactic", "BShift": "syntactic",
    "Tense": "semantic", "SubjNum": "semantic", "ObjNum": "semantic", "SOMO": "semantic",
    "CoordInv": "semantic",
}  # fmt: skip
_TASK_KEYS = {
    "SentLen": ("sentlen", "sentencelength"),
    "WC": ("wc", "wordcontent"),
    "TreeDepth": ("treedepth",),
    "TopConst": ("topconst", "topconstituents"),
    "BShift": ("bshift", "bigramshift"),
    "Tense": ("tense", "pastpresent"),
    "SubjNum": ("subjnum", "subjnumber"),
    "ObjNum": ("objnum", "objnumber"),
    "SOMO": ("somo", "oddmanout"),
    "CoordInv": ("coordinv", "coordinationinversion"),
}
_PROBES = ("auto", "linear", "mlp", "both")
_POOLINGS = (None, "cls", "eos", "mean", "last")


def canonical_task(name: str | None) -> str | None:
    """The SentEval task a name refers to (``"bigram_shift"`` -> ``"BShift"``), else None.

    Matches the whole name (case, ``_`` and ``-`` ignored) or a run of its words
    (``ptb_treedepth``, ``senteval-bigram_shift``, ``wc_ptb``).
    """
    if not name:
        return None
    words = [w for w in re.split(r"[^a-z]+", str(name).lower()) if w]
    runs = {"".join(words[i:j]) for i in range(len(words))
            for j in range(i + 1, min(len(words), i + 3) + 1)}
    for task, keys in _TASK_KEYS.items():
        if runs & {*keys, task.lower()}:
            return task
    return None


class SentenceProbing(Analysis):
    """SentEval probing accuracy at every layer (T1).

    Params:
        task: SentEval task (``SentLen``, ``WC``, ``TreeDepth``, ``TopConst``, ``BShift``,
            ``Tense``, ``SubjNum``, ``ObjNum``, ``SOMO``, ``CoordInv``, or SentEval file stems
            such as ``bigram_shift``); ``None`` = recognised in the dataset key.
        pooling: ``"mean"`` (default), ``"cls"``, ``"eos"``, ``"last"`` or ``None`` (the
            adapter's default); recorded in the table.
        train_split / validation_split / test_split: split names (``train`` / ``validation``
            / ``test``); without a validation split, ``val_fraction`` of train is carved.
        probe: ``"auto"`` (MLP, but logistic regression for WC), ``"mlp"``, ``"linear"``,
            ``"both"``. WC always uses the logistic probe only.
        Cs: C sweep of the logistic probe.
        mlp_hidden, mlp_weight_decay: MLP sweep (SentEval sweeps nhid 50/100/200 and L2).
        mlp_max_epochs, mlp_patience: MLP training limits.
        layers, modality, x_axis, dtype, max_iter, tol: as in ``layer_probe``.
    """

    name: ClassVar[str] = "sentence_probing"
    catalogue: ClassVar[tuple[str, ...]] = ("T1",)
    summary: ClassVar[str] = "SentEval probing tasks: MLP / logistic probe accuracy per layer"
    defaults: ClassVar[dict[str, Any]] = {
        "task": None,
        "pooling": "mean",
        "train_split": "train",
        "validation_split": "validation",
        "test_split": "test",
        "val_fraction": 0.1,
        "probe": "auto",
        "Cs": list(DEFAULT_CS),
        "mlp_hidden": [50, 200],
        "mlp_weight_decay": [0.0, 1e-3],
        "mlp_max_epochs": 100,
        "mlp_patience": 5,
        "layers": "all",
        "modality": "text",
        "x_axis": "layer",
        "dtype": "float32",
        "max_iter": 1000,
        "tol": 1e-4,
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        task = canonical_task(p["task"]) if p["task"] is not None else canonical_task(dataset)
        if p["task"] is not None and task is None:
            raise ConfigError(f"sentence_probing: unknown task {p['task']!r}; known: "
                              f"{', '.join(CATEGORIES)}")
        self.task = task
        if p["probe"] not in _PROBES:
            raise ConfigError(f"sentence_probing: probe must be one of {_PROBES}, "
                              f"got {p['probe']!r}")
        if p["pooling"] not in _POOLINGS:
            raise ConfigError(f"sentence_probing: pooling must be one of {_POOLINGS}, "
                              f"got {p['pooling']!r}")
        if not 0.0 < float(p["val_fraction"]) < 1.0:
            raise ConfigError(f"sentence_probing: val_fraction must be in (0, 1), "
                              f"got {p['val_fraction']}")
        check_solver_params(self.name, p)
        if p["x_axis"] not in ("layer", "relative"):
            raise ConfigError("sentence_probing: x_axis must be 'layer' or 'relative'")
        if len({p["train_split"], p["validation_split"], p["test_split"]}) != 3:
            raise ConfigError("sentence_probing: train, validation and test splits must differ")

    # ----------------------------------------------------------------------------------------
    def probes(self) -> list[str]:
        """Probe kinds run for this task (WC: logistic only)."""
        kind = self.params["probe"]
        if self.task == "WC":
            return ["linear"]
        return {"auto": ["mlp"], "mlp": ["mlp"], "linear": ["linear"],
                "both": ["linear", "mlp"]}[kind]

    def _splits(self, source: FeatureSource) -> tuple[list[str], bool]:
        p = self.params
        splits = source.splits(self.dataset)
        for key in ("train_split", "test_split"):
            if p[key] not in splits:
                raise AnalysisError(f"sentence_probing: dataset {self.dataset!r} has no split "
                                    f"{p[key]!r} ({key}); available: {splits}")
        has_val = p["validation_split"] in splits
        wanted = [p["train_split"], p["test_split"]]
        return ([*wanted, p["validation_split"]] if has_val else wanted), has_val

    def _plan(self, source: FeatureSource) -> tuple[dict[str, str], list[str]]:
        return readable_models(
            source, self.name, self.models, self.dataset, self.params["modality"],
            required_splits=(),
        )

    def _request(self, model: str, split: str, modality: str) -> FeatureRequest:
        return FeatureRequest(model, self.dataset, split, sites=None,
                              pooling=self.params["pooling"], modality=modality)

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        plan, _ = self._plan(source)
        splits, _ = self._splits(source)
        return [self._request(m, s, mod) for m, mod in plan.items() for s in splits]

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        p = self.params
        plan, notes = self._plan(source)
        _, has_val = self._splits(source)
        task = self.task or "unknown"
        category = CATEGORIES.get(task, "unknown")
        if self.task is None:
            notes.append(f"sentence_probing: task not given and not recognised in dataset key "
                         f"{self.dataset!r}; set params.task (task/category columns: unknown)")
        if p["probe"] in ("mlp", "both") and self.task == "WC":
            notes.append("sentence_probing: WC uses logistic regression only (as SentEval); "
                         f"probe={p['probe']!r} ignored")
        rows: list[dict[str, Any]] = []
        for model, modality in plan.items():
            ftr = source.get(self._request(model, p["train_split"], modality))
            fte = source.get(self._request(model, p["test_split"], modality))
            ytr_all = check_labels(ftr, model, f"split {p['train_split']!r}")
            yte = check_labels(fte, model, f"split {p['test_split']!r}")
            if len(np.unique(ytr_all)) < 2:
                raise AnalysisError(f"sentence_probing: model {model!r}: split "
                                    f"{p['train_split']!r} has a single class")
            sites = select_layer_sites(ftr, p["layers"], model, default="all")
            if has_val:
                fva = source.get(self._request(model, p["validation_split"], modality))
                yva = check_labels(fva, model, f"split {p['validation_split']!r}")
                tr_idx = np.arange(len(ytr_all))
                ids_va = list(fva.ids)
                dev_source = p["validation_split"]
            else:
                fva = ftr
                tr_idx, va_idx = stratified_split(ytr_all, float(p["val_fraction"]), self.seed)
                yva = ytr_all[va_idx]
                ids_va = [ftr.ids[i] for i in va_idx]
                dev_source = f"carved {p['val_fraction']:.0%} of {p['train_split']!r}"
                notes.append(f"sentence_probing: dataset {self.dataset!r} has no "
                             f"{p['validation_split']!r} split; dev carved from train")
            ids_tr = [ftr.ids[i] for i in tr_idx]
            assert_disjoint_ids(ids_tr, ids_va, "train", "dev split")
            assert_disjoint_ids(ids_tr, fte.ids, "train", "test split")
            assert_disjoint_ids(ids_va, fte.ids, "dev split", "test split")
            Xtr, Xva, Xte = [], [], []
            for site in sites:
                check_finite(ftr.features[site], model, site)
                check_finite(fte.features[site], model, site)
                Xtr.append(ftr.features[site][tr_idx])
                Xte.append(fte.features[site])
                if has_val:
                    check_finite(fva.features[site], model, site)
                    Xva.append(fva.features[site])
                else:
                    Xva.append(ftr.features[site][va_idx])
            ytr = ytr_all[tr_idx]
            n_classes = len(np.unique(np.concatenate([ytr_all, yva, yte])))
            counts = np.bincount(yte)
            chance = max(1.0 / n_classes, float(counts.max() / counts.sum()))
            base = {
                "analysis": self.name, "model": model, "dataset": self.dataset,
                "metric": "accuracy", "task": task, "category": category,
                "pooling": p["pooling"] or "default", "n_train": len(ytr), "n_val": len(yva),
                "n_test": len(yte), "chance": chance, "n_classes": n_classes,
                "dev_split": dev_source, "modality": modality, "seed": self.seed,
                "n_truncated": int(max(ftr.n_truncated, fte.n_truncated,
                                       fva.n_truncated if has_val else 0)),
            }
            if "linear" in self.probes():
                sel = select_and_evaluate((Xtr, ytr), (Xva, yva), (Xte, yte), p["Cs"],
                                          dtype=p["dtype"], max_iter=int(p["max_iter"]),
                                          tol=float(p["tol"]))
                if not sel.converged:
                    notes.append(f"sentence_probing: model {model!r}: some logistic probes "
                                 f"stopped before convergence (max_iter={p['max_iter']})")
                rows.extend(
                    {**base, "layer": ftr.layers[site], "site": site, "probe": "linear",
                     **sel.layer_summary(li)}
                    for li, site in enumerate(sites)
                )
            if "mlp" in self.probes():
                for li, site in enumerate(sites):
                    res = fit_mlp_probe(
                        (Xtr[li], ytr), (Xva[li], yva), (Xte[li], yte),
                        hidden_sizes=p["mlp_hidden"], weight_decays=p["mlp_weight_decay"],
                        max_epochs=int(p["mlp_max_epochs"]), patience=int(p["mlp_patience"]),
                        seed=self.seed,
                    )
                    rows.append({**base, "layer": ftr.layers[site], "site": site,
                                 "value": res.test_accuracy, "probe": "mlp", "C": np.nan,
                                 "val_accuracy": res.val_accuracy, "hidden": res.hidden,
                                 "weight_decay": res.weight_decay})
            if ftr.n_truncated or fte.n_truncated:
                notes.append(f"sentence_probing: model {model!r}: "
                             f"{max(ftr.n_truncated, fte.n_truncated)} texts truncated at the "
                             "model's maximum length")
        table = pd.DataFrame(rows)
        fig = plot_sentence_probing(table, x=p["x_axis"])
        return Result(analysis=self.name, catalogue=self.catalogue, table=table,
                      figures={"accuracy_vs_layer": fig},
                      params={**p, "task": task, "category": category, "probes": self.probes()},
                      notes=notes)


def plot_sentence_probing(table: Any, x: str = "layer") -> Any:
    """Accuracy vs layer: one panel per task, one line per model (and probe); dotted chance.

    Works on the table of one run or on the concatenated tables of several tasks.
    """
    from matplotlib.figure import Figure

    tasks = list(dict.fromkeys(table["task"])) if len(table) else ["(empty)"]
    ncols = min(len(tasks), 5)
    nrows = int(np.ceil(len(tasks) / ncols))
    fig = Figure(figsize=(3.2 * ncols + 0.8, 2.8 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, task in enumerate(tasks):
        ax = axes[k // ncols, k % ncols]
        t = table[table["task"] == task] if len(table) else table
        several = len(t) and t["probe"].nunique() > 1
        for (model, probe), g in (t.groupby(["model", "probe"], sort=False) if len(t) else []):
            g = g.sort_values("layer")
            xs = g["layer"].to_numpy(dtype=float)
            if x == "relative":
                xs = xs / max(xs.max(), 1.0)
            ax.plot(xs, g["value"].to_numpy(), marker="o", ms=3,
                    ls="-" if probe == "mlp" else "--",
                    label=f"{model} ({probe})" if several else model)
        if len(t):
            ax.axhline(float(t["chance"].max()), color="grey", ls=":", lw=1, label="chance")
            cat = t["category"].iloc[0]
            ax.set_title(f"{task} ({cat})", fontsize=9)
            ax.legend(fontsize=6)
        ax.set_xlabel("relative depth" if x == "relative" else "layer")
        ax.set_ylabel("test accuracy")
    for k in range(len(tasks), nrows * ncols):
        axes[k // ncols, k % ncols].set_visible(False)
    return fig


__all__ = ["CATEGORIES", "SentenceProbing", "canonical_task", "plot_sentence_probing"]

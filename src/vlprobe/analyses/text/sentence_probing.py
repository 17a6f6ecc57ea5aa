"""T1 ``sentence_probing``: SentEval probing tasks, per layer (Conneau et al. 2018).

Protocol (SCIENCE.md T1), a thin layer over the V1 solvers of
:mod:`vlprobe.estimators.logistic`:

1. Pooled text features (``pooling``: ``mean`` by default, or ``cls``/``eos``/``last``;
   recorded in the table) of the task's ``train``, ``validation`` and ``test`` splits at every
   layer site of the text tower.
2. The dev split is the task's own ``validation`` split (SentEval's ``va``); only when the
   dataset has none is one carved from train (stratified, seeded, ``val_fraction``, noted).
3. Probe: SentEval's MLP probe (1 hidden layer; hidden size x weight decay swept on dev,
   early stopping on dev loss; :func:`~vlprobe.estimators.mlp.fit_mlp_probes`, which
   uses ReLU and AdamW where SentEval uses a sigmoid and also sweeps dropout) for
   every task except WC, which uses logistic regression only (as SentEval does): L2 logistic
   probes for a C sweep, C chosen on dev, refitted on train + dev
   (:func:`~vlprobe.estimators.logistic.select_and_evaluate`; features z-scored with the
   fitting rows' statistics unless ``standardize: false``, recorded in the ``standardized``
   column). ``probe: linear`` / ``both`` adds / uses the logistic probe for the other tasks
   too. The notes count the logistic probes that did not reach the gradient tolerance, by
   stop reason, and give the solver's peak-memory estimate (``solver_memory_gb``).
4. Test accuracy per layer; columns ``task`` and ``category`` (surface / syntactic /
   semantic) are added. The task comes from ``params.task`` or is recognised in the dataset
   key (``sentlen``, ``bigram_shift``, ...).
5. With several tasks (``datasets``), extra table ``best_layer``: per task and model the layer
   with the best DEV accuracy of the main probe and the TEST accuracy there
   (:func:`best_layer_table`); the test split never chooses anything.

Figure: accuracy vs layer, one panel per task, one line per model (and probe); tables of
several runs can be drawn together with
:func:`vlprobe.analyses.text.plots.plot_sentence_probing`.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses._common import (
    assert_disjoint_ids,
    carve_validation,
    check_finite,
    check_labels,
    check_layer_spec,
    check_solver_params,
    readable_models,
    run_device,
    select_layer_sites,
    solver_options,
)
from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, Result
from vlprobe.analyses.text.plots import plot_category_accuracy, plot_sentence_probing
from vlprobe.errors import AnalysisError, ConfigError
from vlprobe.estimators.logistic import DEFAULT_CS, select_and_evaluate
from vlprobe.estimators.mlp import fit_mlp_probes, mlp_options

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
        layers, modality, x_axis, dtype, max_iter, tol, solver_memory_gb: as in
            ``layer_probe`` (a logistic probe counts as converged only when
            ``max |grad| <= tol``; the notes count the others by stop reason and give the
            solver's memory estimate).
        standardize: z-score the logistic probe's features with the fitting rows' statistics
            (default true); false fits the raw features. Recorded in the ``standardized``
            column of the linear rows. (The MLP probe always z-scores.)
        datasets: further dataset keys, one task each (recognised in the key), probed in the
            same analysis so that one report section shows every task, the mean accuracy per
            category (surface / syntactic / semantic) vs layer and the best-layer table
            (VALUE table 5 style, extra table ``best_layer``: the layer is chosen on dev
            accuracy and its test accuracy reported).
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
        "solver_memory_gb": 2.0,
        "standardize": True,
        "datasets": [],
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        task = canonical_task(p["task"]) if p["task"] is not None else canonical_task(dataset)
        if p["task"] is not None and task is None:
            raise ConfigError(f"sentence_probing: unknown task {p['task']!r}; known: "
                              f"{', '.join(CATEGORIES)}")
        self.task = task
        extra = p["datasets"] or []
        if isinstance(extra, str) or not all(isinstance(d, str) for d in extra):
            raise ConfigError(f"sentence_probing: datasets must be a list of dataset keys, "
                              f"got {extra!r}")
        self.task_datasets = list(dict.fromkeys([dataset, *extra]))
        if len(self.task_datasets) > 1:
            if p["task"] is not None:
                raise ConfigError("sentence_probing: params.task names one task; with several "
                                  "datasets each task is recognised in its dataset key")
            unknown = [d for d in self.task_datasets if canonical_task(d) is None]
            if unknown:
                raise ConfigError(f"sentence_probing: no SentEval task recognised in dataset "
                                  f"key(s) {unknown}; name them after the task (e.g. "
                                  f"ptb_sentlen, ud_tense) or run them as separate analyses")
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
        if not isinstance(p["standardize"], bool):
            raise ConfigError(f"sentence_probing: standardize must be true or false, "
                              f"got {p['standardize']!r}")
        check_layer_spec(self.name, "layers", p["layers"], ("all", "last"))
        if p["x_axis"] not in ("layer", "relative"):
            raise ConfigError("sentence_probing: x_axis must be 'layer' or 'relative'")
        if len({p["train_split"], p["validation_split"], p["test_split"]}) != 3:
            raise ConfigError("sentence_probing: train, validation and test splits must differ")

    # ----------------------------------------------------------------------------------------
    def probes(self, task: str | None = None) -> list[str]:
        """Probe kinds run for ``task`` (default: this analysis' task; WC: logistic only)."""
        kind = self.params["probe"]
        if (task or self.task) == "WC":
            return ["linear"]
        return {"auto": ["mlp"], "mlp": ["mlp"], "linear": ["linear"],
                "both": ["linear", "mlp"]}[kind]

    def _splits(self, source: FeatureSource, dataset: str) -> tuple[list[str], bool]:
        p = self.params
        splits = source.splits(dataset)
        for key in ("train_split", "test_split"):
            if p[key] not in splits:
                raise AnalysisError(f"sentence_probing: dataset {dataset!r} has no split "
                                    f"{p[key]!r} ({key}); available: {splits}")
        has_val = p["validation_split"] in splits
        wanted = [p["train_split"], p["test_split"]]
        return ([*wanted, p["validation_split"]] if has_val else wanted), has_val

    def _plan(self, source: FeatureSource) -> tuple[dict[str, str], list[str]]:
        return readable_models(
            source, self.name, self.models, self.dataset, self.params["modality"],
            required_splits=(),
        )

    def _request(self, model: str, dataset: str, split: str, modality: str) -> FeatureRequest:
        return FeatureRequest(model, dataset, split, sites=None,
                              pooling=self.params["pooling"], modality=modality)

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        plan, _ = self._plan(source)
        out = []
        for dataset in self.task_datasets:
            splits, _ = self._splits(source, dataset)
            out.extend(self._request(m, dataset, s, mod) for m, mod in plan.items()
                       for s in splits)
        return out

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        p = self.params
        plan, notes = self._plan(source)
        rows: list[dict[str, Any]] = []
        tasks = {d: (self.task if d == self.dataset else canonical_task(d))
                 for d in self.task_datasets}
        for dataset, task in tasks.items():
            rows.extend(self._probe_task(source, plan, dataset, task, notes))
        table = pd.DataFrame(rows)
        figures = {"accuracy_vs_layer": plot_sentence_probing(table, x=p["x_axis"])}
        extra = {}
        if len(self.task_datasets) > 1 and len(table):
            figures["category_accuracy"] = plot_category_accuracy(table, x=p["x_axis"])
            extra["best_layer"] = best_layer_table(table)
        return Result(analysis=self.name, catalogue=self.catalogue, table=table,
                      figures=figures,
                      params={**p, "task": self.task or "unknown",
                              "category": CATEGORIES.get(self.task or "", "unknown"),
                              "tasks": tasks, "probes": self.probes()},
                      notes=notes, extra_tables=extra)

    def _probe_task(self, source: FeatureSource, plan: dict[str, str], dataset: str,
                    task_name: str | None, notes: list[str]) -> list[dict[str, Any]]:
        """Rows of one task (one dataset) for every model and layer."""
        p = self.params
        _, has_val = self._splits(source, dataset)
        task = task_name or "unknown"
        category = CATEGORIES.get(task, "unknown")
        if task_name is None:
            notes.append(f"sentence_probing: task not given and not recognised in dataset key "
                         f"{dataset!r}; set params.task (task/category columns: unknown)")
        if p["probe"] in ("mlp", "both") and task_name == "WC":
            notes.append("sentence_probing: WC uses logistic regression only (as SentEval); "
                         f"probe={p['probe']!r} ignored")
        rows: list[dict[str, Any]] = []
        for model, modality in plan.items():
            ftr = source.get(self._request(model, dataset, p["train_split"], modality))
            fte = source.get(self._request(model, dataset, p["test_split"], modality))
            ytr_all = check_labels(ftr, model, f"split {p['train_split']!r}")
            yte = check_labels(fte, model, f"split {p['test_split']!r}")
            if len(np.unique(ytr_all)) < 2:
                raise AnalysisError(f"sentence_probing: model {model!r}: split "
                                    f"{p['train_split']!r} has a single class")
            sites = select_layer_sites(ftr, p["layers"], model, default="all")
            if has_val:
                fva = source.get(self._request(model, dataset, p["validation_split"], modality))
                yva = check_labels(fva, model, f"split {p['validation_split']!r}")
                tr_idx = np.arange(len(ytr_all))
                ids_va = list(fva.ids)
                dev_source = p["validation_split"]
            else:
                fva = ftr
                tr_idx, va_idx = carve_validation(
                    ytr_all, float(p["val_fraction"]), self.seed,
                    f"sentence_probing: {dataset}: model {model!r}: split "
                    f"{p['train_split']!r}")
                yva = ytr_all[va_idx]
                ids_va = [ftr.ids[i] for i in va_idx]
                dev_source = f"carved {p['val_fraction']:.0%} of {p['train_split']!r}"
                notes.append(f"sentence_probing: dataset {dataset!r} has no "
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
                "analysis": self.name, "model": model, "dataset": dataset,
                "metric": "accuracy", "task": task, "category": category,
                "pooling": p["pooling"] or "default", "n_train": len(ytr), "n_val": len(yva),
                "n_test": len(yte), "chance": chance, "n_classes": n_classes,
                "dev_split": dev_source, "modality": modality, "seed": self.seed,
                "n_truncated": int(max(ftr.n_truncated, fte.n_truncated,
                                       fva.n_truncated if has_val else 0)),
            }
            if "linear" in self.probes(task_name):
                sel = select_and_evaluate((Xtr, ytr), (Xva, yva), (Xte, yte), p["Cs"],
                                          **solver_options(p))
                what = f"sentence_probing: {dataset}: model {model!r}"
                notes.extend(n for n in (sel.convergence_note(what, float(p["tol"]),
                                                              int(p["max_iter"])),
                                         sel.memory_note(what)) if n)
                rows.extend(
                    {**base, "layer": ftr.layers[site], "site": site, "probe": "linear",
                     "standardized": bool(p["standardize"]), **sel.layer_summary(li)}
                    for li, site in enumerate(sites)
                )
            if "mlp" in self.probes(task_name):
                mlps = fit_mlp_probes((Xtr, ytr), (Xva, yva), (Xte, yte),
                                      **mlp_options(p, self.seed, run_device(source)))
                for site, res in zip(sites, mlps):
                    rows.append({**base, "layer": ftr.layers[site], "site": site,
                                 "probe": "mlp", **res.summary()})
            if ftr.n_truncated or fte.n_truncated:
                notes.append(f"sentence_probing: {dataset}: model {model!r}: "
                             f"{max(ftr.n_truncated, fte.n_truncated)} texts truncated at the "
                             "model's maximum length")
        return rows


CATEGORY_ORDER = ("surface", "syntactic", "semantic")


def main_probe_rows(table: Any) -> Any:
    """Per (model, task) the rows of its main probe: the MLP where present, else logistic."""
    if not len(table):
        return table
    has_mlp = table.groupby(["model", "task"])["probe"].transform(lambda s: (s == "mlp").any())
    return table[(table["probe"] == "mlp") | ~has_mlp]


def category_means(table: Any) -> Any:
    """Mean test accuracy over the tasks of each category, per model and layer.

    Columns: model, category, layer, value (mean accuracy), n_tasks, chance (mean chance).
    """
    rows = main_probe_rows(table)
    out = (rows.groupby(["model", "category", "layer"], sort=False)
           .agg(value=("value", "mean"), n_tasks=("task", "nunique"), chance=("chance", "mean"))
           .reset_index())
    return out


def best_layer_table(table: Any) -> Any:
    """Best layer per model and task (VALUE, table 5), chosen on DEV: one row per task; per
    model the layer whose main probe has the highest dev accuracy (``val_accuracy``; the
    lowest layer on ties), the TEST accuracy at that layer (column ``<model>``), that dev
    accuracy (``<model> dev``), the layer and the probe. Picking the layer by its test
    accuracy would report the maximum of many noisy test scores, an optimistic estimate.

    Raises:
        AnalysisError: rows without a dev accuracy (``val_accuracy`` missing or NaN).
    """
    import pandas as pd

    rows = main_probe_rows(table)
    if len(rows) and ("val_accuracy" not in rows or rows["val_accuracy"].isna().any()):
        raise AnalysisError("sentence_probing: the best-layer table chooses the layer on dev "
                            "accuracy; some rows have no 'val_accuracy'")
    order = {t: i for i, t in enumerate(CATEGORIES)}
    out: dict[str, dict[str, Any]] = {}
    for (task, model), g in rows.groupby(["task", "model"], sort=False):
        g = g.sort_values("layer", kind="stable")
        best = g.loc[g["val_accuracy"].idxmax()]  # first (lowest) layer on ties
        row = out.setdefault(task, {"task": task, "category": best["category"],
                                    "chance": float(best["chance"])})
        row[str(model)] = float(best["value"])
        row[f"{model} layer"] = int(best["layer"])
        row[f"{model} dev"] = float(best["val_accuracy"])
        row[f"{model} probe"] = str(best["probe"])
    frame = pd.DataFrame(list(out.values()))
    if len(frame):
        frame = frame.sort_values("task", key=lambda s: s.map(lambda t: order.get(t, 99)))
    return frame.reset_index(drop=True)


__all__ = [
    "CATEGORIES", "SentenceProbing", "best_layer_table", "canonical_task", "category_means",
]

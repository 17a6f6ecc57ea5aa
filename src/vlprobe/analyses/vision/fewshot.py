"""V3 ``few_shot``: N-shot classification with class prototypes and 1-NN (seed 004 §4.2, §5.2).

For each N in ``shots`` and each of ``trials`` seeded trials, N support items per class are
drawn from the ``train_split``; the queries are the whole ``test_split``. Features are
L2-normalised. Classifiers:

- ``prototype``: class prototype = mean of the normalised support features; a query gets the
  class of the prototype with the highest cosine similarity (thesis §4.2).
- ``1nn``: cosine 1-nearest-neighbour over all N x C support items (thesis §5.2).

The support draw of (N, trial) depends only on the seed and the train labels, so every model
and layer sees the same support items (a paired comparison). Support items never appear in
the query set (checked on item ids). Reported: mean accuracy over trials, its standard error
(std with ddof=1 / sqrt(trials)) and mean +- 1.96 se.

Bad input: a train class with fewer than N items raises :class:`AnalysisError` (naming the
model, the N, the classes and their counts) unless ``skip_infeasible: true``, which skips
that N with a note (and raises if no N is left for any model). A single train class, test
classes without train items and NaN/Inf features raise. A layer whose features are
identical for every item is noted (all similarities tie, so predictions fall back to the
first class); all-zero rows are normalised to zero vectors (cosine 0 with everything), not
divided by 0.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses._common import (
    SplitPairPlan,
    assert_disjoint_ids,
    check_finite,
    check_labels,
    check_layer_spec,
    is_constant,
    select_layer_sites,
)
from vlprobe.analyses.base import Analysis, FeatureSource, Result
from vlprobe.errors import AnalysisError, ConfigError

CLASSIFIERS = ("prototype", "1nn")


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def draw_support(labels: np.ndarray, classes: np.ndarray, shots: int, rng) -> np.ndarray:
    """Indices of ``shots`` items per class (sorted by class), without replacement."""
    return np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), size=shots, replace=False) for c in classes]
    )


def few_shot_predict(
    support: np.ndarray, support_labels: np.ndarray, queries: np.ndarray, classifier: str
) -> np.ndarray:
    """Predicted labels of ``queries`` (rows are features; cosine similarity)."""
    s, q = _normalise(support), _normalise(queries)
    if classifier == "prototype":
        classes = np.unique(support_labels)
        protos = _normalise(np.stack([s[support_labels == c].mean(0) for c in classes]))
        return classes[np.argmax(q @ protos.T, axis=1)]
    if classifier == "1nn":
        return support_labels[np.argmax(q @ s.T, axis=1)]
    raise ConfigError(f"few_shot: unknown classifier {classifier!r}; known: {CLASSIFIERS}")


class FewShot(SplitPairPlan, Analysis):
    """Few-shot accuracy (V3).

    Params:
        shots: list of N (default ``[1, 5, 10]``).
        trials: trials per N (default 10).
        classifiers: subset of ``["prototype", "1nn"]`` (default both).
        layers: ``"last"`` (default), ``"all"``, an int or a list of layer indices.
        train_split / test_split: where supports / queries come from.
        skip_infeasible: if True, an N larger than the smallest train class is skipped with a
            note instead of raising :class:`AnalysisError`.
        pooling, modality: as for ``layer_probe``.
    """

    name: ClassVar[str] = "few_shot"
    catalogue: ClassVar[tuple[str, ...]] = ("V3",)
    summary: ClassVar[str] = "N-shot accuracy: cosine prototype and 1-NN classifiers"
    defaults: ClassVar[dict[str, Any]] = {
        "shots": [1, 5, 10],
        "trials": 10,
        "classifiers": list(CLASSIFIERS),
        "layers": "last",
        "train_split": "train",
        "test_split": "test",
        "skip_infeasible": False,
        "pooling": None,
        "modality": None,
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        shots = [p["shots"]] if isinstance(p["shots"], int) else list(p["shots"])
        if not shots or any(not isinstance(n, int | np.integer) or n < 1 for n in shots):
            raise ConfigError(f"few_shot: shots must be positive integers, got {p['shots']!r}")
        p["shots"] = [int(n) for n in shots]
        if not isinstance(p["trials"], int | np.integer) or p["trials"] < 1:
            raise ConfigError(f"few_shot: trials must be a positive integer, got {p['trials']!r}")
        classifiers = [p["classifiers"]] if isinstance(p["classifiers"], str) else p["classifiers"]
        bad = [c for c in classifiers if c not in CLASSIFIERS]
        if bad or not classifiers:
            raise ConfigError(f"few_shot: unknown classifier(s) {bad}; known: {list(CLASSIFIERS)}")
        p["classifiers"] = list(classifiers)
        check_layer_spec(self.name, "layers", p["layers"], ("all", "last"), allow_none=True)
        if p["train_split"] == p["test_split"]:
            raise ConfigError("few_shot: train_split and test_split must differ")

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        from vlprobe.analyses.vision.plots import plot_few_shot_bars

        p = self.params
        plan, notes = self._plan(source)
        rows: list[dict[str, Any]] = []
        for model, modality in plan.items():
            ftr = source.get(self._request(model, p["train_split"], modality))
            fte = source.get(self._request(model, p["test_split"], modality))
            ytr = check_labels(ftr, model, f"split {p['train_split']!r}")
            yte = check_labels(fte, model, f"split {p['test_split']!r}")
            classes = np.unique(ytr)
            names = ftr.label_names
            if len(classes) < 2:
                raise AnalysisError(
                    f"few_shot: model {model!r}: split {p['train_split']!r} of dataset "
                    f"{self.dataset!r} has a single class; few-shot classification needs at "
                    "least 2"
                )
            missing = sorted(set(np.unique(yte).tolist()) - set(classes.tolist()))
            if missing:
                raise AnalysisError(
                    f"few_shot: test classes {missing} have no items in split "
                    f"{p['train_split']!r}, so they can have no support"
                )
            counts = {int(c): int((ytr == c).sum()) for c in classes}
            feasible = []
            for n in p["shots"]:
                short = {c: k for c, k in counts.items() if k < n}
                if not short:
                    feasible.append(n)
                    continue
                desc = ", ".join(
                    f"{names[c] if names and c < len(names) else c!r} ({k})"
                    for c, k in sorted(short.items())
                )
                msg = (f"few_shot: model {model!r}: {n}-shot needs {n} train items per class "
                       f"but split {p['train_split']!r} of dataset {self.dataset!r} has fewer "
                       f"for class(es) {desc}")
                if not p["skip_infeasible"]:
                    raise AnalysisError(msg + "; lower `shots` or set skip_infeasible: true")
                notes.append(msg + f"; N={n} skipped for model {model!r}")
            sites = select_layer_sites(ftr, p["layers"], model, default="last")
            feats = {}
            for site in sites:
                check_finite(ftr.features[site], model, site,
                             f"dataset {self.dataset!r} split {p['train_split']!r}", ftr.ids)
                check_finite(fte.features[site], model, site,
                             f"dataset {self.dataset!r} split {p['test_split']!r}", fte.ids)
                a, b = np.asarray(ftr.features[site]), np.asarray(fte.features[site])
                if feasible and is_constant(a) and is_constant(b) and (
                        len(a) == 0 or len(b) == 0 or np.array_equal(a[:1], b[:1])):
                    notes.append(
                        f"few_shot: model {model!r} site {site!r}: features are identical for "
                        "every item; all cosine similarities tie and every query gets the "
                        "first class, so the accuracy is that class's share of the test split"
                    )
                feats[site] = (_normalise(ftr.features[site]), _normalise(fte.features[site]))
            query_ids = set(fte.ids)
            for n in feasible:
                acc = {(s, c): [] for s in sites for c in p["classifiers"]}
                for trial in range(int(p["trials"])):
                    rng = np.random.default_rng([int(self.seed), int(n), trial])
                    sup = draw_support(ytr, classes, n, rng)
                    sup_ids = [ftr.ids[i] for i in sup]
                    assert_disjoint_ids(sup_ids, query_ids, "few-shot support set",
                                        "query (test) set")
                    for site in sites:
                        xs, xq = feats[site]
                        for clf in p["classifiers"]:
                            pred = few_shot_predict(xs[sup], ytr[sup], xq, clf)
                            acc[(site, clf)].append(float((pred == yte).mean()))
                for (site, clf), vals in acc.items():
                    v = np.asarray(vals)
                    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
                    rows.append({
                        "analysis": self.name, "model": model, "dataset": self.dataset,
                        "layer": ftr.layers[site], "site": site, "metric": "accuracy",
                        "value": float(v.mean()), "se": se, "ci_low": float(v.mean() - 1.96 * se),
                        "ci_high": float(v.mean() + 1.96 * se), "classifier": clf, "shots": n,
                        "n_trials": len(v), "n": len(yte), "n_classes": len(classes),
                        "chance": 1.0 / len(classes), "seed": self.seed,
                    })
        if not rows:
            raise AnalysisError(
                f"few_shot: no N of shots={p['shots']} is feasible for any of the models "
                f"{list(plan)} on dataset {self.dataset!r} (skip_infeasible: true skipped them "
                "all): " + "; ".join(n for n in notes if "skipped for model" in n)
            )
        table = pd.DataFrame(rows)
        figures = {}
        if len(table):
            figures["few_shot"] = plot_few_shot_bars(
                table, title=f"Few-shot accuracy ({self.dataset})"
            )
        return Result(analysis=self.name, catalogue=self.catalogue, table=table,
                      figures=figures, params=dict(p), notes=notes)

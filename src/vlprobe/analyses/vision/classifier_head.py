"""``classifier_head``: accuracy of a model's OWN classification head (preprocessing check).

Not a catalogue analysis: a sanity check that the model, its weights and its preprocessing are
wired as their authors intended. It reads a ``*.logits`` site (e.g. EfficientNet-Lite0's
``vision.logits``, ImageNet-1k ``[N, 1000]``) on a labelled dataset whose label indices ARE
the head's class indices (e.g. the reference kit's ``imagenet_sample``: label = index into the
1000 sorted wnids = the standard ImageNet class order) and reports, per split:

- ``top1_accuracy`` and ``top{k}_accuracy`` (``top_k``, default 5; skipped when the head has
  <= k classes), the ties-broken-by-index argsort of the logits;
- ``mean_per_class_recall`` over the classes present in the split.

A wrong crop, a wrong normalisation (ImageNet mean/std instead of the Lite models' 127/128) or
a wrong channel order shows up as a large drop against the published accuracy.
A label index outside the head's classes is an :class:`AnalysisError` (the dataset's label
order does not match the head).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses._common import check_finite, check_labels, resolve_modality
from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, Result
from vlprobe.errors import AnalysisError, ConfigError
from vlprobe.estimators.logistic.clip_protocol import topk_scores


class ClassifierHead(Analysis):
    """Top-1 / top-k accuracy of a model's own classifier head (preprocessing sanity check).

    Params:
        site: the logits site (default ``"vision.logits"``).
        splits: split name, list of split names, or ``None`` (default) = every split.
        top_k: k of the top-k accuracy (5).
        modality: tower to run (``None``: the one that reads the dataset, image first).
    """

    name: ClassVar[str] = "classifier_head"
    catalogue: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = (
        "Sanity check (no catalogue id): top-1/top-5 of the model's own classifier head "
        "(*.logits site) on a dataset labelled in the head's class order"
    )
    defaults: ClassVar[dict[str, Any]] = {
        "site": "vision.logits",
        "splits": None,
        "top_k": 5,
        "modality": None,
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        if not isinstance(p["site"], str) or not p["site"]:
            raise ConfigError(f"classifier_head: site must be a site name, got {p['site']!r}")
        if not isinstance(p["top_k"], int | np.integer) or isinstance(p["top_k"], bool) \
                or p["top_k"] < 1:
            raise ConfigError(f"classifier_head: top_k must be an integer >= 1, got "
                              f"{p['top_k']!r}")
        splits = p["splits"]
        if splits is not None:
            splits = [splits] if isinstance(splits, str) else list(splits)
            if not splits or not all(isinstance(s, str) for s in splits):
                raise ConfigError(f"classifier_head: splits must be a split name or a list of "
                                  f"names, got {p['splits']!r}")
            p["splits"] = splits

    def _plan(self, source: FeatureSource) -> tuple[list[str], dict[str, str], list[str]]:
        available = source.splits(self.dataset)
        splits = self.params["splits"] or available
        missing = [s for s in splits if s not in available]
        if missing:
            raise AnalysisError(f"classifier_head: dataset {self.dataset!r} has no split(s) "
                                f"{missing}; available: {available}")
        plan, notes = {}, []
        for model in self.models:
            modality = resolve_modality(source, model, self.dataset, self.params["modality"])
            if modality is None:
                notes.append(f"classifier_head: model {model!r} cannot read dataset "
                             f"{self.dataset!r}; skipped")
            else:
                plan[model] = modality
        if not plan:
            raise AnalysisError(f"classifier_head: none of the models {self.models} can read "
                                f"dataset {self.dataset!r}")
        return list(splits), plan, notes

    def _request(self, model: str, split: str, modality: str) -> FeatureRequest:
        return FeatureRequest(model, self.dataset, split, sites=(self.params["site"],),
                              modality=modality)

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        splits, plan, _ = self._plan(source)
        return [self._request(m, s, mod) for m, mod in plan.items() for s in splits]

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        p = self.params
        site, top_k = p["site"], int(p["top_k"])
        splits, plan, notes = self._plan(source)
        rows: list[dict[str, Any]] = []
        for model, modality in plan.items():
            for split in splits:
                feats = source.get(self._request(model, split, modality))
                if site not in feats.features:
                    raise AnalysisError(f"classifier_head: model {model!r} returned no site "
                                        f"{site!r} for split {split!r}")
                logits = np.asarray(feats.features[site], dtype=np.float64)
                if logits.ndim != 2:
                    raise AnalysisError(f"classifier_head: model {model!r} site {site!r} has "
                                        f"shape {logits.shape}; expected [N, n_classes] logits")
                check_finite(logits, model, site)
                y = check_labels(feats, model, f"split {split!r}")
                n_classes = logits.shape[1]
                if len(y) != len(logits):
                    raise AnalysisError(f"classifier_head: {len(y)} labels for {len(logits)} "
                                        f"rows of logits (model {model!r}, split {split!r})")
                if len(y) == 0:
                    raise AnalysisError(f"classifier_head: split {split!r} is empty")
                if y.min() < 0 or y.max() >= n_classes:
                    raise AnalysisError(
                        f"classifier_head: labels of split {split!r} range over "
                        f"[{int(y.min())}, {int(y.max())}] but the head of model {model!r} "
                        f"(site {site!r}) has {n_classes} classes; the dataset's label indices "
                        "must be the head's class indices"
                    )
                scores = topk_scores(logits, np.arange(n_classes), y, top_k)
                scores.pop("predictions")
                if f"top{top_k}_accuracy" not in scores:
                    notes.append(f"classifier_head: top-{top_k} accuracy skipped: the head has "
                                 f"{n_classes} <= {top_k} classes")
                chance = {"top1_accuracy": 1.0 / n_classes,
                          f"top{top_k}_accuracy": min(1.0, top_k / n_classes),
                          "mean_per_class_recall": 1.0 / n_classes}
                for metric, value in scores.items():
                    rows.append({
                        "analysis": self.name, "model": model, "dataset": self.dataset,
                        "layer": feats.layers.get(site), "site": site, "metric": metric,
                        "value": float(value), "split": split, "n": len(y),
                        "n_classes_head": n_classes,
                        "n_classes_present": len(np.unique(y)),
                        "chance": chance[metric], "modality": modality, "seed": self.seed,
                    })
        notes.append("classifier_head: a preprocessing sanity check of the model's own head, "
                     "not a probe; compare top-1 with the model's published accuracy")
        return Result(analysis=self.name, catalogue=self.catalogue, table=pd.DataFrame(rows),
                      params=dict(p), notes=list(dict.fromkeys(notes)))

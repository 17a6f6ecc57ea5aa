"""M7 ``human_centric``: probes on image features, text features and their concatenation.

Protocol (SCIENCE.md M7; seed 004 ch. 5, Bielawski et al. 2022): datasets whose items carry
an image AND a text (poster + title/plot, tweet image + tweet, book cover + title) are
classified from frozen features of

- ``"image"``: the image encoder's vector of each item;
- ``"text"``: the text encoder's vector of each item;
- ``"image+text"``: both, concatenated ("the encoding of an image by a visual model and the
  encoding of the corresponding text by a textual model are simply concatenated").

Where the features come from (the *encoder pair*):

- ``image_model`` / ``text_model`` unset (default): every model of ``models`` is one pair with
  itself: a dual encoder (CLIP) gives its image tower for ``"image"``, its text tower for
  ``"text"`` (``FeatureRequest(modality="image"/"text")`` of the same model) and both for
  ``"image+text"`` (the thesis' CLIP + CLIP-T). A single-tower model gives only the sets its
  tower can serve (the others are skipped with a note).
- ``image_model`` and/or ``text_model`` set (each must be one of ``models``): ONE pair of two
  models (e.g. RN50 + BERT); ``"image"`` uses ``image_model``, ``"text"`` uses
  ``text_model``, ``"image+text"`` concatenates them. The table's ``model`` column is the
  model of the set (``"rn50+bert"`` for the concatenation); ``image_model`` /
  ``text_model`` columns name both sides.

The features are the tower's final embedding (``layer: "embedding"``, default; the last
layer with a note when a tower has none), or ``"last"`` / a layer index. A set that needs text
on a dataset without item texts (e.g. the reference kit's movie posters, image + genre only)
is skipped with a note; if no set is left, an :class:`AnalysisError`. The two parts of a
concatenation must describe the same items: the same item ids (their order may differ: rows
are aligned by id) and the same labels; anything else (other ids, other lengths, duplicate
ids, a feature matrix whose row count differs from its id list) is an :class:`AnalysisError`
naming both feature sets. NaN/Inf features and a single training class also raise.

Splits: ``train_split`` / ``test_split``; a validation split (``val_fraction``, stratified by
label for single-label tasks, seeded) is carved out of train and never shares item ids with
test (checked). Test items with the same content as train items are counted in the notes
(dataset option ``drop_cross_split_duplicates`` drops them).

Probes (``probe``: ``"linear"``, ``"mlp"`` or ``"both"``); features are z-scored with the
fitting rows' statistics (per column, so the two halves of a concatenation are on the same
scale):

- single-label, linear: multinomial L2 logistic regression, C chosen on validation accuracy
  from ``Cs`` and refitted on train + val (:func:`~vlprobe.estimators.logistic.
  select_and_evaluate`; all feature sets of a pair in one batched solve).
- single-label, MLP: :func:`~vlprobe.estimators.mlp.fit_mlp_probes` (Linear-ReLU-
  Linear, 256 hidden units by default as in the thesis, cross-entropy).
- multi-label, linear: one-vs-rest: one binary L2 logistic probe per label, C chosen per
  label on validation accuracy and refitted on train + val; a label is predicted when its
  probability is > 0.5 (the thesis "rounds" the sigmoid outputs). A label with a single value
  in train (never / always present) is predicted constant (noted).
- multi-label, MLP: Linear-ReLU-Linear with one sigmoid output per label and binary
  cross-entropy (the thesis' head), AdamW, early stopping on validation loss; hidden size /
  weight decay chosen on validation sample-F1; outputs rounded at 0.5
  (:func:`~vlprobe.estimators.mlp.fit_mlp_multilabel_probes`: the same training loop as
  the single-label MLP, seeded with local generators).

Metrics (on test):

- single-label: ``accuracy`` (what the thesis reports for MVSA / Book Covers),
  ``balanced_accuracy`` (mean per-class recall over the classes present in test, i.e.
  accuracy with every class weighted equally), ``f1_macro`` and ``f1_weighted`` (per-class F1
  averaged uniformly / by test support).
- multi-label: ``f1_samples`` (the thesis metric: ``TP / (TP + (FN + FP) / 2)`` per item,
  averaged over the test items), ``f1_micro``, ``f1_macro`` (over the label vocabulary),
  ``subset_accuracy`` (exact match of the label set) and ``label_accuracy``
  (1 - Hamming loss).

  About "weighted accuracy" (named in SCIENCE.md M7): seed 004 never defines it (it reports
  accuracy for single-label and sample-averaged F1 for multi-label). It is not emitted under
  that ambiguous name; ``balanced_accuracy`` (class-weighted) and ``f1_weighted``
  (support-weighted F1) are the two usual readings. F1 of an item/label with neither true nor
  predicted positives counts as 0 (sklearn ``zero_division=0``).

Every row also carries ``baseline``: the metric of a trivial predictor fitted on train (the
majority class; multi-label: every label present in >= half of the training items, or the
single most frequent label when none is).

Multi-label data: ``multi_label`` names an item descriptor (a per-item column kept by the
loader, e.g. ``descriptor_columns: [genres]`` of ``hf_parquet``) whose value is a list of
labels or a string of labels joined by ``label_separator`` (``"|"``). Descriptors are read
through the source's ``stimuli(request)`` (the run's feature source has it). Masking text in
images (the thesis' EAST masking) is a data-preparation step, not part of this analysis.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses._common import (
    assert_disjoint_ids,
    carve_validation,
    check_finite,
    check_layer_spec,
    check_solver_params,
    run_device,
    select_layer_sites,
    split_pair_duplicates,
)
from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, LayerFeatures, Result
from vlprobe.analyses.multimodal.human_centric_parts import (
    FEATURE_SETS,
    MULTI_METRICS,
    SINGLE_METRICS,
    align_rows,
    check_same_labels,
    label_matrix,
    multi_label_scores,
    parse_label_sets,
    probe_multi_label,
    probe_single_label,
    single_label_scores,
)
from vlprobe.analyses.multimodal.plots import plot_human_centric
from vlprobe.errors import AnalysisError, ConfigError
from vlprobe.estimators.logistic import DEFAULT_CS
from vlprobe.estimators.mlp import MLP_PARAM_DEFAULTS, mlp_options

_NEEDS = {"image": ("image",), "text": ("text",), "image+text": ("image", "text")}
_PROBES = ("linear", "mlp", "both")


# --------------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------------


def _normalise_set(name: Any) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"human_centric: feature set must be a string, got {name!r}")
    parts = [p.strip() for p in name.split("+")]
    key = "+".join(m for m in ("image", "text") if m in parts)
    if key not in FEATURE_SETS or len(parts) != len(set(parts)) or not set(parts) <= {
            "image", "text"}:
        raise ConfigError(f"human_centric: unknown feature set {name!r}; "
                          f"known: {list(FEATURE_SETS)}")
    return key


class HumanCentric(Analysis):
    """Probes on image, text and image+text features (M7; see the module docstring).

    Params:
        feature_sets: subset of ``["image", "text", "image+text"]`` (default: all three).
        image_model / text_model: one explicit encoder pair (each one of ``models``); unset =
            every model is its own pair (dual encoders: both towers of the same model).
        layer: ``"embedding"`` (default), ``"last"`` or a layer index, for both towers.
        train_split / test_split: split names (``"train"`` / ``"test"``).
        val_fraction: fraction of train carved out for validation (0.2).
        probe: ``"linear"`` (default), ``"mlp"`` or ``"both"``.
        Cs: C sweep of the logistic probes (1e-3 ... 1e4, 8 values).
        multi_label: descriptor holding each item's label set; ``None`` = single-label
            (the items' ``label``).
        label_separator: separator of string-valued label sets (``"|"``).
        standardize, dtype, max_iter, tol: logistic solver options (sklearn semantics); a
            fit counts as converged only when ``max |grad| <= tol``.
        solver_memory_gb: memory the logistic solver may use (larger fits are chunked).
        pooling: pooling of both towers (``None``: adapter defaults).
        mlp_hidden, mlp_weight_decay, mlp_max_epochs, mlp_patience: the MLP sweep.
    """

    name: ClassVar[str] = "human_centric"
    catalogue: ClassVar[tuple[str, ...]] = ("M7",)
    summary: ClassVar[str] = (
        "Linear / MLP probes on image, text and concatenated image+text features "
        "(single- and multi-label)"
    )
    defaults: ClassVar[dict[str, Any]] = {
        "feature_sets": list(FEATURE_SETS),
        "image_model": None,
        "text_model": None,
        "layer": "embedding",
        "train_split": "train",
        "test_split": "test",
        "val_fraction": 0.2,
        "probe": "linear",
        "Cs": list(DEFAULT_CS),
        "multi_label": None,
        "label_separator": "|",
        "standardize": True,
        "dtype": "float32",
        "max_iter": 1000,
        "tol": 1e-4,
        "solver_memory_gb": 2.0,
        "pooling": None,
        **MLP_PARAM_DEFAULTS,
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        sets = p["feature_sets"]
        sets = [sets] if isinstance(sets, str) else list(sets or [])
        if not sets:
            raise ConfigError("human_centric: feature_sets is empty")
        p["feature_sets"] = list(dict.fromkeys(_normalise_set(s) for s in sets))
        for key in ("image_model", "text_model"):
            if p[key] is not None and p[key] not in self.models:
                raise ConfigError(f"human_centric: {key} {p[key]!r} is not one of the "
                                  f"analysis' models {self.models}")
        if p["probe"] not in _PROBES:
            raise ConfigError(f"human_centric: probe must be one of {_PROBES}, "
                              f"got {p['probe']!r}")
        if not 0.0 < float(p["val_fraction"]) < 1.0:
            raise ConfigError(f"human_centric: val_fraction must be in (0, 1), "
                              f"got {p['val_fraction']}")
        check_solver_params(self.name, p)
        if p["train_split"] == p["test_split"]:
            raise ConfigError("human_centric: train_split and test_split must differ")
        check_layer_spec(self.name, "layer", p["layer"], ("embedding", "last"), many=False)
        if p["multi_label"] is not None and not isinstance(p["multi_label"], str):
            raise ConfigError(f"human_centric: multi_label must be a descriptor name, "
                              f"got {p['multi_label']!r}")

    # ---------------------------------------------------------------------------------------
    def _pairs(self) -> list[tuple[str | None, str | None]]:
        p = self.params
        if p["image_model"] is not None or p["text_model"] is not None:
            return [(p["image_model"], p["text_model"])]
        return [(m, m) for m in self.models]

    def _plan(self, source: FeatureSource) -> tuple[list[dict[str, Any]], list[str]]:
        """Jobs ``{set, image_model, text_model}`` that can run, and notes on skipped ones."""
        p = self.params
        splits = source.splits(self.dataset)
        for key in ("train_split", "test_split"):
            if p[key] not in splits:
                raise AnalysisError(f"human_centric: dataset {self.dataset!r} has no split "
                                    f"{p[key]!r} ({key}); available: {splits}")
        data_mods = tuple(source.dataset_modalities(self.dataset))
        jobs, notes = [], []
        for img, txt in self._pairs():
            for fset in p["feature_sets"]:
                ok = True
                for mod in _NEEDS[fset]:
                    model = img if mod == "image" else txt
                    if mod not in data_mods:
                        ok = False
                        notes.append(
                            f"human_centric: feature set {fset!r} skipped: dataset "
                            f"{self.dataset!r} has no item {mod}s ({'/'.join(data_mods)} only); "
                            f"{mod} features need item {mod}s (e.g. options.text_column)")
                    elif model is None or mod not in source.model_modalities(model):
                        ok = False
                        who = model if model is not None else f"(no {mod}_model)"
                        notes.append(f"human_centric: feature set {fset!r} skipped: model "
                                     f"{who!r} has no {mod} tower")
                if ok:
                    jobs.append({"set": fset, "pair": (img, txt),
                                 "image_model": img if "image" in _NEEDS[fset] else None,
                                 "text_model": txt if "text" in _NEEDS[fset] else None})
        if not jobs:
            raise AnalysisError(f"human_centric: no feature set of {p['feature_sets']} can be "
                                f"computed for models {self.models} on dataset "
                                f"{self.dataset!r}: {'; '.join(dict.fromkeys(notes))}")
        any_model = jobs[0]["image_model"] or jobs[0]["text_model"]
        notes += split_pair_duplicates(source, self.name, any_model, self.dataset,
                                       p["train_split"], p["test_split"])
        return jobs, list(dict.fromkeys(notes))

    def _request(self, model: str, split: str, modality: str) -> FeatureRequest:
        return FeatureRequest(model, self.dataset, split, sites=None,
                              pooling=self.params["pooling"], modality=modality)

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        jobs, _ = self._plan(source)
        wanted = {(j[f"{mod}_model"], mod) for j in jobs for mod in ("image", "text")
                  if j[f"{mod}_model"] is not None}
        return [self._request(m, self.params[s], mod) for m, mod in sorted(wanted)
                for s in ("train_split", "test_split")]

    def _site(self, feats: LayerFeatures, model: str, notes: list[str]) -> str:
        return select_layer_sites(feats, self.params["layer"], model, fallback="last",
                                  notes=notes, analysis=self.name)[0]

    def _multi_label_sets(self, source: FeatureSource, model: str, split: str,
                          modality: str, ids: list[str]) -> list[tuple[str, ...]]:
        name = self.params["multi_label"]
        getter = getattr(source, "stimuli", None)
        if getter is None:
            raise AnalysisError("human_centric: multi_label needs the items' descriptors; this "
                                "feature source does not expose them (no stimuli())")
        stimuli = getter(self._request(model, split, modality))
        if name not in stimuli.descriptors:
            raise AnalysisError(f"human_centric: split {split!r} of dataset {self.dataset!r} "
                                f"has no descriptor {name!r} (multi_label); descriptors: "
                                f"{sorted(stimuli.descriptors)}")
        if list(stimuli.ids) != list(ids):
            raise AnalysisError(f"human_centric: descriptor {name!r} of split {split!r} is not "
                                "aligned with the features' item ids")
        return parse_label_sets(stimuli.descriptors[name], self.params["label_separator"])

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        p = self.params
        jobs, notes = self._plan(source)
        multi = p["multi_label"] is not None
        cache: dict[tuple[str, str, str], LayerFeatures] = {}

        def feats_of(model: str, mod: str, split: str) -> LayerFeatures:
            key = (model, mod, split)
            if key not in cache:
                cache[key] = source.get(self._request(model, split, mod))
            return cache[key]

        # one group per encoder pair: all its feature sets share one batched solve
        groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
        for job in jobs:
            groups.setdefault(job["pair"], []).append(job)

        rows: list[dict[str, Any]] = []
        for members in groups.values():
            data = {split_key: self._assemble(members, p[split_key], feats_of, notes)
                    for split_key in ("train_split", "test_split")}
            rows.extend(self._fit_group(source, members, data, multi, notes))
        table = pd.DataFrame(rows)
        figures = {"human_centric": plot_human_centric(table, self.dataset)} if len(table) else {}
        return Result(analysis=self.name, catalogue=self.catalogue, table=table,
                      figures=figures, params=dict(p), notes=list(dict.fromkeys(notes)))

    # ---------------------------------------------------------------------------------------
    def _assemble(self, members, split, feats_of, notes) -> dict[str, Any]:
        """Per feature set: X ``[N, D]``, site, layer, model; plus ids / labels (aligned)."""
        ref_ids: list[str] | None = None
        ref_labels: np.ndarray | None = None
        ref_what = ""
        out: dict[str, Any] = {"sets": {}}
        parts_cache: dict[tuple[str, str], tuple[np.ndarray, str, Any, LayerFeatures]] = {}

        def part(model: str, mod: str):
            if (model, mod) not in parts_cache:
                f = feats_of(model, mod, split)
                site = self._site(f, model, notes)
                if site not in f.features:
                    raise AnalysisError(f"human_centric: model {model!r} split {split!r}: "
                                        f"no site {site!r} in the extracted features")
                x = np.asarray(f.features[site])
                check_finite(x, model, site, f"{mod} tower, dataset {self.dataset!r} split "
                             f"{split!r}", f.ids)
                if x.ndim != 2 or x.shape[0] != len(f.ids):
                    raise AnalysisError(f"human_centric: model {model!r} site {site!r}: "
                                        f"features of shape {x.shape} for {len(f.ids)} items")
                parts_cache[(model, mod)] = (x, site, f.layers.get(site), f)
            return parts_cache[(model, mod)]

        for job in members:
            xs, sites, layers = [], [], []
            for mod in _NEEDS[job["set"]]:
                model = job[f"{mod}_model"]
                x, site, layer, f = part(model, mod)
                what = f"{mod} features of model {model!r} (split {split!r})"
                if ref_ids is None:
                    ref_ids, ref_labels, ref_what = list(f.ids), f.labels, what
                elif list(f.ids) != ref_ids:
                    order = align_rows(f.ids, ref_ids, what, ref_what)
                    x = x[order]
                    labels = None if f.labels is None else np.asarray(f.labels)[order]
                    check_same_labels(labels, ref_labels, what, ref_what)
                else:
                    check_same_labels(f.labels, ref_labels, what, ref_what)
                xs.append(x)
                sites.append(site)
                layers.append(layer)
            model_name = "+".join(dict.fromkeys(job[f"{m}_model"] for m in _NEEDS[job["set"]]))
            out["sets"][job["set"]] = {
                "X": np.concatenate(xs, axis=1) if len(xs) > 1 else xs[0],
                "site": "+".join(sites), "layer": layers[0] if len(layers) == 1 else None,
                "model": model_name,
            }
        out["ids"], out["labels"], out["what"] = ref_ids, ref_labels, ref_what
        # any part gives the request used for descriptors
        first = members[0]
        mod0 = _NEEDS[first["set"]][0]
        out["ref"] = (first[f"{mod0}_model"], mod0)
        return out

    # ---------------------------------------------------------------------------------------
    def _fit_group(self, source, members, data, multi: bool, notes) -> list[dict[str, Any]]:
        p = self.params
        tr, te = data["train_split"], data["test_split"]
        assert_disjoint_ids(tr["ids"], te["ids"], f"split {p['train_split']!r}",
                            f"split {p['test_split']!r}")
        n_tr = len(tr["ids"])
        if multi:
            model0, mod0 = tr["ref"]
            sets_tr = self._multi_label_sets(source, model0, p["train_split"], mod0, tr["ids"])
            sets_te = self._multi_label_sets(source, model0, p["test_split"], mod0, te["ids"])
            vocab = sorted({lab for s in [*sets_tr, *sets_te] for lab in s})
            if not vocab:
                raise AnalysisError("human_centric: the multi-label sets are all empty")
            Ytr_all, Yte = label_matrix(sets_tr, vocab), label_matrix(sets_te, vocab)
            strat = np.zeros(n_tr, dtype=np.int64)
        else:
            for part in (tr, te):
                if part["labels"] is None:
                    raise AnalysisError(f"human_centric: {part['what']} has no labels; set "
                                        "multi_label for label sets, or use a labelled dataset")
            ytr_all = np.asarray(tr["labels"]).astype(np.int64)
            yte = np.asarray(te["labels"]).astype(np.int64)
            if len(np.unique(ytr_all)) < 2:
                raise AnalysisError(f"human_centric: {tr['what']} of dataset "
                                    f"{self.dataset!r}: split {p['train_split']!r} has a single "
                                    "class; a classifier needs at least 2")
            strat = ytr_all
        tr_idx, va_idx = carve_validation(
            strat, float(p["val_fraction"]), self.seed,
            f"human_centric: split {p['train_split']!r} of dataset {self.dataset!r} "
            f"({n_tr} items)")
        ids_tr = [tr["ids"][i] for i in tr_idx]
        ids_va = [tr["ids"][i] for i in va_idx]
        assert_disjoint_ids(ids_tr, ids_va, f"the training part of split {p['train_split']!r}",
                            "the validation split carved from it (duplicate item ids?)")
        assert_disjoint_ids(ids_va, te["ids"], "validation split", f"split {p['test_split']!r}")
        names = [m["set"] for m in members]
        Xtr = [tr["sets"][s]["X"][tr_idx] for s in names]
        Xva = [tr["sets"][s]["X"][va_idx] for s in names]
        Xte = [te["sets"][s]["X"] for s in names]
        what = "human_centric: pair " + "+".join(dict.fromkeys(
            str(m) for m in members[0]["pair"] if m))
        mlp_kw = mlp_options(p, self.seed, run_device(source))
        probes = ["linear", "mlp"] if p["probe"] == "both" else [p["probe"]]
        X = (Xtr, Xva, Xte)
        if multi:
            results, baseline, constant = probe_multi_label(
                X, (Ytr_all[tr_idx], Ytr_all[va_idx], Yte), probes, p, what, notes, mlp_kw)
            if constant:
                notes.append(f"human_centric: label(s) {[vocab[k] for k in constant]} have a "
                             f"single value in the training part of {p['train_split']!r}; "
                             "predicted constant")
            n_classes = len(vocab)
        else:
            ytr = ytr_all[tr_idx]
            if len(np.unique(ytr)) < 2:
                raise AnalysisError(f"human_centric: {tr['what']} of dataset "
                                    f"{self.dataset!r}: the training part of split "
                                    f"{p['train_split']!r} (after the validation carve) has a "
                                    "single class")
            results, baseline = probe_single_label(
                X, (ytr, ytr_all[va_idx], yte), probes, p, what, notes, mlp_kw)
            n_classes = len(np.unique(np.concatenate([ytr_all, yte])))
        rows = []
        for probe, s, scores, extra in results:
            fset = names[s]
            info = tr["sets"][fset]
            job = members[s]
            for metric, value in scores.items():
                rows.append({
                    "analysis": self.name, "model": info["model"], "dataset": self.dataset,
                    "pair": "+".join(dict.fromkeys(str(m) for m in job["pair"] if m)),
                    "layer": info["layer"], "site": info["site"], "metric": metric,
                    "value": float(value), "feature_set": fset, "probe": probe,
                    "task": "multi_label" if multi else "single_label",
                    "image_model": job["image_model"], "text_model": job["text_model"],
                    "dim": int(Xtr[s].shape[1]), "n_train": len(tr_idx), "n_val": len(va_idx),
                    "n_test": len(te["ids"]), "n_classes": n_classes,
                    "baseline": float(baseline[metric]), "seed": self.seed, **extra,
                })
        return rows


# (the metrics and label-set helpers live in human_centric_parts; re-exported here)
__all__ = [
    "FEATURE_SETS", "MULTI_METRICS", "SINGLE_METRICS", "HumanCentric",
    "label_matrix", "multi_label_scores", "parse_label_sets", "single_label_scores",
]

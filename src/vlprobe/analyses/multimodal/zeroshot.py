"""M1 ``zero_shot``: zero-shot classification of a dual encoder, with prompt ensembling.

Protocol (SCIENCE.md M1; Radford et al. 2021 §3.1.4, the CLIP ImageNet notebook; seed 002):

1. Every class name goes into every template (``"a photo of a {}."``): C x T prompts, run
   through the text tower ONCE (one class-prompt extraction through the activation store,
   ``FeatureRequest(view="class_prompts")``, only the ``text.proj`` site); the images of
   ``split`` through the image tower once (``vision.proj``). Both are cached.
2. Prompt ensembling: each prompt embedding is L2-normalised, a class' T embeddings are
   averaged and the mean renormalised -> the ``[C, E]`` zero-shot classifier.
3. Logits = ``scale * cos(image, class) + bias`` with the model's learnt logit scale (and
   SigLIP's bias). Scale > 0 and bias change no argmax, top-k or recall - only the
   probabilities in the ``predictions`` table (softmax over classes; a per-class sigmoid for
   a model with a bias, as SigLIP is trained).
4. Reported on ``split``: ``top1_accuracy`` and ``top{k}_accuracy`` with Clopper-Pearson
   intervals (``ci_low`` / ``ci_high``), ``mean_per_class_recall``; ``chance`` = 1/C (k/C).
   Extra tables: ``per_template`` (each template alone as a 1-prompt classifier, and the
   ensemble: which prompts help) and ``predictions`` (per image: predicted class, rank of the
   true class, probabilities; for error analysis).
5. Zero-shot vs linear probe (``linear_probe``): V2's CLIP-protocol logistic probe
   (:func:`vlprobe.estimators.logistic.clip_protocol.clip_linear_probe`, its C sweep and
   validation carve)
   fitted on the ``train_split`` images at the SAME embedding site and scored on the same
   ``split`` items. The gap ``linear_probe_minus_zero_shot_<metric>`` = linear-probe score -
   zero-shot score (in accuracy units; > 0: labelled examples add what the prompts lack).

Class names: the dataset's ``label_names`` or ``class_names`` (a packaged set ``imagenet`` /
``cifar10``, a file or a list; one per class index). Templates: ``templates`` (packaged
``imagenet`` = CLIP's 80, ``cifar10`` = CLIP's 18, one template, a list or a file). Bad
input (empty / duplicate class names, a template without ``{}``, a model without a text
tower, a dataset without labels) is a clear error (:mod:`vlprobe.data.prompts.params`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses._common import (
    assert_disjoint_ids,
    carve_validation,
    check_finite,
    check_labels,
    solver_options,
    split_pair_duplicates,
)
from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, Result
from vlprobe.analyses.multimodal._common import (
    binomial_ci,
    embedding_requests,
    logit_params,
    only_site,
    require_towers,
    unit_rows,
)
from vlprobe.analyses.multimodal.zeroshot_classifier import (
    class_ranks,
    ensemble_classifier,
    rank_metrics,
    template_ranks,
)
from vlprobe.data.prompts.params import resolve_class_names, resolve_template_param
from vlprobe.errors import AnalysisError, ConfigError
from vlprobe.estimators.logistic import convergence_note

#: the V2 parameters ``probe`` may set (the rest is fixed by M1: embedding site, splits).
PROBE_KEYS = ("val_fraction", "coarse_Cs", "fine_points", "refine_rounds", "standardize",
              "dtype", "max_iter", "tol", "solver_memory_gb")


class ZeroShot(Analysis):
    """Zero-shot classification with prompt templates and ensembling (M1).

    Params:
        split: the split classified (``"test"``).
        class_names: None (the dataset's label names), a packaged set (``"imagenet"``,
            ``"cifar10"``), a file (JSON list / object, or one name per line) or a list.
        templates: a packaged set (``"imagenet"``: CLIP's 80, the default; ``"cifar10"``:
            CLIP's 18), one template (``"a photo of a {}."``), a list or a file.
        top_k: k of the top-k accuracy (5).
        ci_level: confidence level of the accuracy intervals (0.95).
        linear_probe: ``"auto"`` (default: when ``train_split`` exists), true or false: the
            V2 linear probe on the same image embeddings, and the gap.
        train_split: the split the linear probe is fitted on (``"train"``).
        probe: V2 parameters for the probe (``coarse_Cs``, ``refine_rounds``, ``max_iter``,
            ``standardize``, ``solver_memory_gb``, ...; see ``transfer``: raw features by
            default, as CLIP's probe). The probe's rows record ``standardized``; the notes
            count unconverged fits by stop reason and give the solver's memory estimate.
    """

    name: ClassVar[str] = "zero_shot"
    catalogue: ClassVar[tuple[str, ...]] = ("M1",)
    summary: ClassVar[str] = "Zero-shot classification: prompt ensembles, per-template, LP gap"
    defaults: ClassVar[dict[str, Any]] = {
        "split": "test",
        "class_names": None,
        "templates": "imagenet",
        "top_k": 5,
        "ci_level": 0.95,
        "linear_probe": "auto",
        "train_split": "train",
        "probe": {},
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        from vlprobe.analyses.vision.transfer import Transfer

        super().__init__(models, dataset, params, seed)
        p = self.params
        self.class_names = resolve_class_names(p["class_names"], "zero_shot: class_names")
        self.templates = resolve_template_param(p["templates"], "zero_shot: templates")
        if not isinstance(p["top_k"], int | np.integer) or isinstance(p["top_k"], bool) \
                or p["top_k"] < 1:
            raise ConfigError(f"zero_shot: top_k must be an integer >= 1, got {p['top_k']!r}")
        if not 0.0 < float(p["ci_level"]) < 1.0:
            raise ConfigError(f"zero_shot: ci_level must be in (0, 1), got {p['ci_level']!r}")
        if p["linear_probe"] not in ("auto", True, False):
            raise ConfigError(f"zero_shot: linear_probe must be 'auto', true or false, got "
                              f"{p['linear_probe']!r}")
        probe = p["probe"] if p["probe"] is not None else {}
        if not isinstance(probe, dict):
            raise ConfigError(f"zero_shot: probe must be a mapping of V2 parameters, got "
                              f"{probe!r}")
        unknown = sorted(set(probe) - set(PROBE_KEYS))
        if unknown:
            raise ConfigError(f"zero_shot: probe: unknown key(s) {unknown}; allowed (V2 "
                              f"transfer parameters): {list(PROBE_KEYS)}")
        self._probe: Transfer | None = None
        if p["linear_probe"] is not False:
            if p["train_split"] == p["split"]:
                raise ConfigError("zero_shot: train_split and split must differ for the probe")
            try:  # V2 validates its own parameters (C grid, rounds, dtype, ...)
                self._probe = Transfer(self.models, self.dataset,
                                       {**probe, "train_split": p["train_split"],
                                        "test_split": p["split"]}, seed)
            except ConfigError as exc:
                raise ConfigError(f"zero_shot: probe: {exc}") from None

    # -- planning ------------------------------------------------------------------------
    def _with_probe(self, source: FeatureSource) -> bool:
        mode = self.params["linear_probe"]
        if self._probe is None:
            return False
        if mode == "auto":
            return self.params["train_split"] in source.splits(self.dataset)
        return bool(mode)

    def _check_split(self, source: FeatureSource, split: str) -> None:
        splits = source.splits(self.dataset)
        if split not in splits:
            raise AnalysisError(f"zero_shot: dataset {self.dataset!r} has no split {split!r}; "
                                f"available: {splits}")

    def _requests(self, source: FeatureSource, model: str
                  ) -> tuple[FeatureRequest, FeatureRequest, FeatureRequest | None]:
        require_towers(source, self.name, model)
        self._check_split(source, self.params["split"])
        image, text = embedding_requests(source, model, self.dataset, self.params["split"],
                                         self.templates, self.class_names)
        train = None
        if self._with_probe(source):
            self._check_split(source, self.params["train_split"])
            train = FeatureRequest(model, self.dataset, self.params["train_split"],
                                   sites=image.sites, modality="image")
        return image, text, train

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        return [r for m in self.models for r in self._requests(source, m) if r is not None]

    # -- running -------------------------------------------------------------------------
    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        from vlprobe.analyses.multimodal.plots import plot_per_template, plot_zero_shot

        p = self.params
        k = int(p["top_k"])
        rows: list[dict[str, Any]] = []
        per_template: list[dict[str, Any]] = []
        predictions: list[pd.DataFrame] = []
        notes = [f"zero_shot: {len(self.templates)} template(s); the ensemble classifier of a "
                 "class is the mean of its L2-normalised prompt embeddings, renormalised "
                 "(CLIP's notebook); each prompt and each image ran through its tower once"]
        for model in self.models:
            req_img, req_txt, req_train = self._requests(source, model)
            f_img, f_txt = source.get(req_img), source.get(req_txt)
            y = check_labels(f_img, model, f"split {p['split']!r} of {self.dataset!r}")
            names = list(f_txt.label_names or [])
            n_cls, n_tpl = len(names), len(self.templates)
            txt_raw = only_site(f_txt, req_txt)
            if txt_raw.shape[0] != n_cls * n_tpl:
                raise AnalysisError(f"zero_shot: model {model!r}: {txt_raw.shape[0]} prompt "
                                    f"embeddings for {n_cls} classes x {n_tpl} templates")
            where = f"zero_shot: model {model!r} on {self.dataset!r}/{p['split']!r}"
            img = unit_rows(only_site(f_img, req_img), f"{where} images", f_img.ids)
            txt = unit_rows(txt_raw, f"{where} prompts", f_txt.ids)
            scale, bias, scale_notes = logit_params(source, model)
            notes += scale_notes
            notes.append(f"zero_shot: model {model!r}: logits = {scale:.4g} * cos"
                         + (f" + {bias:.4g}" if bias is not None else "")
                         + "; scale and bias change no argmax, top-k or recall, only the "
                         "probabilities of the predictions table ("
                         + ("per-class sigmoid" if bias is not None else "softmax over classes")
                         + ")")
            classifier = ensemble_classifier(txt, n_cls, n_tpl)
            r = class_ranks(img, classifier, y, scale, bias)
            scores = rank_metrics(r["rank"], y, k, n_cls)
            base = {"analysis": self.name, "model": model, "dataset": self.dataset,
                    "layer": None, "site": req_img.sites[0], "text_site": req_txt.sites[0],
                    "n": len(y), "n_classes": n_cls, "n_templates": n_tpl,
                    "logit_scale": scale, "logit_bias": bias, "seed": self.seed}
            for metric, value in scores.items():
                row = {**base, "metric": metric, "value": value, "classifier": "zero_shot",
                       "chance": min(1.0, (k if metric.startswith(f"top{k}") else 1) / n_cls)}
                if metric != "mean_per_class_recall":
                    hits = round(value * len(y))
                    row["ci_low"], row["ci_high"] = binomial_ci(hits, len(y), p["ci_level"])
                rows.append(row)
            per_template += self._per_template(model, img, txt, y, n_cls, k, scores)
            predictions.append(pd.DataFrame({
                "model": model, "id": f_img.ids, "label": y,
                "label_name": [names[c] for c in y], "predicted": r["pred"],
                "predicted_name": [names[c] for c in r["pred"]], "true_class_rank": r["rank"],
                "p_predicted": r["p_pred"], "p_true": r["p_true"]}))
            if req_train is not None:
                rows += self._linear_probe(source, model, req_train, req_img, f_img, y, scores,
                                           base, notes)
        if n_cls <= k:
            notes.append(f"zero_shot: top-{k} accuracy skipped: {n_cls} classes <= {k} makes "
                         "it trivially 1")
        if not self._with_probe(source) and p["linear_probe"] == "auto":
            notes.append(f"zero_shot: no linear probe: dataset {self.dataset!r} has no split "
                         f"{p['train_split']!r}")
        table = pd.DataFrame(rows)
        templates = pd.DataFrame(per_template)
        preds = pd.concat(predictions, ignore_index=True)
        figures = {
            "zero_shot": plot_zero_shot(table, title=f"Zero-shot classification ({self.dataset})"),
            "per_template": plot_per_template(templates, title=f"Top-1 per template "
                                                               f"({self.dataset})"),
        }
        params = {**p, "templates": list(self.templates)}
        return Result(analysis=self.name, catalogue=self.catalogue, table=table, figures=figures,
                      params=params, notes=list(dict.fromkeys(notes)),
                      extra_tables={"per_template": templates, "predictions": preds})

    def _per_template(self, model: str, img: np.ndarray, txt: np.ndarray, y: np.ndarray,
                      n_cls: int, k: int, ensemble: dict[str, float]) -> list[dict[str, Any]]:
        """One row per template (a 1-prompt classifier) and one for the ensemble."""
        ranks = template_ranks(img, txt, y, n_cls, len(self.templates))
        out = []
        for t, template in enumerate(self.templates):
            out.append({"model": model, "template_index": t, "template": template,
                        **rank_metrics(ranks[:, t], y, k, n_cls)})
        out.append({"model": model, "template_index": -1,
                    "template": f"ensemble of {len(self.templates)}", **ensemble})
        return out

    def _linear_probe(self, source: FeatureSource, model: str, req_train: FeatureRequest,
                      req_test: FeatureRequest, f_test: Any, y_test: np.ndarray,
                      zero_shot: dict[str, float], base: dict[str, Any], notes: list[str]
                      ) -> list[dict[str, Any]]:
        """V2's linear probe on the same embedding site; its scores and the gap rows."""
        from vlprobe.estimators.logistic.clip_protocol import clip_linear_probe

        assert self._probe is not None  # _with_probe checked it
        q = self._probe.params
        site = req_train.sites[0]
        f_tr = source.get(req_train)
        y_tr = check_labels(f_tr, model, f"split {req_train.split!r} of {self.dataset!r}")
        if len(np.unique(y_tr)) < 2:
            raise AnalysisError(f"zero_shot: model {model!r}: split {req_train.split!r} has a "
                                "single class; the linear probe needs at least 2")
        x_tr, x_te = only_site(f_tr, req_train), only_site(f_test, req_test)
        check_finite(x_tr, model, site, f"dataset {self.dataset!r} split {req_train.split!r}",
                     f_tr.ids)
        check_finite(x_te, model, site, f"dataset {self.dataset!r} split {req_test.split!r}",
                     f_test.ids)
        what = f"zero_shot: model {model!r}: split {req_train.split!r} of {self.dataset!r}"
        fit, val = carve_validation(y_tr, float(q["val_fraction"]), self.seed, what)
        assert_disjoint_ids([f_tr.ids[i] for i in np.concatenate([fit, val])], f_test.ids,
                            f"split {req_train.split!r}", f"split {req_test.split!r}")
        notes += split_pair_duplicates(source, self.name, model, self.dataset, req_train.split,
                                       req_test.split)
        out = clip_linear_probe(
            ([x_tr[fit]], y_tr[fit]), ([x_tr[val]], y_tr[val]), ([x_te], y_test),
            q["coarse_Cs"], int(q["fine_points"]), int(q["refine_rounds"]),
            int(self.params["top_k"]), **solver_options(q))
        what = f"zero_shot: model {model!r}: linear probe"
        note = convergence_note(what, out.probe_converged, out.stop_reason, float(q["tol"]),
                                int(q["max_iter"]))
        notes.extend(n for n in (note, out.memory and f"{what}: {out.memory.describe()}") if n)
        notes.append("zero_shot: linear_probe_minus_zero_shot_<metric> = the V2 linear probe's "
                     "score - the zero-shot score, both on the same test items and the same "
                     f"image embedding ({site}); > 0: labelled training images add what the "
                     "prompts lack")
        lp_base = {**base, "classifier": "linear_probe", "C": float(out.best_C[0]),
                   "standardized": bool(q["standardize"]),
                   "n_train": len(fit), "n_val": len(val)}
        rows = []
        for metric, values in out.scores.items():
            value = float(values[0])
            rows.append({**lp_base, "metric": f"linear_probe_{metric}", "value": value})
            if metric in zero_shot:
                rows.append({**lp_base, "classifier": "gap",
                             "metric": f"linear_probe_minus_zero_shot_{metric}",
                             "value": value - zero_shot[metric]})
        return rows

"""M3 ``typographic_attack``: a wrong class name written on the image, zero-shot before/after.

Protocol (SCIENCE.md M3; seed 002, "CLIP: Typographic Attacks"; Goh et al. 2021):

1. ``n_images`` images of ``split`` (a seeded subsample; null = all) of a labelled image
   dataset. Each is upscaled to ``min_size`` px on its shorter side when smaller (so words are
   legible on 32 px images) and rendered three ways, all through the same code
   (:mod:`vlprobe.data.typography`): **clean** (no text), **attack** (the name of a wrong
   class ``t``) and **control** (a random letter string with the length and shape of ``t``'s
   name, at the same position). ``targets: all`` writes every wrong class (K-1 attacks per
   image), an int ``k`` a seeded draw of k of them. Size, position, colour, outline, opacity
   and font are parameters. The rendered images are a Stimuli whose digests are sha1 of
   their pixels: extraction goes through the activation store and is cached.
2. Zero-shot with the dual encoder: class vectors from ``templates`` (prompt ensembling),
   the argmax cosine of ``vision.proj`` against them.
3. Reported per model and prompt set, over (image, written class) pairs, with percentile
   bootstrap CIs that resample images (the pairs of one image move together):
   ``clean_accuracy`` (per image), ``attack_accuracy``, ``control_accuracy``,
   ``accuracy_drop`` (clean - attack), ``control_accuracy_drop`` (clean - control),
   ``flip_rate`` (attack predicted as the written class), ``control_target_rate`` (control
   predicted as that class: the level of ``flip_rate`` without the word),
   ``typographic_effect`` (flip_rate - control_target_rate) and ``flip_rate_clean_correct``
   (flip rate among pairs whose clean image was right).
4. Defence (a prompt variant): ``defence_templates`` (default "a photo of a {}, not the
   text.") give a second set of class vectors; its rows have ``prompts = "defence"`` and the
   pairwise change of the flip rate is ``flip_rate_change`` (``prompts = "defence-plain"``).
   It needs only the text tower, so it runs for every dual encoder. The literature's
   learned version (Defense-Prefix, Azuma & Matsui 2023) optimises a prefix token through the
   text tower by gradient; the adapters expose a differentiable path for the image tower
   only, so that variant is not implemented (the notes say so).

Figures: ``summary`` (the metrics with CIs) and ``examples_<model>`` (clean / attack /
control images with their predictions). Extra tables: ``per_target`` (flip rate per written
class) and ``pairs`` (every pair's predictions).

Bad input: a model without a text tower, a dataset without images, labels or class names,
an empty or duplicate class name, fewer than 2 classes, no font (the error names the Debian
package ``fonts-dejavu-core``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, Result
from vlprobe.analyses.multimodal._attacks_common import (
    IMAGE_SITE,
    TEXT_SITE,
    check_ci,
    check_positive_int,
    cluster_bootstrap,
    site_features,
)
from vlprobe.analyses.multimodal._common import require_towers, unit_rows
from vlprobe.analyses.multimodal.zeroshot_classifier import predict_classes, prompt_classifier
from vlprobe.data.prompts.params import check_class_names, resolve_template_param
from vlprobe.data.typography import (
    TextJob,
    TextStyle,
    find_font,
    nonword_like,
    typographic_stimuli,
)
from vlprobe.errors import AnalysisError, DataError

#: the metrics, in the order of the table and the summary figure.
METRICS = ("clean_accuracy", "attack_accuracy", "control_accuracy", "accuracy_drop",
           "control_accuracy_drop", "flip_rate", "control_target_rate", "typographic_effect",
           "flip_rate_clean_correct")
DEFENCE_NOTE = (
    "typographic_attack: the defence is a prompt variant (defence_templates): it changes only "
    "the class text vectors, so it runs for every dual encoder, differentiable or not. The "
    "learned Defense-Prefix of the literature (Azuma & Matsui 2023: a prefix token optimised "
    "by gradient through the text tower) is not implemented: the adapters expose a "
    "differentiable path for the image tower only"
)


class TypographicAttack(Analysis):
    """Typographic attack on zero-shot classification (M3). See the module docstring.

    Params:
        split: the image split (``"test"``). n_images: seeded subsample size (null = all).
        targets: ``"all"`` wrong classes per image, or an int k (a seeded draw of k).
        templates: prompt templates of the class vectors.
        defence_templates: the defence prompt variant ([] = none).
        size, position, colour, stroke_colour, stroke_width, opacity, font: the text style
            (:class:`~vlprobe.data.typography.TextStyle`; size is a fraction of the shorter
            side, position ``center``/``top``/``bottom``/``random`` or ``[x, y]``).
        min_size: images are upscaled to this shorter side before rendering (null = never).
        n_boot, ci: bootstrap resamples (over images) and interval level.
        n_examples: images in the examples figure.
    """

    name: ClassVar[str] = "typographic_attack"
    catalogue: ClassVar[tuple[str, ...]] = ("M3",)
    summary: ClassVar[str] = "Typographic attack: wrong class name written on images, zero-shot"
    defaults: ClassVar[dict[str, Any]] = {
        "split": "test",
        "n_images": 200,
        "targets": "all",
        "templates": ["a photo of a {}."],
        "defence_templates": ["a photo of a {}, not the text."],
        "size": 0.2,
        "position": "center",
        "colour": "white",
        "stroke_colour": "black",
        "stroke_width": 0.08,
        "opacity": 1.0,
        "font": None,
        "min_size": 224,
        "n_boot": 1000,
        "ci": 0.95,
        "n_examples": 4,
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        self.style = TextStyle.from_params(p, self.name)
        p["templates"] = resolve_template_param(p["templates"], f"{self.name}: templates")
        if p["defence_templates"] is None or (isinstance(p["defence_templates"], list | tuple)
                                              and not p["defence_templates"]):
            p["defence_templates"] = []
        else:
            p["defence_templates"] = resolve_template_param(
                p["defence_templates"], f"{self.name}: defence_templates")
        check_positive_int(p, "n_images", self.name, allow_none=True)
        check_positive_int(p, "min_size", self.name, allow_none=True)
        check_positive_int(p, "n_examples", self.name, low=0)
        check_ci(p, self.name)
        if p["targets"] != "all":
            check_positive_int(p, "targets", self.name + " (or 'all')")

    # -- planning --------------------------------------------------------------------------
    def _prompt_sets(self) -> list[tuple[str, tuple[str, ...]]]:
        sets = [("plain", tuple(self.params["templates"]))]
        if self.params["defence_templates"]:
            sets.append(("defence", tuple(self.params["defence_templates"])))
        return sets

    def _text_request(self, model: str, templates: tuple[str, ...]) -> FeatureRequest:
        return FeatureRequest(model, self.dataset, self.params["split"], sites=(TEXT_SITE,),
                              view="class_prompts", templates=templates, modality="text")

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        for model in self.models:
            require_towers(source, self.name, model)
        return [self._text_request(m, t) for m in self.models for _, t in self._prompt_sets()]

    def _jobs(self, labels: np.ndarray, names: list[str]) -> tuple[list[TextJob], np.ndarray]:
        """The clean / attack / control renderings of the chosen images, and those images."""
        p, k = self.params, len(names)
        n = len(labels)
        rng = np.random.default_rng(self.seed)
        chosen = (np.arange(n) if p["n_images"] is None or p["n_images"] >= n
                  else np.sort(rng.choice(n, int(p["n_images"]), replace=False)))
        jobs = [TextJob(int(i), "", "clean") for i in chosen]
        for i in chosen:
            wrong = [c for c in range(k) if c != labels[i]]
            if p["targets"] != "all" and int(p["targets"]) < len(wrong):
                pick = np.random.default_rng([self.seed, int(i), 2]).choice(
                    len(wrong), int(p["targets"]), replace=False)
                wrong = [wrong[j] for j in sorted(pick)]
            for c in wrong:
                control = nonword_like(names[c], np.random.default_rng([self.seed, int(i), c, 1]),
                                       avoid=names)
                jobs.append(TextJob(int(i), names[c], "attack", slot=c, target=c))
                jobs.append(TextJob(int(i), control, "control", slot=c, target=c))
        return jobs, chosen

    # -- running ---------------------------------------------------------------------------
    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        from vlprobe.analyses.multimodal.plots import (
            plot_typographic_examples,
            plot_typographic_summary,
        )

        p = self.params
        for model in self.models:
            require_towers(source, self.name, model)
        find_font(self.style.font)  # the clear error before any work
        where = f"dataset {self.dataset!r} split {p['split']!r}"
        base = source.stimuli(FeatureRequest(self.models[0], self.dataset, p["split"]))
        if base.images is None:
            raise DataError(f"{self.name}: {where} has no images to write on")
        if base.labels is None:
            raise DataError(f"{self.name}: {where} has no labels (needed for accuracy)")
        names = check_class_names(base.label_names, f"{self.name}: {where}", DataError)
        if len(names) < 2:
            raise AnalysisError(f"{self.name}: {where} has {len(names)} class; an attack "
                                "writes a wrong class name, so at least 2 are needed")
        jobs, chosen = self._jobs(base.labels, names)
        rendered = typographic_stimuli(base, jobs, self.style, self.seed, p["min_size"])
        kinds = np.array(rendered.descriptors["kind"])
        attack = np.flatnonzero(kinds == "attack")
        control = np.flatnonzero(kinds == "control")
        clean_of = {i: j for j, i in enumerate(chosen)}  # base index -> clean item (first n)
        base_idx = np.asarray(rendered.descriptors["base_index"])
        pair_clean = np.array([clean_of[i] for i in base_idx[attack]])
        y_pair = rendered.labels[attack]
        target = np.asarray(rendered.descriptors["target"])[attack]
        notes = [
            f"{self.name}: zero-shot over the {len(names)} class names of {where}; "
            f"{len(chosen)} images x {len(attack) / max(len(chosen), 1):.3g} written class(es) "
            f"= {len(attack)} attack/control pairs; the control is a random letter string of "
            "the written name's length and shape at the same position (not checked against a "
            "dictionary); CIs resample images",
        ]
        small = sum(min(base.images[int(i)].size) < (p["min_size"] or 0) for i in chosen[:50])
        if small:
            notes.append(f"{self.name}: images smaller than {p['min_size']} px were upscaled "
                         "(bicubic) before rendering; clean images went through the same "
                         "upscaling")
        if p["defence_templates"]:
            notes.append(DEFENCE_NOTE)

        rows: list[dict[str, Any]] = []
        per_target: list[dict[str, Any]] = []
        pairs: list[dict[str, Any]] = []
        figures: dict[str, Any] = {}
        for mi, model in enumerate(self.models):
            feats = source.extract(model, rendered, "image", (IMAGE_SITE,))
            x = unit_rows(site_features(feats, IMAGE_SITE, model, f"{where} (rendered)"),
                          f"{self.name}: model {model!r}: {where} (rendered)", feats.ids)
            flips: dict[str, np.ndarray] = {}
            preds_plain = None
            for pi, (prompts, templates) in enumerate(self._prompt_sets()):
                tf = source.get(self._text_request(model, templates))
                t = site_features(tf, TEXT_SITE, model, f"{where} class prompts")
                pred = predict_classes(x, prompt_classifier(
                    t, np.asarray(tf.labels), len(names),
                    f"{self.name}: model {model!r}: {where} class prompts", tf.ids))
                if preds_plain is None:
                    preds_plain = pred
                pc, pa, pk = pred[pair_clean], pred[attack], pred[control]
                values = {
                    "attack_accuracy": pa == y_pair,
                    "control_accuracy": pk == y_pair,
                    "accuracy_drop": (pc == y_pair).astype(float) - (pa == y_pair),
                    "control_accuracy_drop": (pc == y_pair).astype(float) - (pk == y_pair),
                    "flip_rate": pa == target,
                    "control_target_rate": pk == target,
                    "typographic_effect": (pa == target).astype(float) - (pk == target),
                }
                flips[prompts] = (pa == target).astype(float)
                clean_ok = pc == y_pair
                sets = {m: (v, base_idx[attack]) for m, v in values.items()}
                sets["clean_accuracy"] = (pred[: len(chosen)] == base.labels[chosen], chosen)
                sets["flip_rate_clean_correct"] = ((pa == target)[clean_ok],
                                                   base_idx[attack][clean_ok])
                if not clean_ok.any():
                    notes.append(f"{self.name}: model {model!r} ({prompts}): no clean image is "
                                 "classified right; flip_rate_clean_correct is NaN")
                for k, metric in enumerate(METRICS):
                    vals, clusters = sets[metric]
                    rows.append(self._row(model, prompts, templates, metric, vals, clusters,
                                          [self.seed, mi, pi, k], len(chosen), len(names)))
                for c in np.unique(target):
                    sel = target == c
                    per_target.append({
                        "model": model, "prompts": prompts, "written": names[c],
                        "n": int(sel.sum()), "flip_rate": float((pa == target)[sel].mean()),
                        "control_target_rate": float((pk == target)[sel].mean()),
                    })
                for j in range(len(attack)):
                    pairs.append({
                        "model": model, "prompts": prompts,
                        "image": rendered.descriptors["base_id"][attack[j]],
                        "true": names[y_pair[j]], "written": names[target[j]],
                        "control_text": rendered.descriptors["text"][control[j]],
                        "pred_clean": names[pc[j]], "pred_attack": names[pa[j]],
                        "pred_control": names[pk[j]],
                    })
            if "defence" in flips:
                change = flips["defence"] - flips["plain"]
                rows.append(self._row(model, "defence-plain", (), "flip_rate_change", change,
                                      base_idx[attack], [self.seed, mi, 99], len(chosen),
                                      len(names)))
            if int(p["n_examples"]):
                figures[f"examples_{model}"] = plot_typographic_examples(
                    rendered, preds_plain, names, chosen, attack, control, pair_clean,
                    int(p["n_examples"]), title=f"{model}: typographic attack ({self.dataset})")
        table = pd.DataFrame(rows)
        figures = {"summary": plot_typographic_summary(
            table, title=f"Typographic attack, zero-shot ({self.dataset})"), **figures}
        return Result(
            analysis=self.name, catalogue=self.catalogue, table=table, figures=figures,
            params={**p, "style": self.style.record()}, notes=list(dict.fromkeys(notes)),
            extra_tables={"per_target": pd.DataFrame(per_target), "pairs": pd.DataFrame(pairs)},
        )

    def _row(self, model: str, prompts: str, templates: tuple[str, ...], metric: str,
             values: np.ndarray, clusters: np.ndarray, key: list[int], n_images: int,
             n_classes: int) -> dict[str, Any]:
        p = self.params
        mean, low, high = cluster_bootstrap(
            np.asarray(values, dtype=float), clusters, int(p["n_boot"]), float(p["ci"]),
            np.random.default_rng(key))
        return {
            "analysis": self.name, "model": model, "dataset": self.dataset, "layer": None,
            "site": IMAGE_SITE, "metric": metric, "value": mean, "ci_low": low, "ci_high": high,
            "n": len(values), "prompts": prompts, "templates": " | ".join(templates),
            "n_images": n_images, "n_classes": n_classes,
            "chance": 1.0 / n_classes if metric.endswith(("accuracy", "rate")) else np.nan,
            "seed": self.seed,
        }


__all__ = ["DEFENCE_NOTE", "METRICS", "TypographicAttack"]


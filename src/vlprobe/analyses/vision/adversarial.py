"""V6 ``adversarial``: PGD robustness of a classifier head, with the semantic distance of errors.

For every model (it needs a differentiable image path) a head is chosen (``head``; see
:mod:`~vlprobe.analyses.vision.heads`): ``own`` (the model's classifier, e.g. EfficientNet-Lite0's
ImageNet ``vision.logits``), ``zero_shot`` (a dual encoder's class-prompt embeddings) or
``linear_probe`` (a logistic probe fitted on frozen features of ``train_split``); ``auto``
takes the first that the model has in that order. Items of ``split`` (a seeded subset of
``max_items``) that the head classifies correctly are attacked with PGD
(:mod:`~vlprobe.analyses.vision.pgd`) in pixel space [0, 1] before the model's normalisation,
for every norm and ε of ``epsilons`` (ε = 0 is the clean image). Reported per (model, norm, ε):

- ``accuracy``: fraction of the attacked subset classified correctly after the attack (clean
  errors count as errors), with a Wilson 95 % CI: the accuracy vs ε curve;
- ``attack_success_rate``: fraction of the clean-correct items fooled (targeted: that reached
  their random target);
- ``success_after_quantization`` / ``accuracy_after_quantization``: the same after rounding the
  adversarial image to 8 bits (what saving it as a PNG does);
- ``mean_steps_to_success`` and ``median_perturbation`` (achieved norm) of the successes.

Semantic distance (``wnids``): the WordNet path and Wu-Palmer similarity of the true and the
reached class are compared with the model's clean errors and with chance
(:mod:`~vlprobe.analyses.vision.semantic`). ``wnids`` names the WordNet id of every head class:
``auto`` (default) takes the dataset's class names where they are all WordNet noun ids (the
reference kit's ImageNet sample: EfficientNet's ImageNet head), else skips with a note; a path
to a JSON list (e.g. ``${reference}/images/imagenet_sample/wnids.json``) is used as given;
``null`` turns it off. WordNet is Debian's ``wordnet-base`` read by nltk
(:mod:`~vlprobe.analyses.vision.wordnet`): where it is missing, ``auto`` skips with a note
that says what to install, and an explicit list stops the analysis before any attack with
that message.

Tables: the tidy table; ``items`` (one row per attacked item, norm and ε: predictions,
success, steps, achieved norm, 8-bit outcome, similarities). Figures: accuracy vs ε,
example images with their perturbations, and the similarity of errors vs ε.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, Result
from vlprobe.analyses.vision import heads as H
from vlprobe.analyses.vision.attack import attack_model, model_adapter
from vlprobe.analyses.vision.pgd import NORMS, parse_epsilon
from vlprobe.errors import AnalysisError, ConfigError
from vlprobe.estimators.logistic.clip_protocol import COARSE_CS

log = logging.getLogger(__name__)

DEFAULT_EPSILONS = {"linf": ["0.5/255", "1/255", "2/255", "4/255"], "l2": [0.25, 0.5, 1.0]}


def _positive_int(p: dict[str, Any], key: str, low: int, allow_none: bool = False) -> None:
    value = p[key]
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ConfigError(f"adversarial: {key} must be an integer >= {low}"
                          f"{' or null' if allow_none else ''}, got {value!r}")


class Adversarial(Analysis):
    """PGD robustness (V6) of an own / zero-shot / linear-probe head; see the module docstring.

    Params:
        head: ``auto`` | ``own`` | ``zero_shot`` | ``linear_probe``.
        split: the attacked split; max_items: attack a seeded subset of at most this many
            items (None = all); clean_items: ``all`` (clean errors of the semantic comparison
            over the whole split) or ``attacked`` (the subset only).
        epsilons: norm -> list of ε (numbers or fractions such as ``"4/255"``); L∞ ε in
            [0, 1], L2 ε >= 0 (pixel units of a [0, 1] image). ε = 0 is always reported.
        steps, restarts, random_start, early_stop: PGD (100 steps, 1 restart, random start,
            stop at first success); step_size: None = ``2.5 ε / steps``, a number = that
            fraction of ε per step (then more steps never do worse).
        targeted: attack towards a seeded random wrong class per item instead.
        batch_size: items attacked at once.
        site: the own head's logits site. templates: the zero-shot head's prompt templates
            (a packaged set name such as ``imagenet``, one template, or a list).
        train_split, probe_site (None = the model's embedding site), probe_pooling (None =
            the adapter's default), probe_Cs, val_fraction: the linear probe head.
        wnids, wordnet_dir, n_random_pairs: the semantic distance (see the module docstring).
        n_examples: example images per (model, norm) in the figure (largest ε).
    """

    name: ClassVar[str] = "adversarial"
    catalogue: ClassVar[tuple[str, ...]] = ("V6",)
    summary: ClassVar[str] = ("PGD (L-inf / L2) robustness of an own, zero-shot or linear-probe "
                              "head in pixel space; 8-bit check; WordNet distance of errors")
    defaults: ClassVar[dict[str, Any]] = {
        "head": "auto",
        "split": "test",
        "max_items": None,
        "clean_items": "all",
        "epsilons": DEFAULT_EPSILONS,
        "steps": 100,
        "step_size": None,
        "restarts": 1,
        "random_start": True,
        "early_stop": True,
        "targeted": False,
        "batch_size": 16,
        "site": "vision.logits",
        "templates": "imagenet",
        "train_split": "train",
        "probe_site": None,
        "probe_pooling": None,
        "probe_Cs": list(COARSE_CS),
        "val_fraction": 0.2,
        "wnids": "auto",
        "wordnet_dir": None,
        "n_random_pairs": 2000,
        "n_examples": 4,
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        from vlprobe.data.prompts import resolve_templates

        super().__init__(models, dataset, params, seed)
        p = self.params
        if p["head"] not in ("auto", *H.HEADS):
            raise ConfigError(f"adversarial: head must be auto, {', '.join(H.HEADS)}; got "
                              f"{p['head']!r}")
        eps = p["epsilons"]
        if not isinstance(eps, dict) or not eps:
            raise ConfigError("adversarial: epsilons must map a norm (linf / l2) to a list of "
                              f"epsilons, got {eps!r}")
        self.grid: list[tuple[str, float]] = []
        for norm, values in eps.items():
            if norm not in NORMS:
                raise ConfigError(f"adversarial: epsilons: unknown norm {norm!r}; choose "
                                  f"{' / '.join(NORMS)}")
            values = values if isinstance(values, list | tuple) else [values]
            parsed = sorted({parse_epsilon(v, norm, f"adversarial: epsilons.{norm}")
                             for v in values} - {0.0})
            self.grid += [(norm, e) for e in parsed]
        if not self.grid:
            raise ConfigError("adversarial: epsilons: give at least one epsilon > 0 (eps = 0, "
                              "the clean accuracy, is always reported)")
        for key, low, none in (("steps", 0, False), ("restarts", 1, False),
                               ("batch_size", 1, False), ("max_items", 1, True),
                               ("n_random_pairs", 0, False), ("n_examples", 0, False)):
            _positive_int(p, key, low, none)
        for key in ("random_start", "early_stop", "targeted"):
            if not isinstance(p[key], bool):
                raise ConfigError(f"adversarial: {key} must be true or false, got {p[key]!r}")
        if p["restarts"] > 1 and not p["random_start"]:
            raise ConfigError("adversarial: restarts > 1 need random_start: true (without a "
                              "random start every restart repeats the first)")
        step = p["step_size"]
        if step is not None and (isinstance(step, bool) or not isinstance(step, int | float)
                                 or not 0 < step <= 1):
            raise ConfigError("adversarial: step_size must be null (2.5 eps / steps) or a "
                              f"fraction of eps in (0, 1], got {step!r}")
        if p["clean_items"] not in ("all", "attacked"):
            raise ConfigError(f"adversarial: clean_items must be 'all' or 'attacked', got "
                              f"{p['clean_items']!r}")
        if not 0.0 < float(p["val_fraction"]) < 1.0:
            raise ConfigError(f"adversarial: val_fraction must be in (0, 1), got "
                              f"{p['val_fraction']!r}")
        Cs = np.atleast_1d(np.asarray(p["probe_Cs"], dtype=float))
        if Cs.size == 0 or not np.all(np.isfinite(Cs)) or np.any(Cs <= 0):
            raise ConfigError(f"adversarial: probe_Cs must be positive numbers, got "
                              f"{p['probe_Cs']!r}")
        self.templates = resolve_templates(p["templates"], "adversarial: templates")
        if p["wnids"] is not None and not isinstance(p["wnids"], str):
            raise ConfigError(f"adversarial: wnids must be 'auto', null or the path of a JSON "
                              f"list, got {p['wnids']!r}")

    # -- planning --------------------------------------------------------------------------
    def head_kind(self, adapter: Any) -> str:
        """The head a model is attacked through (``head``, or the ``auto`` choice)."""
        kind = self.params["head"]
        if kind != "auto":
            return kind
        if self.params["site"] in adapter.sites():
            return "own"
        if "text" in adapter.modalities and adapter.embedding_site("image").endswith(".proj"):
            return "zero_shot"
        return "linear_probe"

    def _probe_request(self, model: str, adapter: Any) -> FeatureRequest:
        from vlprobe.extract.extractor import resolve_pooling

        site = self.params["probe_site"] or adapter.embedding_site("image")
        adapter.check_sites([site])
        pooling = resolve_pooling(adapter, [site], self.params["probe_pooling"], "image")[site]
        return FeatureRequest(model, self.dataset, self.params["train_split"], sites=(site,),
                              pooling=pooling, modality="image")

    def _prompt_request(self, model: str, adapter: Any) -> FeatureRequest:
        if "text" not in adapter.modalities:
            raise AnalysisError(f"adversarial: model {model!r} has no text tower; head "
                                "'zero_shot' needs a dual encoder")
        site = adapter.embedding_site("text")
        return FeatureRequest(model, self.dataset, self.params["split"], sites=(site,),
                              pooling="none", view="class_prompts",
                              templates=tuple(self.templates), modality="text")

    def _check_splits(self, source: FeatureSource, kinds: dict[str, str]) -> None:
        splits = source.splits(self.dataset)
        need = [self.params["split"]]
        if "linear_probe" in kinds.values():
            need.append(self.params["train_split"])
        for split in need:
            if split not in splits:
                raise AnalysisError(f"adversarial: dataset {self.dataset!r} has no split "
                                    f"{split!r}; available: {splits}")

    def _plan(self, source: FeatureSource) -> dict[str, tuple[Any, str]]:
        plan = {}
        for model in self.models:
            adapter = model_adapter(source, model, self.name)
            plan[model] = (adapter, self.head_kind(adapter))
        self._check_splits(source, {m: k for m, (_, k) in plan.items()})
        return plan

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        out = []
        for model, (adapter, kind) in self._plan(source).items():
            if kind == "linear_probe":
                out.append(self._probe_request(model, adapter))
            elif kind == "zero_shot":
                out.append(self._prompt_request(model, adapter))
        return out

    # -- heads -----------------------------------------------------------------------------
    def build_head(self, source: FeatureSource, model: str, adapter: Any, kind: str,
                   label_names: list[str] | None) -> H.Head:
        p = self.params
        if kind == "own":
            return H.own_head(adapter, p["site"], label_names)
        if kind == "zero_shot":
            if label_names is None:
                raise AnalysisError(f"adversarial: dataset {self.dataset!r} has no class names; "
                                    "the zero-shot head needs them")
            request = self._prompt_request(model, adapter)
            feats = source.get(request)
            x = np.asarray(feats.features[request.sites[0]])
            return H.zero_shot_head(adapter, x, np.asarray(feats.labels), label_names,
                                    self.templates)
        request = self._probe_request(model, adapter)
        feats = source.get(request)
        if feats.labels is None:
            raise AnalysisError(f"adversarial: split {p['train_split']!r} of dataset "
                                f"{self.dataset!r} has no labels; the linear probe needs them")
        site = request.sites[0]
        return H.linear_probe_head(
            adapter, site, request.pooling, np.asarray(feats.features[site]),
            np.asarray(feats.labels), label_names, p["probe_Cs"], float(p["val_fraction"]),
            self.seed, f"adversarial: model {model!r} probe on split {p['train_split']!r}")

    # -- running ---------------------------------------------------------------------------
    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        from vlprobe.analyses.vision.plots import (
            plot_accuracy_vs_epsilon,
            plot_examples,
            plot_similarity_vs_epsilon,
        )

        p = self.params
        plan = self._plan(source)
        notes: list[str] = []
        if p["wnids"] is None:
            notes.append("adversarial: semantic distance of errors skipped (wnids: null)")
        elif p["wnids"] != "auto":  # an explicit list: WordNet must be there; fail fast
            from vlprobe.analyses.vision.wordnet import load_wordnet, read_wnids

            load_wordnet(p["wordnet_dir"])
            read_wnids(p["wnids"])
        rows: list[dict[str, Any]] = []
        items: list[Any] = []
        figures: dict[str, Any] = {}
        examples: dict[str, Any] = {}
        for model, (adapter, kind) in plan.items():
            stimuli = source.stimuli(FeatureRequest(model, self.dataset, p["split"]))
            head = self.build_head(source, model, adapter, kind, stimuli.label_names)
            out = attack_model(self, model, adapter, head, stimuli)
            rows += out.rows
            items.append(out.items)
            notes += out.notes
            examples[model] = out.examples
        table = pd.DataFrame(rows)
        item_table = pd.concat(items, ignore_index=True) if items else pd.DataFrame()
        figures["accuracy_vs_epsilon"] = plot_accuracy_vs_epsilon(
            table, title=f"PGD robustness ({self.dataset}/{p['split']})")
        for model, per_norm in examples.items():
            for norm, shown in per_norm.items():
                if shown["clean"]:
                    figures[f"examples_{model}_{norm}"] = plot_examples(
                        shown, title=f"{model}: {norm} PGD examples")
        if "group" in table and table["group"].notna().any():
            figures["semantic_similarity"] = plot_similarity_vs_epsilon(
                table, title=f"WordNet similarity of true and wrong class ({self.dataset})")
        return Result(analysis=self.name, catalogue=self.catalogue, table=table,
                      figures=figures, params=dict(p), notes=list(dict.fromkeys(notes)),
                      extra_tables={"items": item_table})

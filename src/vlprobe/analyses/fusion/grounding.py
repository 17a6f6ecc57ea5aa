"""F6 ``caption_grounding`` (seed 003, "visual grounding"): does a captioner's cross-attention
look at the object a generated word names?

For each image of ``split`` (a COCO-instances set: descriptor ``boxes`` = ``[x, y, w, h,
category]`` in pixels, e.g. the ``coco_instances`` loader on the reference kit's
``coco_mini``), the captioner generates a caption greedily
(``adapter.generate_with_attention``: one teacher-forced pass over the generated caption
gives the cross-attention ``cross.blocks.{i}.t2v.attn`` of the decoder query that produced
each token). Every generated word that names a COCO category
(:mod:`~vlprobe.analyses.fusion.coco_words`: names, synonyms, plurals) and whose category
has at least one box in the image is a **mention**; its map is the cross-attention of its
first token over the image tokens (a ViT encoder's class token dropped), per decoder layer and
head, and the head mean. The image tokens are a ``g x g`` grid over the encoder's input window
(EfficientNet's / the ViT processor's centre crop), so each cell has a box in the image.

Scores of a mention against the union of its category's boxes (cells covered by at least
``min_cover`` of their area, plus each box's centre cell; a box cropped out of the window
entirely is skipped and counted):

- **pointing game**: 1 if the map's maximum cell lies in the boxes;
- **IoU** of the thresholded map (cells >= ``iou_threshold`` x the map's maximum; default 0.5)
  with the box cells.

Baselines (per mention, averaged the same way): ``baseline_random``: ``n_random`` seeded maps
of i.i.d. uniform cell values scored identically; ``baseline_uniform``: the expected score of
a map that carries no information (pointing: the fraction of cells in the boxes; IoU: a
uniform map selects every cell, so the same fraction).

Table: per (model, layer, head or ``mean``) ``pointing_accuracy`` and ``iou`` (mean over
mentions, ``se``, ``n``, ``baseline_random``, ``baseline_uniform`` columns); per model
``n_mentions``, ``mentions_without_box`` (a category the image has no box of: hallucinated
or unannotated), ``mentions_cropped`` and ``n_images``. Items table ``mentions``: one row per
mention (image, caption, word, category, the head-mean map's hit and IoU per decoder
layer in columns ``hit_layer{l}`` / ``iou_layer{l}``, its random-map baseline).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, Result
from vlprobe.analyses.fusion.attention_math import (
    box_cells,
    check_box,
    grid_boxes,
    pointing_hit,
    threshold_iou,
)
from vlprobe.errors import AnalysisError, ConfigError, DataError


def cross_sites(adapter: Any) -> list[str]:
    """The captioner's decoder cross-attention sites, in layer order."""
    return [s for s in adapter.sites() if s.startswith("cross.") and s.endswith(".t2v.attn")]


def key_layout(n_keys: int, where: str) -> tuple[int, int]:
    """``(skip, g)``: a ViT encoder's ``1 + g*g`` keys (skip its class token) or a grid
    captioner's ``g*g`` cells."""
    for skip in (0, 1):
        g = math.isqrt(max(n_keys - skip, 0))
        if g > 0 and g * g == n_keys - skip:
            return skip, g
    raise AnalysisError(f"{where}: {n_keys} image tokens are neither a square grid nor a class "
                        "token + a square grid; cannot place them on the image")


class CaptionGrounding(Analysis):
    """F6 grounding of a captioner's cross-attention; see the module docstring.

    Params:
        split: the split with images and boxes; max_images: a seeded subset (None = all).
        batch_size: images per generation call; max_length: generation length limit (None =
            the model's default); iou_threshold: fraction of the map's maximum a cell needs to
            be "on"; min_cover: fraction of a cell a box must cover to own it; n_random: random
            maps per mention for the baseline; synonyms: extra words per category
            (``{category: [word, ...]}``); n_examples: mentions drawn in the example figure.
    """

    name: ClassVar[str] = "caption_grounding"
    catalogue: ClassVar[tuple[str, ...]] = ("F6",)
    summary: ClassVar[str] = ("captioner cross-attention vs COCO boxes of generated category "
                              "words: pointing game and IoU per layer / head, random baseline")
    defaults: ClassVar[dict[str, Any]] = {
        "split": "validation",
        "max_images": None,
        "batch_size": 8,
        "max_length": None,
        "iou_threshold": 0.5,
        "min_cover": 0.5,
        "n_random": 100,
        "synonyms": {},
        "n_examples": 4,
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        for key, low, none in (("batch_size", 1, False), ("n_random", 1, False),
                               ("n_examples", 0, False), ("max_images", 1, True),
                               ("max_length", 2, True)):
            v = p[key]
            if v is None and none:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"caption_grounding: {key} must be an integer >= {low}"
                                  f"{' or null' if none else ''}, got {v!r}")
        for key in ("iou_threshold", "min_cover"):
            v = p[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
                raise ConfigError(f"caption_grounding: {key} must be in (0, 1], got {v!r}")
        if not isinstance(p["synonyms"], dict):
            raise ConfigError(f"caption_grounding: synonyms must map a category to a list of "
                              f"words, got {p['synonyms']!r}")

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        return []  # generation and its cross-attention run inside run()

    # -- running ---------------------------------------------------------------------------
    def _stimuli(self, source: FeatureSource) -> tuple[Any, list[int]]:
        p = self.params
        if p["split"] not in source.splits(self.dataset):
            raise AnalysisError(f"caption_grounding: dataset {self.dataset!r} has no split "
                                f"{p['split']!r}; available: {source.splits(self.dataset)}")
        stimuli = source.stimuli(FeatureRequest(self.models[0], self.dataset, p["split"]))
        if stimuli.images is None or "boxes" not in stimuli.descriptors:
            raise DataError(f"caption_grounding: dataset {self.dataset!r} split {p['split']!r} "
                            "needs images with a 'boxes' descriptor ([x, y, w, h, category] in "
                            "pixels; the coco_instances loader gives it)")
        idx = list(range(len(stimuli)))
        if p["max_images"] is not None and len(idx) > p["max_images"]:
            rng = np.random.default_rng(self.seed)
            idx = sorted(int(i) for i in rng.choice(idx, p["max_images"], replace=False))
        return stimuli, idx

    def _check_model(self, model: str, adapter: Any) -> list[str]:
        sites = cross_sites(adapter)
        if not sites or not hasattr(adapter, "generate_with_attention"):
            raise AnalysisError(f"caption_grounding: model {model!r} ({adapter.family}) is not a "
                                "captioner with decoder cross-attention (no "
                                "cross.blocks.*.t2v.attn site / generate_with_attention)")
        return sites

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        from vlprobe.analyses.fusion.coco_words import category_lexicon
        from vlprobe.analyses.fusion.plots_attention import (
            plot_grounding_by_layer,
            plot_grounding_examples,
        )

        p = self.params
        adapters = {m: source.adapter(m) for m in self.models}
        sites = {m: self._check_model(m, a) for m, a in adapters.items()}
        stimuli, idx = self._stimuli(source)
        categories = sorted({str(b[4]) for boxes in stimuli.descriptors["boxes"] for b in boxes}
                            | set(stimuli.label_names or ()))
        lexicon = category_lexicon(categories, p["synonyms"])
        rows: list[dict[str, Any]] = []
        mentions: list[dict[str, Any]] = []
        figures: dict[str, Any] = {}
        for model, adapter in adapters.items():
            scored, counts, shown = self._score_model(model, adapter, sites[model], stimuli, idx,
                                                      lexicon)
            rows += self._rows(model, adapter, sites[model], scored, counts)
            mentions += [{k: v for k, v in s.items() if k not in ("hits", "ious")} for s in scored]
            if shown:
                figures[f"examples_{model}"] = plot_grounding_examples(
                    shown, title=f"{model}: last-layer cross-attention of category words")
        table = pd.DataFrame(rows)
        figures["grounding_by_layer"] = plot_grounding_by_layer(
            table, title=f"caption grounding ({self.dataset}/{p['split']}): head mean vs random")
        return Result(analysis=self.name, catalogue=self.catalogue, table=table,
                      figures=figures, params=dict(p),
                      notes=[f"caption_grounding: IoU threshold {p['iou_threshold']} x map max; "
                             f"a box owns cells it covers >= {p['min_cover']}"],
                      extra_tables={"mentions": pd.DataFrame(mentions)})

    def _score_model(self, model: str, adapter: Any, sites: list[str], stimuli: Any,
                     idx: list[int], lexicon: dict[str, str]
                     ) -> tuple[list[dict[str, Any]], dict[str, int], list[dict[str, Any]]]:
        from vlprobe.analyses.fusion.attention_models import image_window
        from vlprobe.analyses.fusion.coco_words import caption_words, find_mentions
        from vlprobe.analyses.fusion.plots_attention import thumbnail

        p = self.params
        rng = np.random.default_rng(self.seed)
        scored: list[dict[str, Any]] = []
        shown: list[dict[str, Any]] = []
        counts = {"n_images": 0, "mentions_without_box": 0, "mentions_cropped": 0}
        kwargs = {} if p["max_length"] is None else {"max_length": p["max_length"]}
        for s in range(0, len(idx), p["batch_size"]):
            chunk = idx[s:s + p["batch_size"]]
            images = stimuli.payloads("image", chunk)
            gen = adapter.generate_with_attention(images, num_beams=1, **kwargs)
            for b, (i, image) in enumerate(zip(chunk, images)):
                counts["n_images"] += 1
                where = f"caption_grounding: dataset {self.dataset!r} item {stimuli.ids[i]!r}"
                width, height = image.size
                boxes = [(str(bx[4]), check_box(bx, width, height, where))
                         for bx in stimuli.descriptors["boxes"][i]]
                attn = np.asarray(gen.cross_attention[b].detach().float().cpu())  # [L,H,n,K]
                if attn.shape[0] != len(sites):
                    raise AnalysisError(f"caption_grounding: {model}: {attn.shape[0]} layers "
                                        f"of cross-attention for {len(sites)} sites")
                skip, g = key_layout(attn.shape[-1], f"caption_grounding: {model}")
                cells = grid_boxes(g, image_window(adapter, width, height), width, height)
                for phrase, cat, t in find_mentions(caption_words(gen.tokens[b]), lexicon):
                    own = [bx for c, bx in boxes if c == cat]
                    if not own:
                        counts["mentions_without_box"] += 1
                        continue
                    mask = np.zeros(len(cells), bool)
                    for bx in own:
                        mask |= box_cells(cells, bx, p["min_cover"])
                    if not mask.any():
                        counts["mentions_cropped"] += 1
                        continue
                    maps = attn[:, :, t, skip:]  # [L, H, g*g]
                    maps = np.concatenate([maps, maps.mean(axis=1, keepdims=True)], axis=1)
                    hits = np.array([[pointing_hit(m, mask) for m in layer] for layer in maps])
                    ious = np.array([[threshold_iou(m, mask, p["iou_threshold"])
                                      for m in layer] for layer in maps])
                    rand = rng.random((p["n_random"], len(cells)))
                    scored.append({
                        "model": model, "item": stimuli.ids[i], "caption": gen.texts[b],
                        "word": phrase, "category": cat, "token": int(t),
                        "box_cells": int(mask.sum()), "n_cells": len(cells),
                        **{f"hit_layer{li + 1}": float(v) for li, v in enumerate(hits[:, -1])},
                        **{f"iou_layer{li + 1}": float(v) for li, v in enumerate(ious[:, -1])},
                        "random_hit": float(np.mean([pointing_hit(r, mask) for r in rand])),
                        "random_iou": float(np.mean([threshold_iou(r, mask, p["iou_threshold"])
                                                     for r in rand])),
                        "hits": hits, "ious": ious,
                    })
                    if len(shown) < p["n_examples"]:
                        shown.append({"thumb": thumbnail(image, 96), "values": maps[-1, -1],
                                      "boxes": cells, "targets": own, "word": phrase,
                                      "caption": gen.texts[b]})
        return scored, counts, shown

    def _rows(self, model: str, adapter: Any, sites: list[str], scored: list[dict[str, Any]],
              counts: dict[str, int]) -> list[dict[str, Any]]:
        from vlprobe.extract.attention import attention_layer_index

        base = {"analysis": self.name, "model": model, "dataset": self.dataset,
                "seed": self.seed}
        rows = [{**base, "layer": None, "site": None, "metric": "n_mentions",
                 "value": float(len(scored)), "head": "all"}]
        rows += [{**base, "layer": None, "site": None, "metric": k, "value": float(v),
                  "head": "all"} for k, v in counts.items()]
        if not scored:
            return rows
        hits = np.stack([s["hits"] for s in scored])  # [M, L, H + 1]
        ious = np.stack([s["ious"] for s in scored])
        frac = np.array([s["box_cells"] / s["n_cells"] for s in scored])
        base_rand = {"pointing_accuracy": np.mean([s["random_hit"] for s in scored]),
                     "iou": np.mean([s["random_iou"] for s in scored])}
        n_heads = hits.shape[2] - 1
        for li, site in enumerate(sites):
            index = attention_layer_index(adapter, site)
            layer = li + 1 if index is None else index
            for h in range(n_heads + 1):
                head = "mean" if h == n_heads else str(h)
                for metric, values in (("pointing_accuracy", hits[:, li, h]),
                                       ("iou", ious[:, li, h])):
                    v = values[np.isfinite(values)]
                    rows.append({**base, "layer": layer, "site": site, "metric": metric,
                                 "value": float(v.mean()), "head": head, "n": len(v),
                                 "se": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1
                                 else float("nan"),
                                 "baseline_random": float(base_rand[metric]),
                                 "baseline_uniform": float(frac.mean())})
        return rows

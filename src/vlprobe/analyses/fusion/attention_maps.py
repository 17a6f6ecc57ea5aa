"""V7 ``attention_maps``: per-head [CLS] -> image-token attention, rollout and gradient
relevance, overlaid on images, several models side by side.

For a small seeded set of ``n_images`` distinct images of ``split`` (the same images for every
model), each model runs once per batch through its adapter (no activation store: raw
attention of a few images is all V7 needs, and gradient relevance needs the live graph);
model kinds, queries and image tokens: :mod:`~vlprobe.analyses.fusion.attention_models`.

- **raw**: per layer (``vision.blocks.{i}.attn`` of an image tower, ``fusion.blocks.{i}.attn``
  of a single-stream model, ``cross.blocks.{k}.t2v.attn`` of LXMERT) and head, the query's
  attention over the image tokens;
- **rollout** (Abnar & Zuidema 2020; :func:`~vlprobe.analyses.fusion.attention_math.rollout`);
- **relevance** (Chefer et al. 2021; ``relevance: auto`` computes it where the model has a
  target, see the attention_models docstring).

Table (one row per number; ``method`` raw / rollout / relevance, ``head`` an index, ``mean``
or ``all``): ``image_mass`` (raw: the query's total attention on image tokens; 1 for an image
tower with a class token minus what stays on [CLS]), ``map_entropy`` (entropy of the map over
image tokens renormalised, divided by ``log n``: 0 = one token, 1 = uniform), and for
rollout / relevance ``rank_corr_last`` (Spearman correlation with the last layer's head-mean
raw map) and, for relevance, ``rank_corr_rollout``. Values are means over the images
(``n``). The items table (``maps``) keeps each image's head-mean maps.

Figures: ``comparison`` (rows = images, columns = each model's last-layer map, rollout and
relevance) and ``heads_<model>`` (the first image: every layer x head).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, Result
from vlprobe.analyses.fusion.attention_math import normalised_entropy
from vlprobe.errors import AnalysisError, ConfigError


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def pick_images(stimuli: Any, n_images: int, seed: int) -> list[int]:
    """Item indices of ``n_images`` distinct images (first item of each ``image_id``), a
    seeded choice, in dataset order."""
    keys = stimuli.descriptors.get("image_id") or list(stimuli.ids)
    first: dict[Any, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    pool = sorted(first.values())
    if len(pool) <= n_images:
        return pool
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(pool, size=n_images, replace=False))


def shown_layers(choice: Any, n: int, most: int = 6) -> list[int]:
    """Block indices of the per-head figure: ``auto`` (at most ``most`` evenly spaced, first
    and last included), ``all``, or the listed ones that exist."""
    if choice == "all":
        return list(range(n))
    if choice == "auto":
        return sorted({round(float(x)) for x in np.linspace(0, n - 1, min(n, most))})
    return [i for i in choice if i < n]


class AttentionMaps(Analysis):
    """V7 attention maps, rollout and relevance; see the module docstring.

    Params:
        split: the split the images come from; n_images: how many distinct images (seeded).
        batch_size: images per forward.
        relevance: ``auto`` (where the model has a target), ``true`` (an error for a model
            without one), ``false``.
        layers: map sites shown in the per-head figure: ``auto`` (at most 6, evenly spaced,
            first and last included), ``all`` or a list of 0-based block indices (the table
            always has every layer).
        thumb_size: longest side of the image panels in pixels.
    """

    name: ClassVar[str] = "attention_maps"
    catalogue: ClassVar[tuple[str, ...]] = ("V7",)
    summary: ClassVar[str] = ("per-head [CLS]->image attention, rollout and gradient relevance "
                              "(Chefer) overlaid on images, models side by side")
    defaults: ClassVar[dict[str, Any]] = {
        "split": "test",
        "n_images": 4,
        "batch_size": 4,
        "relevance": "auto",
        "layers": "auto",
        "thumb_size": 64,
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        for key in ("n_images", "batch_size", "thumb_size"):
            if isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < 1:
                raise ConfigError(f"attention_maps: {key} must be an integer >= 1, got "
                                  f"{p[key]!r}")
        if p["relevance"] not in ("auto", True, False):
            raise ConfigError(f"attention_maps: relevance must be auto, true or false, got "
                              f"{p['relevance']!r}")
        layers = p["layers"]
        if layers not in ("auto", "all") and not (isinstance(layers, list | tuple) and all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)):
            raise ConfigError(f"attention_maps: layers must be 'auto', 'all' or a list of block "
                              f"indices >= 0, got {layers!r}")

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        return []  # the models run inside run() on a few images (see the module docstring)

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        from vlprobe.analyses.fusion.attention_models import batch_maps, map_plan, target_kind
        from vlprobe.analyses.fusion.plots_attention import (
            plot_heads,
            plot_model_comparison,
            thumbnail,
        )
        from vlprobe.extract.attention import attention_layer_index

        p = self.params
        if p["split"] not in source.splits(self.dataset):
            raise AnalysisError(f"attention_maps: dataset {self.dataset!r} has no split "
                                f"{p['split']!r}; available: {source.splits(self.dataset)}")
        plans = {}
        for model in self.models:
            adapter = source.adapter(model)
            plans[model] = (adapter, map_plan(adapter, model))
        stimuli = source.stimuli(FeatureRequest(self.models[0], self.dataset, p["split"]))
        if stimuli.images is None:
            raise AnalysisError(f"attention_maps: dataset {self.dataset!r} has no images")
        idx = pick_images(stimuli, p["n_images"], self.seed)
        images = stimuli.payloads("image", idx)
        thumbs = [thumbnail(im, p["thumb_size"]) for im in images]
        rows: list[dict[str, Any]] = []
        items: list[dict[str, Any]] = []
        notes: list[str] = []
        figures: dict[str, Any] = {}
        examples: dict[str, list[dict[str, Any]]] = {}
        for model, (adapter, plan) in plans.items():
            target, why = target_kind(plan, adapter) if p["relevance"] else (None, "off")
            texts = None
            if target == "similarity":
                if stimuli.texts is None:
                    target, why = None, "the dataset has no captions to compare the image with"
                else:
                    texts = [stimuli.texts[i] for i in idx]
            if target is None and p["relevance"] is True:
                raise AnalysisError(f"attention_maps: model {model!r}: no relevance target: "
                                    f"{why}")
            if target is None and p["relevance"] == "auto":
                notes.append(f"attention_maps: {model}: no gradient relevance ({why})")
            elif target is not None:
                notes.append(f"attention_maps: {model}: relevance target = {why}")
            if plan.kind == "vision" and not plan.class_token:
                notes.append(f"attention_maps: {model} has no class token: maps are the mean "
                             "over all query rows (attention each patch receives)")
            if plan.modality == "pair" and stimuli.texts is None:
                raise AnalysisError(f"attention_maps: model {model!r} takes (image, text) pairs "
                                    f"but dataset {self.dataset!r} has no captions")
            maps = []
            for s in range(0, len(idx), p["batch_size"]):
                chunk = idx[s:s + p["batch_size"]]
                pay = stimuli.payloads(plan.modality, chunk)
                maps += batch_maps(plan, adapter, pay, target,
                                   None if texts is None else texts[s:s + len(chunk)])
            layers = [attention_layer_index(adapter, site) for site in plan.map_sites]
            layers = [i if li is None else li for i, li in enumerate(layers)]
            rows += self._rows(model, plan, maps, layers)
            examples[model] = [{"last": m.raw[-1].mean(axis=0), "rollout": m.rollout,
                                "relevance": m.relevance, "boxes": m.boxes} for m in maps]
            for i, m in zip(idx, maps):
                items.append({"model": model, "item": stimuli.ids[i],
                              "n_image_tokens": int(m.raw.shape[-1]),
                              "last_mean": m.raw[-1].mean(axis=0).round(5).tolist(),
                              "rollout": m.rollout.round(5).tolist(),
                              "relevance": None if m.relevance is None
                              else m.relevance.round(5).tolist()})
            show = shown_layers(p["layers"], len(plan.map_sites))
            if show:
                figures[f"heads_{model}"] = plot_heads(
                    maps[0].raw[show], maps[0].boxes, thumbs[0], [layers[i] for i in show],
                    title=f"{model}: {plan.map_sites[0].split('.')[0]} attention per head "
                          f"({stimuli.ids[idx[0]]})")
        figures["comparison"] = plot_model_comparison(
            examples, thumbs, title=f"attention maps ({self.dataset}/{p['split']})")
        table = pd.DataFrame(rows)
        return Result(analysis=self.name, catalogue=self.catalogue, table=table,
                      figures=figures, params=dict(p), notes=notes,
                      extra_tables={"maps": pd.DataFrame(items)})

    def _rows(self, model: str, plan: Any, maps: list[Any], layers: list[int]
              ) -> list[dict[str, Any]]:
        base = {"analysis": self.name, "model": model, "dataset": self.dataset,
                "n": len(maps), "seed": self.seed}
        rows = []
        n_layers, n_heads = maps[0].raw.shape[:2]
        for li in range(n_layers):
            site = plan.map_sites[li]
            for h in [*range(n_heads), "mean"]:
                def values(m, li=li, h=h):
                    return m.raw[li].mean(axis=0) if h == "mean" else m.raw[li, h]

                mass = [float(m.image_mass[li].mean() if h == "mean" else m.image_mass[li, h])
                        for m in maps]
                ent = [normalised_entropy(values(m)) for m in maps]
                for metric, v in (("image_mass", mass), ("map_entropy", ent)):
                    rows.append({**base, "layer": layers[li], "site": site, "metric": metric,
                                 "value": float(np.nanmean(v)), "method": "raw",
                                 "head": str(h)})
        last = layers[-1]
        for method in ("rollout", "relevance"):
            got = [getattr(m, method) for m in maps]
            if any(g is None for g in got):
                continue
            metrics = {
                "map_entropy": [normalised_entropy(g) for g in got],
                "rank_corr_last": [_spearman(g, m.raw[-1].mean(axis=0))
                                   for g, m in zip(got, maps)],
            }
            if method == "relevance":
                metrics["rank_corr_rollout"] = [_spearman(g, m.rollout)
                                                for g, m in zip(got, maps)]
            for metric, v in metrics.items():
                value = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                rows.append({**base, "layer": last, "site": plan.map_sites[-1],
                             "metric": metric, "value": value, "method": method,
                             "head": "all"})
        return rows

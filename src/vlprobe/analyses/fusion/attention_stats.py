"""F6 ``attention_statistics`` (seed 003): how attention spreads, layer by layer and head by
head, over every attention site of a fusion model (or a captioner) on (image, text) pairs.

- ``entropy``: mean over real queries of the row entropy (nats) over real keys (reducer
  ``entropy``; a uniform row over ``T_key`` keys has ``log T_key``, the ceiling). Layers of
  one kind of attention (``site_group``) see the same keys, so their entropies compare.
  Seed 003: entropy is lower in deeper layers (attention converges on fewer objects).
- ``attention_distance``: mean distance (in grid cells / patches) between an image query
  and the image keys it attends to, keys renormalised (reducer ``distance``); image tokens on
  a square grid only (grid regions, ViT patches), else NaN.
- ``attention_similarity`` / ``uniform_similarity``: the attention-weighted cosine
  similarity between an image query's and the other image keys' layer-0 vectors, and the
  same with uniform weights (reducer ``similarity``): a head that prefers semantically
  similar regions scores above the uniform baseline (``similarity_gain`` = the difference).

- same-object attention (seed 003 "attention against ground-truth object clusters", with
  COCO instance boxes as the clusters; reducer ``objects``, :mod:`vlprobe.extract.objects`):
  each image token (grid cell / region / patch) belongs to the objects whose box covers more
  than half of it; per image query, the attention renormalised over the other image tokens.
  ``same_object_mass`` = the share on tokens of the query's own object(s);
  ``same_object_uniform`` = the share uniform attention would give (key count: the object's
  size); ``same_object_distance`` = the share the head's own distance profile would give
  (same-object tokens are near each other: this is the locality-only expectation);
  ``same_object_gain`` = mass - uniform, ``same_object_gain_vs_distance`` = mass - distance
  (> 0: the head prefers the object beyond what locality explains); ``same_object_weight`` /
  ``other_weight`` = mean attention per same-object pair / per other image pair and
  ``same_other_ratio`` their ratio (1 at chance). Needs the dataset's ``boxes`` and
  ``image_size`` descriptors (loader ``coco_captions`` with ``instances: true``) and a model
  whose trace gives token boxes (VisualBERT, LXMERT, ViLT). Param ``objects``: ``auto`` (the
  default: computed where the dataset has boxes, else left out with a note), ``true``
  (required: an error without boxes), ``false``.

Sites: entropy on every attention site of a pair batch; distance, similarity and same-object
attention on the image-over-image self-attentions (single-stream ``fusion.blocks.*.attn``;
two-stream ``vision.blocks.*.attn`` and ``cross.blocks.*.vision.attn``; similarity needs the
layer-0 vectors, known for single- and two-stream models). A captioner has no such site over a
box-carrying trace: its decoder cross-attention has text queries (no image-to-image pair) and
its encoder trace carries no token boxes, so the same-object statistic is not requested for it
(distance only, as before). Every statistic comes from ONE extraction pass per model (the
requests share one forward). Not here: captioner grounding (issue 13, another part).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, Result
from vlprobe.analyses.fusion._common import head_rows, require_pairs
from vlprobe.errors import ConfigError
from vlprobe.extract.objects import OBJECT_DESCRIPTORS


def _image_self_sites(sites: list[str]) -> list[str]:
    """Attention sites whose queries and keys are both the image tokens of one sequence."""
    return [s for s in sites if s.startswith(("fusion.", "vision."))
            or (s.startswith("cross.") and s.endswith(".vision.attn"))]


class AttentionStatistics(Analysis):
    name: ClassVar[str] = "attention_statistics"
    catalogue: ClassVar[tuple[str, ...]] = ("F6",)
    summary: ClassVar[str] = ("F6: attention entropy, distance, semantic similarity and "
                              "same-object attention per layer and head (seed 003)")
    defaults: ClassVar[dict[str, Any]] = {"split": "test", "objects": "auto"}
    version: ClassVar[str] = "2"  # same-object attention rows

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.params["objects"] not in ("auto", True, False):
            raise ConfigError(f"analysis {self.name!r}: objects must be auto, true or false, "
                              f"got {self.params['objects']!r}")

    def _with_objects(self, source: FeatureSource, model: str) -> bool:
        """Whether to compute same-object attention (param ``objects``, the data's boxes)."""
        want = self.params["objects"]
        if want is False:
            return False
        stimuli = source.stimuli(FeatureRequest(model, self.dataset, self.params["split"]))
        has = all(d in stimuli.descriptors for d in OBJECT_DESCRIPTORS)
        if want is True and not has:
            raise ConfigError(
                f"{self.name}: objects: true needs object boxes, but dataset {self.dataset!r} "
                f"split {self.params['split']!r} has no descriptors "
                f"{' / '.join(OBJECT_DESCRIPTORS)} (use loader coco_captions with "
                "instances: true)")
        return has

    def _requests(self, source: FeatureSource, model: str) -> list[FeatureRequest]:
        require_pairs(source, self.name, model, self.dataset)
        sites = source.attention_sites(model, "pair")
        if not sites:
            raise ConfigError(f"{self.name}: model {model!r} gives no attention sites (*.attn)")
        split = self.params["split"]
        out = [FeatureRequest(model, self.dataset, split, sites=tuple(sites),
                              attention=("reduce:entropy",), modality="pair")]
        image = _image_self_sites(sites)
        two_stream = any(".v2t." in s for s in sites)
        similar = [s for s in image if s.startswith("fusion.") or two_stream]
        rest = [s for s in image if s not in similar]
        if similar:
            methods = ("reduce:distance", "reduce:similarity")
            if self._with_objects(source, model):
                methods += ("reduce:objects",)
            out.append(FeatureRequest(model, self.dataset, split, sites=tuple(similar),
                                      attention=methods, modality="pair"))
        if rest:
            out.append(FeatureRequest(model, self.dataset, split, sites=tuple(rest),
                                      attention=("reduce:distance",), modality="pair"))
        return out

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        return [r for m in self.models for r in self._requests(source, m)]

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        from vlprobe.analyses.fusion.plots import plot_head_maps, plot_layer_means

        rows: list[dict[str, Any]] = []
        for model in self.models:
            for request in self._requests(source, model):
                feats = source.get(request)
                for method in request.attention:
                    for name in feats.attention_features(method):
                        rows += self._rows(model, name, feats, method)
        table = pd.DataFrame(rows)
        figures = {
            "entropy_by_layer": plot_layer_means(
                table, ["entropy"], ylabel="entropy (nats)",
                title=f"Attention entropy by layer ({self.dataset})", by_site_group=True),
            "entropy_heads": plot_head_maps(table, ["entropy"],
                                            title=f"Attention entropy per head ({self.dataset})"),
        }
        if "attention_distance" in set(table.get("metric", [])):
            figures["distance_by_layer"] = plot_layer_means(
                table, ["attention_distance"], ylabel="cells",
                title=f"Attention distance between image tokens ({self.dataset})",
                by_site_group=True)
        if "attention_similarity" in set(table.get("metric", [])):
            figures["similarity_by_layer"] = plot_layer_means(
                table, ["attention_similarity", "uniform_similarity"], ylabel="cosine",
                title=f"Attention vs semantic similarity of image tokens ({self.dataset})",
                by_site_group=True)
        if "same_object_mass" in set(table.get("metric", [])):
            figures["same_object_by_layer"] = plot_layer_means(
                table, ["same_object_mass", "same_object_distance", "same_object_uniform"],
                ylabel="share of image attention",
                title=f"Attention within the same object ({self.dataset})", by_site_group=True)
        notes = ["attention_statistics: entropy in nats over real keys (uniform row = "
                 "log T_key); distance in grid cells; "
                 "similarity = cosine of the tokens' layer-0 vectors (seed 003)"]
        if self.params["objects"] is not False and "same_object_mass" not in set(
                table.get("metric", [])):
            notes.append("attention_statistics: no same-object attention (the dataset has no "
                         "object boxes, or no model has an image self-attention with token "
                         "boxes)")
        elif "same_object_mass" in set(table.get("metric", [])):
            notes.append("attention_statistics: same-object attention = share of an image "
                         "query's attention (renormalised over the other image tokens) on "
                         "tokens of its own object(s) (box covers > 1/2 of the token); "
                         "_uniform / _distance = the share under uniform / the head's "
                         "distance profile (items without a same-object pair left out, see n)")
        return Result(self.name, self.catalogue, table, figures=figures,
                      params=dict(self.params), notes=notes)

    def _rows(self, model: str, name: str, feats: Any, method: str) -> list[dict[str, Any]]:
        site = name.split("@")[0]
        base = {"analysis": self.name, "model": model, "dataset": self.dataset,
                "layer": feats.layers.get(name), "site": site,
                "site_group": _site_group(site)}
        x = np.asarray(feats.features[name], dtype=np.float64)
        if method == "reduce:entropy":
            return head_rows(base, x, "entropy")
        if method == "reduce:distance":
            return head_rows(base, x, "attention_distance")
        if method == "reduce:objects":
            return _object_rows(base, x)
        return (head_rows(base, x[..., 0], "attention_similarity")
                + head_rows(base, x[..., 1], "uniform_similarity")
                + head_rows(base, x[..., 0] - x[..., 1], "similarity_gain"))


def _object_rows(base: dict[str, Any], x: np.ndarray) -> list[dict[str, Any]]:
    """Rows of the ``objects`` reducer ``[N, H, 5]`` (see the module docstring)."""
    w_same, w_other = x[..., 3], x[..., 4]
    ratio = np.divide(w_same, w_other, out=np.full_like(w_same, np.nan),
                      where=np.isfinite(w_other) & (w_other > 0))
    named = {"same_object_mass": x[..., 0], "same_object_uniform": x[..., 1],
             "same_object_distance": x[..., 2], "same_object_gain": x[..., 0] - x[..., 1],
             "same_object_gain_vs_distance": x[..., 0] - x[..., 2],
             "same_object_weight": w_same, "other_weight": w_other, "same_other_ratio": ratio}
    return [row for metric, v in named.items() for row in head_rows(base, v, metric)]


def _site_group(site: str) -> str:
    """The kind of attention a site is, so layers of one kind form one curve:
    ``fusion``, ``text``, ``vision``, ``cross.t2v``, ``cross.v2t``, ``cross.text``,
    ``cross.vision``."""
    parts = site.split(".")
    return f"cross.{parts[3]}" if parts[0] == "cross" and len(parts) >= 5 else parts[0]

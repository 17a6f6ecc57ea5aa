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

Sites: entropy on every attention site of a pair batch; distance and similarity on the
image-over-image self-attentions (single-stream ``fusion.blocks.*.attn``; two-stream
``vision.blocks.*.attn`` and ``cross.blocks.*.vision.attn``; similarity needs the layer-0
vectors, known for single- and two-stream models). Not here: attention between members of
the same COCO object, and captioner grounding (issue 13, other parts).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, Result
from vlprobe.analyses.fusion._common import head_rows, require_pairs
from vlprobe.errors import ConfigError


def _image_self_sites(sites: list[str]) -> list[str]:
    """Attention sites whose queries and keys are both the image tokens of one sequence."""
    return [s for s in sites if s.startswith(("fusion.", "vision."))
            or (s.startswith("cross.") and s.endswith(".vision.attn"))]


class AttentionStatistics(Analysis):
    name: ClassVar[str] = "attention_statistics"
    catalogue: ClassVar[tuple[str, ...]] = ("F6",)
    summary: ClassVar[str] = ("F6: attention entropy, distance and semantic similarity per "
                              "layer and head (seed 003)")
    defaults: ClassVar[dict[str, Any]] = {"split": "test"}

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
            out.append(FeatureRequest(model, self.dataset, split, sites=tuple(similar),
                                      attention=("reduce:distance", "reduce:similarity"),
                                      modality="pair"))
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
        notes = ["attention_statistics: entropy in nats over real keys (uniform row = "
                 "log T_key); distance in grid cells; "
                 "similarity = cosine of the tokens' layer-0 vectors (seed 003)"]
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
        return (head_rows(base, x[..., 0], "attention_similarity")
                + head_rows(base, x[..., 1], "uniform_similarity")
                + head_rows(base, x[..., 0] - x[..., 1], "similarity_gain"))


def _site_group(site: str) -> str:
    """The kind of attention a site is, so layers of one kind form one curve:
    ``fusion``, ``text``, ``vision``, ``cross.t2v``, ``cross.v2t``, ``cross.text``,
    ``cross.vision``."""
    parts = site.split(".")
    return f"cross.{parts[3]}" if parts[0] == "cross" and len(parts) >= 5 else parts[0]

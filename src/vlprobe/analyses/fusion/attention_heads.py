"""F2 ``modality_importance`` and F3 ``image_to_text_heads`` (seed 001 §3.2 / §3.3.1): what
single attention heads of a fusion model do with the two modalities.

F2 (eq. 1): the attention mass the [CLS] query (token 0) puts on text tokens and on image
tokens, per head and layer, specials ([CLS], [SEP]) excluded so the two do not sum to 1;
mean over pairs; head heatmaps and layer means (mean over heads). Reducer ``cls_mass``.
Needs a single-stream model: in a two-stream model [CLS] never attends to both modalities at
once (seed 001 leaves it out), and a captioner has no [CLS] over a fused sequence: both are
a ConfigError.

F3 (eq. 2): a head is image-to-text on a pair if some image query puts > ``threshold`` (0.5)
of its attention on text keys; reported per head: the probability over pairs. Reducer
``max_image_to_text``. Single-stream: ``fusion.blocks.{i}.attn``. Two-stream: the v2t
cross-attention ``cross.blocks.{k}.v2t.attn`` (image queries over the text stream's keys;
direction per SCIENCE.md: v2t = query vision, key text): there every visual query attends
only to the text stream by design, so the head map measures the share on words rather than
on [CLS] / [SEP].
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, Result
from vlprobe.analyses.fusion._common import fused_attention_sites, head_rows, require_pairs
from vlprobe.errors import ConfigError
from vlprobe.modality import TAG_IMAGE, TAG_TEXT

_CLS_NEED = ("modality importance reads the [CLS] row of a single-stream self-attention "
             "(seed 001 eq. 1); two-stream models and captioners have none")


class ModalityImportance(Analysis):
    name: ClassVar[str] = "modality_importance"
    catalogue: ClassVar[tuple[str, ...]] = ("F2",)
    summary: ClassVar[str] = "F2: [CLS] attention mass on text vs image tokens per head/layer"
    defaults: ClassVar[dict[str, Any]] = {"split": "test"}

    def _request(self, source: FeatureSource, model: str) -> FeatureRequest:
        require_pairs(source, self.name, model, self.dataset)
        sites = fused_attention_sites(source, self.name, model, _CLS_NEED)
        return FeatureRequest(model, self.dataset, self.params["split"], sites=tuple(sites),
                              attention=("reduce:cls_mass",), modality="pair")

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        return [self._request(source, m) for m in self.models]

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        from vlprobe.analyses.fusion.plots import plot_head_maps, plot_layer_means

        rows: list[dict[str, Any]] = []
        for model in self.models:
            feats = source.get(self._request(source, model))
            for name in feats.attention_features("reduce:cls_mass"):
                mass = np.asarray(feats.features[name], dtype=np.float64)  # [N, H, 3]
                base = {"analysis": self.name, "model": model, "dataset": self.dataset,
                        "layer": feats.layers.get(name), "site": name.split("@")[0]}
                rows += head_rows(base, mass[..., TAG_TEXT], "text_importance")
                rows += head_rows(base, mass[..., TAG_IMAGE], "image_importance")
        table = pd.DataFrame(rows)
        figures = {
            "head_maps": plot_head_maps(table, ["text_importance", "image_importance"],
                                        title=f"[CLS] attention mass per head ({self.dataset})"),
            "layer_means": plot_layer_means(table, ["text_importance", "image_importance"],
                                            ylabel="[CLS] attention mass",
                                            title=f"Modality importance by layer "
                                                  f"({self.dataset})"),
        }
        notes = ["modality_importance: mass of the [CLS] query (token 0) on text / image keys, "
                 "specials excluded (seed 001 eq. 1); layer rows (head empty) = mean over heads"]
        return Result(self.name, self.catalogue, table, figures=figures,
                      params=dict(self.params), notes=notes)


class ImageToTextHeads(Analysis):
    name: ClassVar[str] = "image_to_text_heads"
    catalogue: ClassVar[tuple[str, ...]] = ("F3",)
    summary: ClassVar[str] = ("F3: per head, P(some image token puts > 0.5 of its attention "
                              "on text)")
    defaults: ClassVar[dict[str, Any]] = {"split": "test", "threshold": 0.5}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        t = self.params["threshold"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < 1:
            raise ConfigError(f"analysis {self.name!r}: threshold must be in [0, 1), got {t!r}")

    def _request(self, source: FeatureSource, model: str) -> FeatureRequest:
        require_pairs(source, self.name, model, self.dataset)
        sites = source.attention_sites(model, "pair")
        v2t = [s for s in sites if s.endswith(".v2t.attn")]
        fused = [s for s in sites if s.startswith("fusion.")]
        chosen = v2t or fused
        if not chosen:
            raise ConfigError(
                f"{self.name}: model {model!r} has no attention with image queries over text "
                f"keys (attention sites: {', '.join(sites[:3]) or 'none'}); it needs a "
                "single-stream fusion model or a two-stream model's v2t cross-attention")
        return FeatureRequest(model, self.dataset, self.params["split"], sites=tuple(chosen),
                              attention=("reduce:max_image_to_text",), modality="pair")

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        return [self._request(source, m) for m in self.models]

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        from vlprobe.analyses.fusion.plots import plot_head_maps

        thr = float(self.params["threshold"])
        rows: list[dict[str, Any]] = []
        for model in self.models:
            feats = source.get(self._request(source, model))
            for name in feats.attention_features("reduce:max_image_to_text"):
                best = np.asarray(feats.features[name], dtype=np.float64)  # [N, H]
                hit = np.where(np.isfinite(best), (best > thr).astype(np.float64), np.nan)
                base = {"analysis": self.name, "model": model, "dataset": self.dataset,
                        "layer": feats.layers.get(name), "site": name.split("@")[0],
                        "threshold": thr}
                rows += head_rows(base, hit, "p_image_to_text")
                rows += head_rows(base, best, "max_image_to_text_mass")
        table = pd.DataFrame(rows)
        figures = {"head_map": plot_head_maps(
            table, ["p_image_to_text"], title=f"Image-to-text heads ({self.dataset})",
            vmax=1.0)}
        notes = [f"image_to_text_heads: a head is image-to-text on a pair if some image query "
                 f"puts > {thr} of its attention on text keys (seed 001 eq. 2); value = "
                 "probability over pairs. Two-stream models: v2t cross-attention (image queries,"
                 " text-stream keys)."]
        return Result(self.name, self.catalogue, table, figures=figures,
                      params=dict(self.params), notes=notes)

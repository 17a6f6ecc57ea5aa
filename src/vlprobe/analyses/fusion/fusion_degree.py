"""F1 ``fusion_degree``: how far a fusion model mixes its two modalities, layer by layer
(seed 001 §3.1, table 1).

For every (image, text) pair and every layer: k-means (k = 2) over the pair's text and image
token vectors (specials and padding left out), then the NMI between the two clusters and the
tokens' modality. NMI 1 = the clusters are exactly the modalities (no fusion); ~0 = the
clusters ignore modality (fully mixed). Reported: mean, standard deviation and standard error
over pairs, per layer and model.

Layers: a single-stream model's ``fusion.stem`` (layer 0) and ``fusion.blocks.*``; a
two-stream model's cross-modality layers ``cross.blocks.{k}`` (text and vision outputs of
layer k concatenated; layer = k, as in seed 001's table, whose LXMERT columns are its 5 cross
layers). The per-pair NMI is computed inside the extraction pass (the pooling
``fusion_nmi_s<seed>``, :mod:`vlprobe.extract.token_nmi`), so no token tensor is stored and it
shares the model's one forward pass with F2 / F3 / F6.

Seed 001's finding: single-stream NMI falls with depth; two-stream NMI rises (except the last
layer).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, Result
from vlprobe.analyses.fusion._common import fused_sequence_sites, mean_se, require_pairs


def nmi_pooling(seed: int) -> str:
    """The pooling that computes the per-pair NMI with k-means seed ``seed``."""
    return "fusion_nmi" if seed == 0 else f"fusion_nmi_s{seed}"


class FusionDegree(Analysis):
    name: ClassVar[str] = "fusion_degree"
    catalogue: ClassVar[tuple[str, ...]] = ("F1",)
    summary: ClassVar[str] = ("F1: per-pair k-means (k=2) NMI of token clusters vs modality, "
                              "by layer (lower = more fused)")
    defaults: ClassVar[dict[str, Any]] = {"split": "test"}

    def _request(self, source: FeatureSource, model: str) -> FeatureRequest:
        require_pairs(source, self.name, model, self.dataset)
        sites = fused_sequence_sites(source, self.name, model)
        return FeatureRequest(model, self.dataset, self.params["split"], sites=tuple(sites),
                              pooling=nmi_pooling(self.seed), modality="pair")

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        return [self._request(source, m) for m in self.models]

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        from vlprobe.analyses.fusion.plots import plot_fusion_degree

        rows: list[dict[str, Any]] = []
        for model in self.models:
            request = self._request(source, model)
            feats = source.get(request)
            for layer, site in enumerate(request.sites or ()):
                values = np.asarray(feats.features[site], dtype=np.float64).reshape(-1)
                mean, se, n = mean_se(values)
                sd = float(np.std(values[np.isfinite(values)], ddof=1)) if n > 1 else np.nan
                base = {"analysis": self.name, "model": model, "dataset": self.dataset,
                        "layer": layer, "site": site, "n": int(n), "seed": self.seed,
                        "n_missing": int(len(values) - n)}
                rows.append({**base, "metric": "nmi", "value": float(mean), "se": float(se)})
                rows.append({**base, "metric": "nmi_std", "value": sd})
        table = pd.DataFrame(rows)
        fig = plot_fusion_degree(table, title=f"Fusion degree by layer ({self.dataset})")
        notes = [
            "fusion_degree: per pair and layer, k-means (k=2, k-means++ x4, seed "
            f"{self.seed}) over the text and image tokens (specials excluded), NMI of the "
            "clusters vs modality; NMI 1 = modalities apart, ~0 = mixed (seed 001 table 1). "
            "Two-stream models: layer k = cross-modality layer k (text and vision outputs "
            "concatenated).",
        ]
        missing = int(table.loc[table["metric"] == "nmi", "n_missing"].max()) if len(table) else 0
        if missing:
            notes.append(f"fusion_degree: up to {missing} pair(s) per layer had no text or no "
                         "image token and no NMI")
        return Result(self.name, self.catalogue, table, figures={"fusion_degree": fig},
                      params=dict(self.params), notes=notes)

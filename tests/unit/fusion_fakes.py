"""A fake run source for the fusion analyses (F1 / F2 / F3 / F6): planted per-item
statistics of a single-stream fusion model, as the extraction pass would give them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from test_analysis_fakes import FakeSource

from vlprobe.analyses.base import LayerFeatures


@dataclass
class FusionFakeSource(FakeSource):
    """FakeSource with pair data and the layer sites of each model."""

    layers: dict[str, list[str]] = field(default_factory=dict)

    def layer_sites(self, model, modality):
        return list(self.layers[model])


def fusion_source(n: int = 10, n_layers: int = 3, heads: int = 2, seed: int = 0,
                  image_to_text_heads: tuple[tuple[int, int], ...] = ((1, 1),)
                  ) -> FusionFakeSource:
    """One single-stream model ``m`` on split ``test`` of dataset ``toy``: NMI falling with
    depth, [CLS] mass favouring text, the planted (layer, head) image-to-text heads, entropy
    falling with depth, distance and similarity values."""
    rng = np.random.default_rng(seed)
    hidden = ["fusion.stem"] + [f"fusion.blocks.{i}" for i in range(n_layers)]
    feats, layers = {}, {}
    for k, site in enumerate(hidden):
        feats[site] = np.clip(1.0 - 0.3 * k + 0.05 * rng.normal(size=(n, 1)), 0, 1).astype(
            np.float32)
        layers[site] = k
    attn_sites = [f"fusion.blocks.{i}.attn" for i in range(n_layers)]
    for i, site in enumerate(attn_sites):
        cls = rng.dirichlet([1.0, 4.0, 2.0], size=(n, heads)).astype(np.float32)
        best = rng.uniform(0.0, 0.4, size=(n, heads)).astype(np.float32)
        for layer, head in image_to_text_heads:
            if layer == i:
                best[:, head] = rng.uniform(0.6, 1.0, size=n)
        sim = np.stack([rng.uniform(0.5, 0.9, (n, heads)), np.full((n, heads), 0.5)], -1)
        values = {"cls_mass": cls, "max_image_to_text": best,
                  "entropy": (3.0 - 0.5 * i + 0.1 * rng.normal(size=(n, heads))),
                  "distance": rng.uniform(1, 3, (n, heads)), "similarity": sim}
        for reducer, v in values.items():
            feats[f"{site}@{reducer}"] = np.asarray(v, dtype=np.float32)
            layers[f"{site}@{reducer}"] = i + 1
    src = FusionFakeSource(data_modalities=("pair", "image", "text"), split_names=("test",))
    src.add("m", "test", LayerFeatures(feats, layers, None, [f"test/{j}" for j in range(n)]),
            modalities=("pair",))
    src.layers["m"] = hidden
    src.attention["m"] = attn_sites
    return src

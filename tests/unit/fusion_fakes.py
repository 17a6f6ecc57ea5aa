"""A planted single-stream fusion "model" for the pair-extraction tests (imported by the tests:
``from fusion_fakes import PlantedFusion``).

Its fused sequence is ``[CLS] words [SEP] patch x N_PATCHES pad...``; token vectors are the
tags (special 0, text 1, image 2) with NaN at padding, so that a leak shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from test_analysis_fakes import FakeSource

from vlprobe.analyses.base import LayerFeatures
from vlprobe.modality import TAG_IMAGE, TAG_PAD, TAG_SPECIAL, TAG_TEXT
from vlprobe.models.base import Batch, ModelAdapter, Trace

N_PATCHES = 4


def fused_tags(n_words: Sequence[int]) -> torch.Tensor:
    """``[B, T]`` int8 tags of ``[CLS] words [SEP] patches pad...`` per item,
    ``T = 2 + max(n_words) + N_PATCHES``."""
    tags = torch.full((len(n_words), 2 + max(n_words) + N_PATCHES), TAG_PAD, dtype=torch.int8)
    for b, n in enumerate(n_words):
        tags[b, 0] = TAG_SPECIAL
        tags[b, 1 : 1 + n] = TAG_TEXT
        tags[b, 1 + n] = TAG_SPECIAL
        tags[b, 2 + n : 2 + n + N_PATCHES] = TAG_IMAGE
    return tags


class PlantedFusion(ModelAdapter):
    """Sites ``fusion.stem`` / ``fusion.blocks.0`` ``[B, T, 3]`` (every component = the token's
    tag, NaN at padding) and ``fusion.pooled`` ``[B, 3]`` (token 0: [CLS])."""

    family = "planted_fusion"
    default_pooling = "cls"

    @classmethod
    def load(cls, spec, device="cpu"):  # pragma: no cover - built directly
        return cls(spec)

    @property
    def modalities(self):
        return ("pair",)

    def sites(self):
        return ["fusion.stem", "fusion.blocks.0", "fusion.pooled"]

    def layer_sites(self, modality):
        return ["fusion.stem", "fusion.blocks.0"]

    def identity(self):
        return {"adapter": self.family}

    def embedding_site(self, modality):
        return "fusion.pooled"

    def text_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) + 2 for t in texts]

    def prepare(self, payloads: Sequence[Any], modality: str) -> Batch:
        assert modality == "pair"
        return Batch("pair", {"n_words": [len(text.split()) for _, text in payloads]})

    def forward(self, batch: Batch, sites: Sequence[str]) -> Trace:
        tags = fused_tags(batch.inputs["n_words"])
        x = tags.float().unsqueeze(-1).expand(-1, -1, 3).clone()
        x[tags == TAG_PAD] = float("nan")
        trace = Trace(modality_tags=tags, attention_mask=(tags != TAG_PAD).long())
        for site in sites:
            trace.hidden[site] = x[:, 0] if site == "fusion.pooled" else x
        return trace


# -- fakes of the fusion analyses (F1-F6)
# A fake run source for the fusion analyses (F1 / F2 / F3 / F6): planted per-item
# statistics of a single-stream fusion model, as the extraction pass would give them.
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

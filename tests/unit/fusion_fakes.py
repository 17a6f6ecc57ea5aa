"""A planted single-stream fusion "model" for the pair-extraction tests (imported by the tests:
``from fusion_fakes import PlantedFusion``).

Its fused sequence is ``[CLS] words [SEP] patch x N_PATCHES pad...``; token vectors are the
tags (special 0, text 1, image 2) with NaN at padding, so that a leak shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

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

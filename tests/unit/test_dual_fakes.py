"""A FeatureSource over real Stimuli with planted "models" (test double of the data access for
the M3 / M4 / M5 analyses, which build stimuli and extract them with ``source.extract``).

Imported by the tests (``from test_dual_fakes import ...``). A planted model is a function
``encode(stimuli, modality, site) -> [N, D]`` that reads the items (their descriptors, labels,
texts): the analyses' logic is tested against known answers; the real rendering and store
path is tested with tiny models through the runner's source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vlprobe.analyses.base import FeatureRequest, LayerFeatures
from vlprobe.data import class_prompt_stimuli
from vlprobe.data._common import array_image_source
from vlprobe.data.stimuli import Stimuli

Encoder = Callable[[Stimuli, str, str], np.ndarray]


@dataclass
class DualFakeSource:
    """Splits (``items``), planted encoders per model, and a record of every extraction."""

    items: dict[str, Stimuli]
    encoders: dict[str, Encoder]
    modalities: dict[str, tuple[str, ...]] = field(default_factory=dict)
    vision_layers: tuple[str, ...] = ("vision.blocks.0", "vision.blocks.1")
    dataset: str = "toy"
    device: str = "cpu"
    calls: list[tuple[str, str, str, tuple[str, ...]]] = field(default_factory=list)

    def model_modalities(self, model):
        return self.modalities.get(model, ("image", "text"))

    def dataset_modalities(self, dataset):
        return next(iter(self.items.values())).modalities

    def splits(self, dataset):
        return list(self.items)

    def layer_sites(self, model, modality):
        return list(self.vision_layers) if modality == "image" else ["text.blocks.0"]

    def stimuli(self, request: FeatureRequest) -> Stimuli:
        assert request.dataset == self.dataset
        stim = self.items[request.split]
        if request.view == "class_prompts":
            return class_prompt_stimuli(stim, request.templates)
        return stim

    def _features(self, model, stim, modality, sites) -> LayerFeatures:
        if modality not in self.model_modalities(model):
            raise AssertionError(f"{model} cannot read {modality}")
        self.calls.append((model, stim.split, modality, tuple(sites)))
        enc = self.encoders[model]
        feats = {s: np.asarray(enc(stim, modality, s), dtype=np.float32) for s in sites}
        layers = {s: (self.vision_layers.index(s) if s in self.vision_layers else None)
                  for s in sites}
        return LayerFeatures(feats, layers, stim.labels, list(stim.ids), stim.label_names)

    def get(self, request: FeatureRequest) -> LayerFeatures:
        modality = request.modality or "image"
        return self._features(request.model, self.stimuli(request), modality, request.sites)

    def extract(self, model, stimuli, modality, sites, pooling=None) -> LayerFeatures:
        return self._features(model, stimuli, modality, sites)


def image_split(labels, names, size=16, seed=0, split="test", descriptors=None,
                dataset="toy") -> Stimuli:
    """A labelled image split of random noise images (``size`` px)."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(len(labels), size, size, 3), dtype=np.uint8)
    ids = [f"{split}/{i}" for i in range(len(labels))]
    return Stimuli(dataset, split, ids, images=array_image_source(pixels, ids), labels=labels,
                   label_names=list(names), descriptors=dict(descriptors or {}))


def test_fake_dual_source_roundtrip():
    stim = image_split([0, 1, 1], ["cat", "dog"])
    src = DualFakeSource({"test": stim},
                         {"m": lambda s, mod, site: np.eye(2)[np.asarray(s.labels)]})
    f = src.get(FeatureRequest("m", "toy", "test", sites=("vision.proj",), modality="image"))
    assert f.features["vision.proj"].shape == (3, 2) and f.ids == stim.ids
    t = src.get(FeatureRequest("m", "toy", "test", sites=("text.proj",), view="class_prompts",
                               templates=("a {}", "the {}"), modality="text"))
    assert t.features["text.proj"].shape == (4, 2) and list(t.labels) == [0, 0, 1, 1]
    assert src.calls[-1] == ("m", "class_prompts", "text", ("text.proj",))

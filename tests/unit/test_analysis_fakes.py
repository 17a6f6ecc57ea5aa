"""An in-memory FeatureSource (test double of the data-access interface) + planted data.

Imported by the analysis tests (``from test_analysis_fakes import ...``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlprobe.analyses.base import FeatureRequest, LayerFeatures
from vlprobe.data.stimuli import Stimuli


@dataclass
class FakeSource:
    """Features keyed by (model, split, view); records every ``get``.

    ``stimuli(request)`` gives the items of a split as texts: ``contents[split]`` when set
    (plant duplicates there), else a distinct text per item id.
    """

    dataset: str = "toy"
    data: dict[tuple[str, str, str], LayerFeatures] = field(default_factory=dict)
    modalities: dict[str, tuple[str, ...]] = field(default_factory=dict)
    data_modalities: tuple[str, ...] = ("image",)
    split_names: tuple[str, ...] = ("train", "test")
    calls: list[FeatureRequest] = field(default_factory=list)
    contents: dict[str, list[str]] = field(default_factory=dict)
    device: str = "cpu"
    #: model -> its attention sites (what ``attention_sites`` answers; fusion analyses)
    attention: dict[str, list[str]] = field(default_factory=dict)

    def add(self, model, split, feats, modalities=("image",), view="items"):
        self.data[(model, split, view)] = feats
        self.modalities[model] = tuple(modalities)

    def get(self, request: FeatureRequest) -> LayerFeatures:
        self.calls.append(request)
        assert request.dataset == self.dataset
        return self.data[(request.model, request.split, request.view)]

    def model_modalities(self, model):
        return self.modalities[model]

    def dataset_modalities(self, dataset):
        return self.data_modalities

    def splits(self, dataset):
        return list(self.split_names)

    def attention_sites(self, model, modality):
        return list(self.attention.get(model, []))

    def stimuli(self, request: FeatureRequest) -> Stimuli:
        assert request.dataset == self.dataset
        feats = next(f for (_, split, view), f in self.data.items()
                     if split == request.split and view == "items")
        texts = self.contents.get(request.split) or [f"content of {i}" for i in feats.ids]
        return Stimuli(self.dataset, request.split, list(feats.ids), texts=list(texts))


def planted_layers(
    labels, n_layers=4, dim=16, signal=None, seed=0, prefix="vision.blocks", n_classes=None,
    split="train", means_seed=123,
):
    """LayerFeatures where layer k carries ``signal[k]`` x a class mean + unit noise.

    Class means depend only on ``means_seed`` so train and test splits share them.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = n_classes or int(labels.max()) + 1
    signal = signal if signal is not None else [0.0] * n_layers
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(means_seed).normal(size=(n_layers, n_classes, dim))
    feats, layers = {}, {}
    for k in range(n_layers):
        x = rng.normal(size=(len(labels), dim)) + signal[k] * means[k][labels]
        feats[f"{prefix}.{k}"] = x.astype(np.float32)
        layers[f"{prefix}.{k}"] = k
    feats[f"{prefix.split('.')[0]}.pooled"] = rng.normal(size=(len(labels), dim)).astype(
        np.float32
    )
    layers[f"{prefix.split('.')[0]}.pooled"] = None
    ids = [f"{split}:{i}" for i in range(len(labels))]
    names = [f"class{c}" for c in range(n_classes)]
    return LayerFeatures(feats, layers, labels, ids, names)


def balanced_labels(n_per_class, n_classes, seed=0):
    y = np.repeat(np.arange(n_classes), n_per_class)
    return np.random.default_rng(seed).permutation(y)


def test_fake_source_roundtrip():
    src = FakeSource()
    y = balanced_labels(3, 2)
    f = planted_layers(y, n_layers=2, dim=4)
    src.add("m", "train", f)
    assert src.get(FeatureRequest("m", "toy", "train")) is f
    assert f.layer_sites() == ["vision.blocks.0", "vision.blocks.1"]

"""Planted dual encoders: an in-memory FeatureSource whose embeddings are computed from the
requested stimuli (so class prompts, class names and captions go through the real request
plumbing: ``class_prompt_stimuli``, ``image_id`` dedup), for the multimodal (M*) tests.

Imported by the tests (``from dual_fakes import ...``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vlprobe.analyses.base import FeatureRequest, LayerFeatures
from vlprobe.data import class_prompt_stimuli
from vlprobe.data.stimuli import Stimuli

Embed = Callable[[Stimuli], np.ndarray]


@dataclass
class PlantedDualSource:
    """``image_fn(stimuli) -> [N, E]`` and ``text_fn(stimuli) -> [N, E]`` embed the items of
    a request; ``splits_`` are the dataset's splits. Every ``get`` is recorded in ``calls``."""

    splits_: dict[str, Stimuli]
    image_fn: Embed
    text_fn: Embed
    dataset: str = "toy"
    modalities: dict[str, tuple[str, ...]] = field(default_factory=dict)
    scales: dict[str, dict[str, float | None] | None] = field(default_factory=dict)
    calls: list[FeatureRequest] = field(default_factory=list)
    device: str = "cpu"

    def model_modalities(self, model):
        return self.modalities.get(model, ("image", "text"))

    def dataset_modalities(self, dataset):
        return next(iter(self.splits_.values())).modalities

    def splits(self, dataset):
        return list(self.splits_)

    def layer_sites(self, model, modality):
        return []

    def embedding_site(self, model, modality):
        return {"image": "vision.proj", "text": "text.proj"}[modality]

    def logit_scale(self, model):
        return self.scales.get(model, {"scale": 100.0, "bias": None})

    def stimuli(self, request: FeatureRequest) -> Stimuli:
        assert request.dataset == self.dataset
        stimuli = self.splits_[request.split]
        if request.view == "class_prompts":
            return class_prompt_stimuli(stimuli, request.templates, request.class_names)
        return stimuli

    def get(self, request: FeatureRequest) -> LayerFeatures:
        self.calls.append(request)
        stimuli = self.stimuli(request)
        modality = request.modality
        site = self.embedding_site(request.model, modality)
        assert request.sites == (site,), request.sites
        fn = self.image_fn if modality == "image" else self.text_fn
        x = np.asarray(fn(stimuli), dtype=np.float32)
        assert x.shape[0] == len(stimuli)
        return LayerFeatures({site: x}, {site: None}, stimuli.labels, list(stimuli.ids),
                             stimuli.label_names)


# --------------------------------------------------------------------------------------------
# labelled images + class prompts
# --------------------------------------------------------------------------------------------


def labelled_split(split: str, labels, names) -> Stimuli:
    """Image-only items (no pixels needed: embeddings are planted) with labels and names.

    ``modalities`` of a Stimuli come from its payloads, so a 1x1 image source stands in.
    """
    from vlprobe.data._common import array_image_source

    labels = np.asarray(labels, dtype=np.int64)
    ids = [f"{split}/{i}" for i in range(len(labels))]
    pixels = np.zeros((len(labels), 1, 1, 3), dtype=np.uint8)
    pixels[:, 0, 0, 0] = np.arange(len(labels)) % 256
    return Stimuli("toy", split, ids, images=array_image_source(pixels, ids), labels=labels,
                   label_names=list(names))


def class_of_prompt(texts, names) -> np.ndarray:
    """The class index named in each prompt (longest name first, whole words)."""
    order = sorted(range(len(names)), key=lambda c: -len(names[c]))
    out = []
    for text in texts:
        hit = next(c for c in order if re.search(rf"\b{re.escape(names[c])}\b", text))
        out.append(hit)
    return np.asarray(out)


def planted_zero_shot(n_per_class=6, n_classes=4, dim=16, noise=0.3, seed=0,
                      splits=("train", "test"), names=None, text_offset=None):
    """Images of class c = centroid c + noise; the embedding of a prompt naming class c =
    centroid c (the planted dual encoder: M1 must be perfect). ``text_offset(texts) ->
    [N, dim]`` adds a per-prompt term (to spoil some templates)."""
    names = list(names or [f"class{c}" for c in range(n_classes)])
    centroids = np.random.default_rng(seed).normal(size=(len(names), dim))
    splits_, labels_of = {}, {}
    for i, split in enumerate(splits):
        y = np.random.default_rng(seed + 1 + i).permutation(
            np.repeat(np.arange(len(names)), n_per_class))
        splits_[split] = labelled_split(split, y, names)
        labels_of[split] = y  # the planted truth, even where a test removes the labels
    noise_of = {}

    def image_fn(stimuli):
        if stimuli.split not in noise_of:
            rng = np.random.default_rng([seed, len(stimuli.split), sum(stimuli.split.encode())])
            noise_of[stimuli.split] = rng.normal(size=(len(stimuli), dim))
        return centroids[labels_of[stimuli.split]] + noise * noise_of[stimuli.split]

    def text_fn(stimuli):
        x = centroids[class_of_prompt(stimuli.texts, stimuli.label_names)]
        return x + (text_offset(stimuli.texts) if text_offset is not None else 0.0)

    return PlantedDualSource(splits_, image_fn, text_fn), centroids


# --------------------------------------------------------------------------------------------
# (image, caption) pairs
# --------------------------------------------------------------------------------------------


def caption_split(split: str, captions_per_image: list[list[str]], image_ids=None) -> Stimuli:
    """One (image, caption) item per caption; descriptor ``image_id``."""
    from vlprobe.data._common import array_image_source

    image_ids = image_ids or [f"img{j}" for j in range(len(captions_per_image))]
    rows = [j for j, caps in enumerate(captions_per_image) for _ in caps]
    texts = [c for caps in captions_per_image for c in caps]
    ids = [f"{split}/{image_ids[j]}#{k}" for j, caps in enumerate(captions_per_image)
           for k in range(len(caps))]
    pixels = np.zeros((len(rows), 1, 1, 3), dtype=np.uint8)
    pixels[:, 0, 0, 0] = np.asarray(rows) % 256
    return Stimuli("toy", split, ids, images=array_image_source(pixels, ids), texts=texts,
                   descriptors={"image_id": [image_ids[j] for j in rows]})


def planted_pairs(n_images=8, per_image=5, dim=16, noise=0.05, seed=0):
    """Every image has its own vector; its captions embed to that vector + small noise: a
    perfect dual encoder (R@1 = 1 both ways)."""
    vectors = np.random.default_rng(seed).normal(size=(n_images, dim))
    captions = [[f"caption {k} of image {j}" for k in range(per_image)] for j in range(n_images)]
    split = caption_split("test", captions)
    text_vec = {c: vectors[j] + noise * np.random.default_rng([seed, j, k]).normal(size=dim)
                for j, caps in enumerate(captions) for k, c in enumerate(caps)}
    image_index = {f"img{j}": j for j in range(n_images)}

    def image_fn(stimuli):
        return vectors[[image_index[i] for i in stimuli.descriptors["image_id"]]]

    def text_fn(stimuli):
        return np.stack([text_vec[t] for t in stimuli.texts])

    return PlantedDualSource({"test": split}, image_fn, text_fn), vectors

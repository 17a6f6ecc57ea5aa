"""Frozen tower features for training, through the activation store: each tower runs once per
dataset split, and a second training run of any config on the same towers does no forward pass.

Paired data (one item per caption, ``image_id`` descriptor): image features are computed per
distinct image, text features per caption, and ``image_of_text`` maps captions to images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlprobe.errors import DataError


@dataclass
class PairedFeatures:
    """Tower features of one split.

    Attributes:
        image: ``[N_images, D_image]`` float32 (the tower's sites pooled and concatenated).
        text: ``[N_texts, D_text]`` float32.
        image_of_text: ``[N_texts]`` int64 row of each text's image.
        image_ids: N_images image ids.
        image_digests: N_images content digests (the test-leakage check compares them).
    """

    image: np.ndarray
    text: np.ndarray
    image_of_text: np.ndarray
    image_ids: list[str]
    image_digests: list[str]


def tower_features(
    adapter: Any, stimuli: Any, modality: str, sites: Sequence[str], pooling: str | None,
    store: Any, extraction: dict[str, Any] | None = None, progress: bool = True,
) -> np.ndarray:
    """``[N, sum of site widths]``: the pooled ``sites`` of one tower, concatenated."""
    from vlprobe.extract import extract_features

    res = extract_features(
        adapter, stimuli, modality=modality, sites=list(sites), pooling=pooling, store=store,
        progress=progress, **(extraction or {}),
    )
    return np.ascontiguousarray(
        np.concatenate([np.asarray(res.features[s], dtype=np.float32) for s in sites], axis=1)
    )


def paired_features(
    stimuli: Any, image_adapter: Any, text_adapter: Any, image_sites: Sequence[str],
    text_sites: Sequence[str], store: Any, *, image_pooling: str | None = None,
    text_pooling: str | None = None, extraction: dict[str, Any] | None = None,
    progress: bool = True,
) -> PairedFeatures:
    """Features of a paired split (items = (image, caption) pairs)."""
    if stimuli.images is None or stimuli.texts is None:
        raise DataError(
            f"dataset {stimuli.dataset!r} split {stimuli.split!r} has no (image, caption) "
            "pairs; training a dual encoder needs both"
        )
    view, inverse = image_view(stimuli)
    image = tower_features(image_adapter, view, "image", image_sites, image_pooling, store,
                           extraction, progress)
    text = tower_features(text_adapter, stimuli, "text", text_sites, text_pooling, store,
                          extraction, progress)
    return PairedFeatures(
        image=image, text=text, image_of_text=np.asarray(inverse, dtype=np.int64),
        image_ids=list(view.ids), image_digests=list(view.images.digests),
    )


def image_view(stimuli: Any) -> tuple[Any, np.ndarray]:
    """``(one item per distinct image, [N_texts] row of each item's image)`` of a paired
    split (the image tower runs on the view)."""
    shared = stimuli.unique_images()
    if shared is not None:
        return shared
    from vlprobe.data.stimuli import Stimuli  # one caption per image

    view = Stimuli(dataset=stimuli.dataset, split=stimuli.split, ids=list(stimuli.ids),
                   images=stimuli.images, source=stimuli.source)
    return view, np.arange(len(stimuli))


def check_no_test_images(train: PairedFeatures, test: PairedFeatures, *others: Any) -> None:
    """Refuse to train when a training (or selection) image is a test image, by content."""
    held = set(test.image_digests)
    for part in (train, *others):
        shared = [i for i, d in zip(part.image_ids, part.image_digests) if d in held]
        if shared:
            raise DataError(
                f"training refuses to touch test images: {len(shared)} training/validation "
                f"image(s) have the content of a test image (e.g. {shared[:3]})"
            )

"""Stimuli: the items a model is run on, with their descriptors.

A :class:`Stimuli` holds N items of one split of one dataset. Each item has an id, a payload
per modality (an image, a text, or both) and descriptors (label, group, spans, boxes, ...).

Paired sets: items with both an image and a text are (image, text) pairs, e.g. one item per
caption. The ``image_id`` descriptor names each item's image, so that image-side work runs
once per image (:meth:`Stimuli.unique_images`), not once per caption.
Images are loaded lazily through an :class:`ImageSource`, so a 50k-image split costs only its
encoded bytes in memory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vlprobe.errors import DataError


class ImageSource:
    """Lazy, indexable images: ``source[i]`` returns an RGB ``PIL.Image``.

    Args:
        loaders: one zero-argument callable per item returning an RGB PIL image.
        names: a human-readable origin per item (file path or ``file.parquet[row]``), used in
            error messages.
        digests: a digest per item for fingerprints: a content digest (sha1 of the encoded
            bytes or of the pixels), or a cheaper stand-in when ``files`` is given.
        files: for images read from files whose ``digests`` are NOT content digests
            (:func:`~vlprobe.data._common.file_image_source` hashes size + mtime so that
            listing a big folder reads no file): the file of each item, read on demand by
            :meth:`content_digest`.
    """

    def __init__(
        self,
        loaders: Sequence[Callable[[], Any]],
        names: Sequence[str],
        digests: Sequence[str],
        files: Sequence[str] | None = None,
    ) -> None:
        if not (len(loaders) == len(names) == len(digests)):
            raise ValueError("loaders, names and digests must have the same length")
        if files is not None and len(files) != len(loaders):
            raise ValueError("files must have one entry per image")
        self._loaders = list(loaders)
        self.names = list(names)
        self.digests = list(digests)
        self.files = list(files) if files is not None else None

    def __len__(self) -> int:
        return len(self._loaders)

    def __getitem__(self, index: int) -> Any:
        try:
            image = self._loaders[index]()
        except DataError:
            raise
        except Exception as exc:  # PIL raises many kinds; name the file
            raise DataError(f"cannot read image {self.names[index]}: {exc}") from exc
        return image if image.mode == "RGB" else image.convert("RGB")

    def subset(self, indices: Sequence[int]) -> ImageSource:
        """The images at ``indices``, in that order."""
        return ImageSource(
            [self._loaders[i] for i in indices],
            [self.names[i] for i in indices],
            [self.digests[i] for i in indices],
            [self.files[i] for i in indices] if self.files is not None else None,
        )

    def content_candidates(self) -> list[str]:
        """A cheap key per image that is equal for any two images with the same encoded bytes:
        the content digest, or the file size when the digests are not content digests (then
        equal keys only make a duplicate possible; :meth:`content_digest` decides)."""
        if self.files is None:
            return list(self.digests)
        return [f"size:{os.path.getsize(f)}" for f in self.files]

    def content_digest(self, index: int) -> str:
        """sha1 of the encoded bytes of image ``index`` (reads its file when needed)."""
        if self.files is None:
            return self.digests[index]
        try:
            with open(self.files[index], "rb") as handle:
                return hashlib.sha1(handle.read()).hexdigest()
        except OSError as exc:
            raise DataError(f"cannot read image {self.names[index]}: {exc}") from exc


@dataclass
class Stimuli:
    """N items of one split of one dataset.

    Attributes:
        dataset: dataset name (the key in the run config) or loader id.
        split: split name (``"train"``, ``"test"``, ...).
        ids: N unique item ids (strings).
        images: N lazy images, or None for text-only data.
        texts: N strings, or None for image-only data.
        labels: ``[N]`` int64 class indices, or None.
        label_names: class names indexed by label, or None.
        descriptors: other per-item columns, name -> length-N list (groups, spans, boxes, ...).
            ``image_id`` (paired sets): the image of each item; items sharing an image id share
            the image (it is decoded and run through an image tower once).
        source: where the data came from (path or hub id) and loader options, for provenance.
    """

    dataset: str
    split: str
    ids: list[str]
    images: ImageSource | None = None
    texts: list[str] | None = None
    labels: np.ndarray | None = None
    label_names: list[str] | None = None
    descriptors: dict[str, list[Any]] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        where = f"dataset {self.dataset!r} split {self.split!r}"
        if n == 0:
            raise DataError(f"{where} is empty (0 items)")
        if len(set(self.ids)) != n:
            raise DataError(f"{where}: item ids are not unique")
        if self.images is None and self.texts is None:
            raise DataError(f"{where} has neither images nor texts")
        for name, column in (("images", self.images), ("texts", self.texts)):
            if column is not None and len(column) != n:
                raise DataError(f"{where}: {len(column)} {name} for {n} items")
        if self.labels is not None:
            self.labels = np.asarray(self.labels)
            if self.labels.shape != (n,):
                raise DataError(
                    f"{where}: labels have shape {self.labels.shape}, expected ({n},) "
                    "(one label per item)"
                )
            if not np.issubdtype(self.labels.dtype, np.integer):
                raise DataError(f"{where}: labels must be integer class indices")
            self.labels = self.labels.astype(np.int64)
            if self.label_names is not None and n and self.labels.max() >= len(self.label_names):
                raise DataError(
                    f"{where}: label {int(self.labels.max())} has no name "
                    f"({len(self.label_names)} label_names)"
                )
        for name, column in self.descriptors.items():
            if len(column) != n:
                raise DataError(
                    f"{where}: descriptor {name!r} has {len(column)} values for {n} items"
                )
        if self.images is not None and self.texts is not None:
            for item_id, text in zip(self.ids, self.texts):
                if text is None or not str(text).strip():
                    raise DataError(
                        f"{where}: item {item_id!r} is an (image, text) pair with an empty "
                        "caption"
                    )
        image_ids = self.descriptors.get("image_id")
        if image_ids is not None and self.images is not None:
            first: dict[Any, str] = {}
            for i, key in enumerate(image_ids):
                digest = first.setdefault(key, self.images.digests[i])
                if digest != self.images.digests[i]:
                    raise DataError(
                        f"{where}: items with image_id {key!r} carry different images "
                        f"(item {self.ids[i]!r})"
                    )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Which inputs the items offer: ``image`` and / or ``text``, plus ``pair`` when every
        item has both (see :mod:`vlprobe.modality`)."""
        columns = (("image", self.images), ("text", self.texts))
        mods = tuple(m for m, col in columns if col is not None)
        return (*mods, "pair") if len(mods) == 2 else mods

    @property
    def n_classes(self) -> int:
        """Number of classes (from label_names, else max label + 1)."""
        if self.labels is None:
            raise DataError(f"dataset {self.dataset!r} has no labels")
        return len(self.label_names) if self.label_names else int(self.labels.max()) + 1

    def payloads(self, modality: str, indices: Sequence[int]) -> list[Any]:
        """Images (PIL), texts, or ``(image, text)`` pairs of the items at ``indices``.

        Every image carries ``image.info["image_id"]``: its item's ``image_id`` descriptor
        (str), else the item id; models that look an image up by id (a regions file of
        VisualBERT / LXMERT) read it there.
        """
        if modality == "pair":
            if self.images is None or self.texts is None:
                raise DataError(
                    f"dataset {self.dataset!r} items are not (image, text) pairs "
                    f"(it has {'/'.join(self.modalities)} items)"
                )
            return [(self._image(i), self.texts[i]) for i in indices]
        if modality == "image":
            if self.images is None:
                raise DataError(f"dataset {self.dataset!r} has no images")
            return [self._image(i) for i in indices]
        if modality == "text":
            if self.texts is None:
                raise DataError(f"dataset {self.dataset!r} has no texts")
            return [self.texts[i] for i in indices]
        raise ValueError(f"unknown modality {modality!r}")

    def _image(self, index: int) -> Any:
        """Image ``index`` (PIL) with ``info["image_id"]`` set (see :meth:`payloads`)."""
        image = self.images[index]
        keys = self.descriptors.get("image_id")
        key = str(keys[index]) if keys is not None else self.ids[index]
        if image.info.get("image_id", key) != key:  # a loader that hands out one object twice
            image = image.copy()
        image.info["image_id"] = key
        return image

    def unique_images(self) -> tuple[Stimuli, np.ndarray] | None:
        """``(view, inverse)`` for a set whose items share images (an ``image_id``
        descriptor with repeats): ``view`` holds each image once (ids = image ids, first
        occurrence order, image-only), and item ``i``'s image is ``view`` item
        ``inverse[i]``. None when no image is shared (nothing to save)."""
        image_ids = self.descriptors.get("image_id")
        if image_ids is None or self.images is None:
            return None
        index: dict[Any, int] = {}
        inverse = np.fromiter(
            (index.setdefault(key, len(index)) for key in image_ids), np.int64, len(image_ids)
        )
        if len(index) == len(image_ids):
            return None
        first = np.unique(inverse, return_index=True)[1]
        view = Stimuli(
            dataset=self.dataset,
            split=self.split,
            ids=[str(image_ids[i]) for i in first],
            images=self.images.subset(first.tolist()),
            source={**self.source, "view": "unique_images"},
        )
        return view, inverse

    def subset(self, indices: Sequence[int], split: str | None = None) -> Stimuli:
        """A new Stimuli with the items at ``indices`` (in that order)."""
        idx = [int(i) for i in indices]
        return replace(
            self,
            split=split or self.split,
            ids=[self.ids[i] for i in idx],
            images=self.images.subset(idx) if self.images is not None else None,
            texts=[self.texts[i] for i in idx] if self.texts is not None else None,
            labels=self.labels[idx] if self.labels is not None else None,
            descriptors={k: [v[i] for i in idx] for k, v in self.descriptors.items()},
        )

    def fingerprint(self) -> str:
        """Content hash of ids, payloads, labels and label names (part of every cache key).

        Two Stimuli with the same fingerprint give the same activations for the same model.
        """
        h = hashlib.sha256()
        for i, item_id in enumerate(self.ids):
            h.update(item_id.encode())
            h.update(b"\0")
            if self.images is not None:
                h.update(self.images.digests[i].encode())
            h.update(b"\1")
            if self.texts is not None:
                h.update(self.texts[i].encode())
            h.update(b"\2")
        if self.labels is not None:
            h.update(self.labels.astype(np.int64).tobytes())
        if self.label_names is not None:
            h.update("\0".join(self.label_names).encode())
        return h.hexdigest()[:16]


def class_prompt_stimuli(
    stimuli: Stimuli,
    templates: Sequence[str] = ("a photo of a {}.",),
    class_names: Sequence[str] | None = None,
) -> Stimuli:
    """One text item per (class, template): ``template.format(class_name)``, label = class.

    This is how text models enter class-level comparisons (R1 RSA, thesis §4): class ``c`` is
    represented by the sentence "a photo of a {c}." (several templates give several samples
    per class). Items are ordered class-major: class 0 with every template, then class 1, ...

    ``class_names`` (one per class index) replace the dataset's ``label_names`` in the
    prompts and in the result's ``label_names`` (zero-shot with curated names): one for each
    class the dataset names, or (a dataset without names) at least one per label index.
    """
    names = stimuli.label_names if class_names is None else list(class_names)
    if names is None:
        raise DataError(
            f"dataset {stimuli.dataset!r} has no class names; class prompts need label_names"
        )
    if class_names is not None and stimuli.label_names is not None:
        if len(names) != len(stimuli.label_names):
            raise DataError(
                f"dataset {stimuli.dataset!r} split {stimuli.split!r} has "
                f"{len(stimuli.label_names)} classes but {len(names)} class names were given "
                "(one per class index is needed)"
            )
    elif class_names is not None and stimuli.labels is not None and len(stimuli.labels):
        top = int(np.max(stimuli.labels))
        if top >= len(names):
            raise DataError(
                f"dataset {stimuli.dataset!r} split {stimuli.split!r} has label {top} but only "
                f"{len(names)} class names were given (one per class index is needed)"
            )
    return prompt_stimuli(names, templates, stimuli.dataset, "class_prompts", stimuli.source)


def prompt_stimuli(
    names: Sequence[str], templates: Sequence[str], dataset: str = "prompts",
    split: str = "prompts", source: dict | None = None,
) -> Stimuli:
    """One text item per (name, template): ``template.format(name)``, label = name index,
    class-major (name 0 with every template, then name 1, ...), ids
    ``class:<c>:template:<t>``. The prompts of zero-shot classifiers: a dataset's classes
    (:func:`class_prompt_stimuli`) or any label set (M4's bias-audit labels)."""
    templates = list(templates)
    if not templates:
        raise DataError("class prompts need at least one template")
    for template in templates:
        if "{}" not in template and "{c}" not in template:
            raise DataError(f"prompt template {template!r} must contain '{{}}' or '{{c}}'")
    texts, labels, ids = [], [], []
    for c, name in enumerate(names):
        for t, template in enumerate(templates):
            texts.append(template.replace("{c}", "{}").format(name))
            labels.append(c)
            ids.append(f"class:{c}:template:{t}")
    return Stimuli(
        dataset=dataset,
        split=split,
        ids=ids,
        texts=texts,
        labels=np.asarray(labels, dtype=np.int64),
        label_names=list(names),
        source={**(source or {}), "view": split, "templates": templates},
    )

"""``coco_captions`` and ``coco_instances``: the COCO 2017 layout.

``path`` is the COCO root holding ``annotations/`` and the image folders ``{split}2017/``.
Splits are found where both ``annotations/captions_{split}2017.json`` (or
``instances_...``) and ``{split}2017/`` exist; COCO's ``val`` is vlprobe's ``validation``.

Only images whose file exists are kept: an annotation file may list more images than the
folder holds (the reference kit's ``captions_val2017_full.json`` has captions for all 5,000
val images, of which 159 files exist). The number of listed images without a file is
recorded in ``source["missing_images"]``; images with no caption (no annotation) are dropped
and counted in ``source["unannotated_images"]``.

Options (both loaders):
    splits: list of COCO split names to load (default: every split found).
    annotations: annotation JSON, relative to ``path`` (or absolute); a string (one split)
        or a mapping ``{split: file}``, e.g. ``{val: annotations/captions_val2017_full.json}``.
    images: image folder, relative to ``path``; a string or mapping ``{split: folder}``.
    year: default ``"2017"``.

``coco_captions`` option ``per``: ``"caption"`` (default) gives one item per (image, caption)
pair (images and texts; descriptor ``image_id``); ``"image"`` gives one item per image with
the first caption as its text and all captions in descriptor ``captions``.

``coco_captions`` option ``instances``: ``true`` (the split's
``annotations/instances_{split}2017.json``), a file relative to ``path`` or a mapping ``{split:
file}``: adds the object boxes of each item's image, descriptors ``boxes`` (list of
``[x, y, w, h, category_name]`` in pixels, as ``coco_instances`` gives them, crowd annotations
left out: they mark a group, not one object) and ``image_size`` (``[width, height]``). An image
without instances gets an empty list. A digest of the boxes is part of the provenance (so of
every cache key built on them).

``coco_instances`` gives one item per image (images only) with descriptors ``boxes`` (list of
``[x, y, w, h, category_name]``), ``categories`` (sorted names present) and ``image_id``;
its label is the category with the largest total annotated area in the image (segment
``area``, bbox area where absent; ties -> the lower category id), label_names = the COCO
category names ordered by category id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.data._common import (
    check_on_error,
    dataset_name,
    drop_unreadable,
    file_image_source,
    provenance,
    resolve_path,
)
from vlprobe.data.splits import canonical_split
from vlprobe.data.stimuli import Stimuli
from vlprobe.errors import DataError

_COCO_SPLITS = ("train", "val", "test")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read COCO annotation file {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DataError(
            f"{str(path)!r} is not a COCO annotation file (needs 'images' and 'annotations')"
        )
    return data


def _per_split(value: Any, split: str) -> Any:
    if isinstance(value, dict):
        return value.get(split, value.get(canonical_split(split)))
    return value


def _locate(root: Path, kind: str, options: dict[str, Any], loader: str) -> dict[str, tuple]:
    """COCO split -> (annotation file, image folder)."""
    year = str(options.get("year", "2017"))
    wanted = options.get("splits")
    annotations, images = options.get("annotations"), options.get("images")
    if wanted is None and isinstance(annotations, dict):
        wanted = list(annotations)
    if wanted is None and isinstance(annotations, str):
        stem = Path(annotations).stem  # captions_val2017_full -> val
        wanted = [s for s in _COCO_SPLITS if f"_{s}{year}" in stem][:1] or None
        if wanted is None:
            raise DataError(
                f"{loader}: cannot tell the split of {annotations!r}; set options.splits"
            )
    explicit = wanted is not None
    found: dict[str, tuple] = {}
    for split in [str(s) for s in (wanted or _COCO_SPLITS)]:
        ann = _per_split(annotations, split) or f"annotations/{kind}_{split}{year}.json"
        img = _per_split(images, split) or f"{split}{year}"
        ann_path, img_path = root / ann, root / img
        if ann_path.is_file() and img_path.is_dir():
            found[split] = (ann_path, img_path)
        elif explicit:
            missing = ann_path if not ann_path.is_file() else img_path
            raise DataError(f"{loader}: split {split!r}: {str(missing)!r} does not exist")
    if not found:
        raise DataError(
            f"{loader}: no COCO split in {str(root)!r} (expected annotations/{kind}_"
            f"{{train,val}}{year}.json and the image folders {{train,val}}{year}/)"
        )
    return found


def _existing_images(data: dict[str, Any], folder: Path) -> tuple[list[dict[str, Any]], int]:
    present = {p.name for p in folder.iterdir()}
    images = sorted(data["images"], key=lambda im: im["id"])
    kept = [im for im in images if im["file_name"] in present]
    return kept, len(images) - len(kept)


def load_coco_captions(spec: Any) -> dict[str, Stimuli]:
    """COCO captions (see the module docstring); option ``per``: ``caption`` or ``image``."""
    loader = "coco_captions"
    options = dict(spec.options)
    on_error = check_on_error(spec)
    per = options.get("per", "caption")
    if per not in ("caption", "image"):
        raise DataError(f"{loader}: options.per must be 'caption' or 'image', got {per!r}")
    root = resolve_path(spec, loader)
    out: dict[str, Stimuli] = {}
    for coco_split, (ann_path, folder) in _locate(root, "captions", options, loader).items():
        split = canonical_split(coco_split)
        data = _read_json(ann_path)
        images, missing = _existing_images(data, folder)
        captions: dict[int, list[tuple[int, str]]] = {}
        for ann in data["annotations"]:
            captions.setdefault(ann["image_id"], []).append((ann["id"], ann["caption"].strip()))
        ids: list[str] = []
        texts: list[str] = []
        files: list[Path] = []
        image_ids: list[int] = []
        all_captions: list[list[str]] = []
        unannotated = 0
        for im in images:
            caps = sorted(captions.get(im["id"], []))
            if not caps:
                unannotated += 1
                continue
            path = folder / im["file_name"]
            if per == "caption":
                for ann_id, text in caps:
                    ids.append(f"{split}/{im['id']}/{ann_id}")
                    texts.append(text)
                    files.append(path)
                    image_ids.append(im["id"])
            else:
                ids.append(f"{split}/{im['id']}")
                texts.append(caps[0][1])
                files.append(path)
                image_ids.append(im["id"])
                all_captions.append([c for _, c in caps])
        if not ids:
            raise DataError(f"{loader}: no captioned image file in {str(folder)!r} ({ann_path})")
        descriptors: dict[str, list[Any]] = {"image_id": image_ids}
        if per == "image":
            descriptors["captions"] = all_captions
        extra: dict[str, Any] = {}
        if options.get("instances"):
            boxes, sizes, extra = _instance_boxes(root, coco_split, options, loader, images)
            descriptors["boxes"] = [boxes[i] for i in image_ids]
            descriptors["image_size"] = [sizes[i] for i in image_ids]
        stimuli = Stimuli(
            dataset=dataset_name(spec, loader),
            split=split,
            ids=ids,
            images=file_image_source(files),
            texts=texts,
            descriptors=descriptors,
            source=provenance(
                loader,
                root,
                options,
                per=per,
                annotations=str(ann_path),
                images=str(folder),
                missing_images=missing,
                unannotated_images=unannotated,
                skipped=[],
                **extra,
            ),
        )
        out[split] = drop_unreadable(stimuli, on_error)
    return out


def _instance_boxes(
    root: Path, coco_split: str, options: dict[str, Any], loader: str,
    images: list[dict[str, Any]],
) -> tuple[dict[int, list[list[Any]]], dict[int, list[int]], dict[str, Any]]:
    """``(image id -> non-crowd boxes [x, y, w, h, category], image id -> [width, height],
    provenance)`` of ``images`` from the split's instances file (option ``instances``)."""
    import hashlib

    value = options["instances"]
    year = str(options.get("year", "2017"))
    name = _per_split(value, coco_split) if not isinstance(value, bool) else None
    if isinstance(value, dict) and name is None:
        raise DataError(f"{loader}: options.instances names no file for split {coco_split!r}")
    path = root / (name or f"annotations/instances_{coco_split}{year}.json")
    if not path.is_file():
        raise DataError(f"{loader}: options.instances: {str(path)!r} does not exist")
    data = _read_json(path)
    names = {c["id"]: c["name"] for c in data.get("categories", [])}
    boxes: dict[int, list[list[Any]]] = {im["id"]: [] for im in images}
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        if ann["image_id"] not in boxes or ann.get("iscrowd"):
            continue
        if ann["category_id"] not in names:
            raise DataError(f"{path.name}: annotation {ann['id']} has unknown category "
                            f"{ann['category_id']}")
        x, y, w, h = (float(v) for v in ann["bbox"])
        boxes[ann["image_id"]].append([x, y, w, h, names[ann["category_id"]]])
    sizes = {im["id"]: [int(im["width"]), int(im["height"])] for im in images}
    digest = hashlib.sha256(json.dumps([boxes, sizes], sort_keys=True).encode()).hexdigest()
    return boxes, sizes, {"instances_file": str(path), "boxes_sha256": digest[:16]}


def load_coco_instances(spec: Any) -> dict[str, Stimuli]:
    """COCO object instances, one item per image, labelled by its largest category."""
    loader = "coco_instances"
    options = dict(spec.options)
    on_error = check_on_error(spec)
    root = resolve_path(spec, loader)
    out: dict[str, Stimuli] = {}
    for coco_split, (ann_path, folder) in _locate(root, "instances", options, loader).items():
        split = canonical_split(coco_split)
        data = _read_json(ann_path)
        if not data.get("categories"):
            raise DataError(f"{str(ann_path)!r} has no 'categories' (not an instances file?)")
        categories = sorted(data["categories"], key=lambda c: c["id"])
        label_names = [c["name"] for c in categories]
        cat_index = {c["id"]: i for i, c in enumerate(categories)}
        images, missing = _existing_images(data, folder)
        by_image: dict[int, list[dict[str, Any]]] = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        ids, files, labels, boxes, cats, image_ids = [], [], [], [], [], []
        unannotated = 0
        for im in images:
            anns = sorted(by_image.get(im["id"], []), key=lambda a: a["id"])
            if not anns:
                unannotated += 1
                continue
            area = np.zeros(len(categories))
            item_boxes = []
            for ann in anns:
                k = cat_index.get(ann["category_id"])
                if k is None:
                    raise DataError(
                        f"{ann_path.name}: annotation {ann['id']} has unknown category "
                        f"{ann['category_id']}"
                    )
                x, y, w, h = (float(v) for v in ann["bbox"])
                area[k] += float(ann.get("area", w * h))
                item_boxes.append([x, y, w, h, label_names[k]])
            ids.append(f"{split}/{im['id']}")
            files.append(folder / im["file_name"])
            labels.append(int(np.argmax(area)))
            boxes.append(item_boxes)
            cats.append(sorted({b[4] for b in item_boxes}))
            image_ids.append(im["id"])
        if not ids:
            raise DataError(f"{loader}: no annotated image file in {str(folder)!r} ({ann_path})")
        stimuli = Stimuli(
            dataset=dataset_name(spec, loader),
            split=split,
            ids=ids,
            images=file_image_source(files),
            labels=np.asarray(labels, dtype=np.int64),
            label_names=label_names,
            descriptors={"boxes": boxes, "categories": cats, "image_id": image_ids},
            source=provenance(
                loader,
                root,
                options,
                annotations=str(ann_path),
                images=str(folder),
                missing_images=missing,
                unannotated_images=unannotated,
                skipped=[],
            ),
        )
        out[split] = drop_unreadable(stimuli, on_error)
    return out


__all__ = ["load_coco_captions", "load_coco_instances"]

"""``image_folder``: ``root/class_name/*.jpg`` (torchvision's ImageFolder layout).

When every subdirectory of ``root`` is a split name (``train``, ``test``, ``val``/``validation``,
``dev``...), each is a split with its own class folders; otherwise ``root`` holds the class
folders of a single ``train`` split (``options.split`` renames it). Labels index the sorted
class folder names (the union over splits, so a label means the same class in every split).
A root with images and no class folders gives an unlabelled split.

Images are files with a known image extension (case-insensitive), found recursively inside
each class folder. Ids are paths relative to ``root`` (``train/cat/001.jpg``), so they are
unique across splits. Other files are ignored; image files directly in a labelled root are
ignored and counted in ``source["ignored_files"]``.

Options: ``split`` (name of a single-split root), ``label_names`` (display names replacing the
folder names, same order as the sorted folders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.data._common import (
    IMAGE_EXTENSIONS,
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

LOADER = "image_folder"
_SPLIT_DIRS = {"train", "test", "validation"}


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_image(p))


def load_image_folder(spec: Any) -> dict[str, Stimuli]:
    """Load an image folder dataset (see the module docstring)."""
    options = dict(spec.options)
    on_error = check_on_error(spec)
    root = resolve_path(spec, LOADER)
    if not root.is_dir():
        raise DataError(f"{LOADER}: {str(root)!r} is not a directory")
    subdirs = _subdirs(root)
    if subdirs and all(canonical_split(d.name) in _SPLIT_DIRS for d in subdirs):
        split_dirs = {canonical_split(d.name): d for d in subdirs}
    else:
        split_dirs = {options.get("split", "train"): root}

    class_names = sorted({c.name for d in split_dirs.values() for c in _subdirs(d)})
    labelled = bool(class_names)
    display = options.get("label_names")
    if display is not None and len(display) != len(class_names):
        raise DataError(
            f"{LOADER}: options.label_names has {len(display)} names for {len(class_names)} "
            f"class folders in {str(root)!r}: {class_names}"
        )
    index = {name: i for i, name in enumerate(class_names)}
    out: dict[str, Stimuli] = {}
    for split, folder in split_dirs.items():
        files: list[Path] = []
        labels: list[int] = []
        ignored: list[str] = []
        if labelled:
            for class_dir in _subdirs(folder):
                found = _images_under(class_dir)
                files += found
                labels += [index[class_dir.name]] * len(found)
            ignored = [p.relative_to(root).as_posix() for p in folder.iterdir() if _is_image(p)]
        else:
            files = _images_under(folder)
        if not files:
            raise DataError(
                f"{LOADER}: no images in {str(folder)!r} (looked for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))} files in class folders)"
            )
        ids = [p.relative_to(root).as_posix() for p in files]
        stimuli = Stimuli(
            dataset=dataset_name(spec, LOADER),
            split=split,
            ids=ids,
            images=file_image_source(files, [str(p) for p in files]),
            labels=np.asarray(labels, dtype=np.int64) if labelled else None,
            label_names=(list(display) if display else class_names) if labelled else None,
            source=provenance(LOADER, root, options, ignored_files=ignored, skipped=[]),
        )
        out[split] = drop_unreadable(stimuli, on_error)
    return out


__all__ = ["load_image_folder"]

"""``idx``, ``mnist``, ``fashion_mnist``: MNIST-style idx files, parsed with numpy.

A directory holds ``{train,t10k}-images-idx3-ubyte[.gz]`` and
``{train,t10k}-labels-idx1-ubyte[.gz]`` (``train-images.idx3-ubyte`` spellings too);
``train`` is the split ``train``, ``t10k`` the split ``test``. A split exists when its images
file does; a labels file without images is ignored (``source["ignored_files"]``), images
without labels give an unlabelled split. The reference kit's ``images/mnist_test/``
therefore loads as ``{"test": ...}`` only.

Options: ``label_names`` (list; ``mnist`` defaults to ``"0"``..``"9"``, ``fashion_mnist`` to
its 10 class names). Ids are ``{split}/{index}``; image names ``t10k-images-idx3-ubyte.gz[17]``.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.data._common import (
    array_image_source,
    check_label_names,
    check_on_error,
    dataset_name,
    provenance,
    resolve_path,
)
from vlprobe.data.stimuli import Stimuli
from vlprobe.errors import DataError

FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(d) for d in range(10)]

_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_PREFIXES = {"train": "train", "t10k": "test"}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (raw or .gz) as a numpy array; DataError naming the file when malformed."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read idx file {str(path)!r}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(
            f"{str(path)!r} is not an idx file (bad magic number {raw[:4].hex() or 'empty'}; "
            "expected 0000 + type byte + number of dimensions)"
        )
    dtype, ndim = np.dtype(_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"idx file {str(path)!r} is truncated (header)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"idx file {str(path)!r}: header says shape {shape} ({expected} bytes of data) but "
            f"the file has {len(raw) - header} bytes of data"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(root: Path, prefix: str, kind: str, ndim: int) -> Path | None:
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            candidate = root / f"{prefix}-{kind}{sep}idx{ndim}-ubyte{ext}"
            if candidate.is_file():
                return candidate
    return None


def _load_idx_dir(
    spec: Any, loader: str, root: Path, label_names: list[str] | None, options: dict[str, Any]
) -> dict[str, Stimuli]:
    check_on_error(spec)
    if not root.is_dir():
        raise DataError(f"{loader}: {str(root)!r} is not a directory of idx files")
    out: dict[str, Stimuli] = {}
    ignored: list[str] = []
    for prefix, split in _PREFIXES.items():
        images_file = _find(root, prefix, "images", 3)
        labels_file = _find(root, prefix, "labels", 1)
        if images_file is None:
            if labels_file is not None:
                ignored.append(labels_file.name)
            continue
        images = read_idx(images_file)
        if images.ndim not in (3, 4) or images.dtype != np.uint8:
            raise DataError(
                f"{images_file}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}"
            )
        if len(images) == 0:
            raise DataError(f"{loader}: {str(images_file)!r} has 0 images")
        labels = None
        if labels_file is not None:
            labels = read_idx(labels_file)
            if labels.ndim != 1:
                raise DataError(f"{labels_file}: expected labels [N], got shape {labels.shape}")
            if len(labels) != len(images):
                raise DataError(
                    f"{labels_file.name} has {len(labels)} labels but {images_file.name} has "
                    f"{len(images)} images (in {root})"
                )
            labels = labels.astype(np.int64)
            check_label_names(labels, label_names, str(labels_file))
        names = [f"{images_file.name}[{i}]" for i in range(len(images))]
        out[split] = Stimuli(
            dataset=dataset_name(spec, loader),
            split=split,
            ids=[f"{split}/{i}" for i in range(len(images))],
            images=array_image_source(images, names),
            labels=labels,
            label_names=list(label_names) if (label_names and labels is not None) else None,
            source=provenance(
                loader,
                root,
                options,
                images_file=str(images_file),
                labels_file=str(labels_file) if labels_file else None,
                skipped=[],
            ),
        )
    if not out:
        raise DataError(
            f"{loader}: no idx images in {str(root)!r} (expected train-images-idx3-ubyte[.gz] "
            "and/or t10k-images-idx3-ubyte[.gz])"
        )
    for stimuli in out.values():
        stimuli.source["ignored_files"] = ignored
    return out


def load_idx(spec: Any) -> dict[str, Stimuli]:
    """Any MNIST-style idx directory (``options.label_names`` optional)."""
    options = dict(spec.options)
    return _load_idx_dir(
        spec, "idx", resolve_path(spec, "idx"), options.get("label_names"), options
    )


def load_mnist(spec: Any) -> dict[str, Stimuli]:
    """MNIST from a directory of idx files (``path``; e.g. ``${reference}/images/mnist_test``)."""
    options = dict(spec.options)
    root = resolve_path(
        spec,
        "mnist",
        hint=": the directory holding the MNIST idx files, e.g. ${reference}/images/mnist_test",
    )
    return _load_idx_dir(spec, "mnist", root, options.get("label_names", MNIST_CLASSES), options)


def load_fashion_mnist(spec: Any) -> dict[str, Stimuli]:
    """Fashion-MNIST; default path /usr/share/datasets/fashion-mnist (Debian's package)."""
    options = dict(spec.options)
    hint = (
        ": install Fashion-MNIST with `apt-get install dataset-fashion-mnist` (files go to "
        f"{FASHION_MNIST_PATH}) or set the dataset's path to a directory of its idx files"
    )
    root = resolve_path(spec, "fashion_mnist", default=FASHION_MNIST_PATH, hint=hint)
    names = options.get("label_names", FASHION_MNIST_CLASSES)
    try:
        return _load_idx_dir(spec, "fashion_mnist", root, names, options)
    except DataError as exc:
        if "no idx images" in str(exc):
            raise DataError(f"{exc}{hint}") from exc
        raise


__all__ = ["load_fashion_mnist", "load_idx", "load_mnist", "read_idx"]

"""Image regions for region-based fusion models (VisualBERT): features + boxes per image.

Two sources, chosen with the fusion model's options:

- **grid cells of a CNN feature map** (the default): a registered image adapter
  (``region_model``, default ``efficientnet_lite0`` with its packaged ImageNet weights) runs
  on the images; its ``region_site`` (default ``vision.head``) feature map ``[B, C, h, w]``
  gives one region per cell in raster order (row by row), feature = the cell's ``C``
  channels, box = the cell's footprint in the part of the image the CNN sees
  (:meth:`input_window`: EfficientNet's centre crop), in coordinates of the original image.
- **a regions file** (``regions: path``), ``.npz`` or ``.safetensors``, holding for every
  image id two arrays: ``"<image_id>/features"`` float ``[R, D]`` and ``"<image_id>/boxes"``
  float ``[R, 4]``. ``R`` may differ between images (a batch is padded, padding masked). ``D``
  is the same for all images. Boxes are ``(x0, y0, x1, y1)`` normalised to the image width and
  height (0..1, origin top-left, ``x0 <= x1``, ``y0 <= y1``). An image's id is
  ``image.info["image_id"]`` where set (str() of it), else the file name of the image
  (``Path(image.filename).name``) when it was opened from a file. Write one with
  :func:`write_regions_file`.

Both return ``features [B, R, D]`` float32, ``mask [B, R]`` long (1 = real region) and
``boxes [B, R, 4]`` float32 (NaN at padding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.errors import ConfigError, DataError
from vlprobe.models._hooks import cached_sha256
from vlprobe.models.base import ModelSpec
from vlprobe.settings import expand_path

DEFAULT_REGION_MODEL = {"adapter": "efficientnet_lite0"}
DEFAULT_REGION_SITE = "vision.head"
_SUFFIXES = ("features", "boxes")


def pad_regions(
    items: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[Any, Any, Any]:
    """``[(features [R_i, D], boxes [R_i, 4]), ...]`` -> padded ``(features [B, R, D] float32,
    mask [B, R] long, boxes [B, R, 4] float32 with NaN padding)``."""
    import torch

    n = max(f.shape[0] for f, _ in items)
    d = items[0][0].shape[1]
    feats = torch.zeros(len(items), n, d, dtype=torch.float32)
    mask = torch.zeros(len(items), n, dtype=torch.long)
    boxes = torch.full((len(items), n, 4), float("nan"), dtype=torch.float32)
    for i, (f, b) in enumerate(items):
        r = f.shape[0]
        feats[i, :r] = torch.as_tensor(np.asarray(f, dtype=np.float32))
        boxes[i, :r] = torch.as_tensor(np.asarray(b, dtype=np.float32))
        mask[i, :r] = 1
    return feats, mask, boxes


# -- grid cells of a CNN ------------------------------------------------------------------
def _region_spec(raw: Any, owner: str) -> ModelSpec:
    """A :class:`ModelSpec` from the ``region_model`` option (an adapter name or a mapping
    with ModelSpec's fields)."""
    if isinstance(raw, str):
        raw = {"adapter": raw}
    if not isinstance(raw, Mapping) or "adapter" not in raw:
        raise ConfigError(
            f"{owner}: options.region_model must be an adapter name or a mapping with an "
            f"'adapter' key (and optionally checkpoint, random_init, seed, options), got {raw!r}"
        )
    known = {f.name for f in fields(ModelSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{owner}: options.region_model has unknown key(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    return ModelSpec(**{**raw, "options": dict(raw.get("options") or {})})


class GridRegions:
    """One region per cell of an image adapter's feature map (see the module docstring)."""

    def __init__(self, spec: ModelSpec, site: str, device: str, owner: str) -> None:
        from vlprobe.models import load_model

        self.owner = owner
        self.site = site
        self.cnn = load_model(spec, device=device)
        if "image" not in self.cnn.modalities:
            raise ConfigError(f"{owner}: region_model {spec.adapter!r} takes no images")
        if not hasattr(self.cnn, "input_window"):
            raise ConfigError(
                f"{owner}: region_model {spec.adapter!r} does not say which part of an image it "
                "sees (no input_window), so its cells have no boxes; use efficientnet_lite0 or "
                "a regions file (options.regions)"
            )
        self.cnn.check_sites([site])
        self._grid: tuple[int, int] | None = None

    def feature_maps(self, images: Sequence[Any]) -> Any:
        """``[B, C, h, w]`` float32 maps of ``images`` at the region site."""
        trace = self.cnn.forward(self.cnn.prepare(images, "image"), [self.site])
        fmap = trace.hidden[self.site]
        if fmap.ndim != 4:
            raise ConfigError(
                f"{self.owner}: region_site {self.site!r} gives shape {tuple(fmap.shape)}, not "
                "a feature map [B, C, h, w]"
            )
        return fmap

    def grid(self) -> tuple[int, int]:
        """``(h, w)`` cells per image (from one forward on a grey image)."""
        if self._grid is None:
            from PIL import Image

            fmap = self.feature_maps([Image.new("RGB", (64, 64), (128, 128, 128))])
            self._grid = (int(fmap.shape[2]), int(fmap.shape[3]))
        return self._grid

    def identity(self) -> dict[str, Any]:
        h, w = self.grid()
        return {"source": "grid", "model": self.cnn.identity(), "site": self.site,
                "grid": [h, w]}

    def __call__(self, images: Sequence[Any]) -> tuple[Any, Any, Any]:
        fmap = self.feature_maps(images)
        h, w = fmap.shape[2:]
        feats = fmap.flatten(2).transpose(1, 2).contiguous()  # [B, h*w, C], raster order
        rows, cols = np.divmod(np.arange(h * w), w)
        items = []
        for i, image in enumerate(images):
            width, height = image.size
            left, top, right, bottom = self.cnn.input_window(width, height)
            cw, ch = (right - left) / w, (bottom - top) / h
            boxes = np.stack([
                (left + cols * cw) / width, (top + rows * ch) / height,
                (left + (cols + 1) * cw) / width, (top + (rows + 1) * ch) / height,
            ], axis=1)
            items.append((feats[i].numpy(), boxes))
        return pad_regions(items)


# -- a regions file -----------------------------------------------------------------------
def image_key(image: Any, index: int, owner: str) -> str:
    """The id a regions file is keyed by (see the module docstring)."""
    key = getattr(image, "info", {}).get("image_id")
    if key is not None:
        return str(key)
    filename = getattr(image, "filename", "") or ""
    if filename:
        return Path(filename).name
    raise DataError(
        f"{owner}: pair item {index}: the regions file is keyed by image id, but this image "
        "has none (set image.info['image_id'], or open the image from a file named like its "
        "key)"
    )


class FileRegions:
    """Regions read from a ``.npz`` / ``.safetensors`` file (see the module docstring)."""

    def __init__(self, path: str, owner: str) -> None:
        self.owner = owner
        self.path = expand_path(path).resolve()
        if not self.path.is_file():
            raise ConfigError(f"{owner}: regions file {str(self.path)!r} does not exist")
        suffix = self.path.suffix
        if suffix == ".npz":
            self._store = np.load(self.path, allow_pickle=False)
            keys = list(self._store.files)
            self._get = self._store.__getitem__
        elif suffix == ".safetensors":
            from safetensors import safe_open

            self._store = safe_open(str(self.path), framework="np")
            keys = list(self._store.keys())
            self._get = self._store.get_tensor
        else:
            raise ConfigError(
                f"{owner}: regions file {str(self.path)!r} must be .npz or .safetensors"
            )
        self.ids = self._index(keys)

    def _index(self, keys: Sequence[str]) -> set[str]:
        ids: dict[str, set[str]] = {}
        for key in keys:
            head, _, tail = key.rpartition("/")
            if not head or tail not in _SUFFIXES:
                raise DataError(
                    f"{self.owner}: regions file {self.path}: key {key!r} is not "
                    "'<image_id>/features' or '<image_id>/boxes'"
                )
            ids.setdefault(head, set()).add(tail)
        for image_id, have in ids.items():
            if have != set(_SUFFIXES):
                missing = (set(_SUFFIXES) - have).pop()
                raise DataError(
                    f"{self.owner}: regions file {self.path}: image {image_id!r} has no "
                    f"'{image_id}/{missing}' array"
                )
        if not ids:
            raise DataError(f"{self.owner}: regions file {self.path} holds no regions")
        return set(ids)

    def identity(self) -> dict[str, Any]:
        return {"source": "file", "file": str(self.path), "sha256": cached_sha256(self.path)}

    def _read(self, image_id: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        where = f"{self.owner}: regions file {self.path}, image {image_id!r} (pair item {index})"
        if image_id not in self.ids:
            sample = ", ".join(sorted(self.ids)[:3])
            raise DataError(f"{where}: no regions for this image (the file has e.g. {sample})")
        feats = np.asarray(self._get(f"{image_id}/features"), dtype=np.float32)
        boxes = np.asarray(self._get(f"{image_id}/boxes"), dtype=np.float32)
        if feats.ndim != 2 or feats.shape[0] == 0:
            raise DataError(f"{where}: features have shape {feats.shape}, expected [R, D], R > 0")
        if boxes.shape != (feats.shape[0], 4):
            raise DataError(
                f"{where}: boxes have shape {boxes.shape}, expected ({feats.shape[0]}, 4)"
            )
        if not (np.isfinite(feats).all() and np.isfinite(boxes).all()):
            raise DataError(f"{where}: features or boxes are not finite")
        tol = 1e-6
        in_range = (boxes >= -tol).all() and (boxes <= 1 + tol).all()
        ordered = (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
        if not (in_range and ordered):
            raise DataError(
                f"{where}: boxes must be (x0, y0, x1, y1) normalised to 0..1 with x0 <= x1 "
                "and y0 <= y1"
            )
        return feats, boxes

    def __call__(self, images: Sequence[Any]) -> tuple[Any, Any, Any]:
        items = []
        for i, image in enumerate(images):
            items.append(self._read(image_key(image, i, self.owner), i))
        dims = {f.shape[1] for f, _ in items}
        if len(dims) > 1:
            raise DataError(
                f"{self.owner}: regions file {self.path}: feature widths differ between "
                f"images ({sorted(dims)}); every image needs the same D"
            )
        return pad_regions(items)


def write_regions_file(
    path: str | Path, regions: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> Path:
    """Write ``{image_id: (features [R, D], boxes [R, 4])}`` in the format above (``.npz`` or
    ``.safetensors`` by the file's suffix)."""
    path = Path(path)
    arrays = {}
    for image_id, (feats, boxes) in regions.items():
        arrays[f"{image_id}/features"] = np.ascontiguousarray(feats, dtype=np.float32)
        arrays[f"{image_id}/boxes"] = np.ascontiguousarray(boxes, dtype=np.float32)
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, str(path))
    elif path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        raise ConfigError(f"regions file {str(path)!r} must end in .npz or .safetensors")
    return path


def region_source(options: Mapping[str, Any], device: str, owner: str) -> Any:
    """:class:`FileRegions` where ``options["regions"]`` is set, else :class:`GridRegions`
    from ``options["region_model"]`` / ``options["region_site"]``."""
    if options.get("regions"):
        if "region_model" in options or "region_site" in options:
            raise ConfigError(
                f"{owner}: options.regions (a file) and options.region_model / region_site "
                "(grid cells of a CNN) exclude each other; set one"
            )
        return FileRegions(str(options["regions"]), owner)
    spec = _region_spec(options.get("region_model", DEFAULT_REGION_MODEL), owner)
    return GridRegions(spec, str(options.get("region_site", DEFAULT_REGION_SITE)), device, owner)

"""Image regions of the region-based fusion models (VisualBERT, LXMERT): features + boxes.

Region-based models read an image as ``R`` region feature vectors ``[R, D]`` with their boxes
``[R, 4]``, originally Faster R-CNN detections. No detector ships with vlprobe, so regions
come from one of two sources, chosen with the model's ``options.regions`` (the same keys for
every region-based adapter):

- ``{source: grid, model: <image adapter>, site: <site>}`` (the default; ``model``
  ``efficientnet_lite0`` with its packaged ImageNet weights, ``site`` ``vision.head``: 1280
  channels, 7 x 7 cells at 224 px): the cells of the image adapter's feature map
  ``[B, C, h, w]`` at ``site`` are the regions, in raster order (cell ``(r, c)`` is region
  ``r * w + c``), feature = the cell's ``C`` channels, box = the cell's footprint in the part
  of the image the adapter sees (its ``input_window``: EfficientNet's centre crop, a
  transformers processor's centre crop, or the whole image), in coordinates of the original
  image (``boxes: image``, the default) or, with ``boxes: window``, normalised to that window
  itself (cell ``(r, c)`` of an ``h x w`` map is ``(c/w, r/h, (c+1)/w, (r+1)/h)`` whatever
  the crop: the boxes ``vlprobe train`` fused models were trained with, see
  :func:`trained_regions`). ``model`` is an adapter name or a mapping with
  :class:`~vlprobe.models.base.ModelSpec`'s fields
  (``adapter``, ``checkpoint``, ``config``, ``random_init``, ``seed``, ``options``, ...).
- ``{source: file, path: <file>}``: precomputed regions (e.g. bottom-up-attention Faster R-CNN
  features) from a regions file.

Boxes are ``(x0, y0, x1, y1)`` normalised to the image's width and height (0..1, origin
top-left, ``x0 <= x1``, ``y0 <= y1``).

The regions file (``.npz`` or ``.safetensors``;
:func:`vlprobe.models.regions_io.write_regions_file` writes one): two
arrays per image, ``"<image_id>/features"`` float ``[R, D]`` and ``"<image_id>/boxes"`` float
``[R, 4]``. ``R`` may differ between images (a batch is padded, padding masked); ``D`` may
not. Each image is read on demand, so a file larger than memory works (``.safetensors`` is
memory-mapped). Detector pipelines often write padded arrays instead (ids ``[N]``, features
``[N, R, D]``, pixel boxes, per-image sizes and region counts): :mod:`vlprobe.models.regions_io`
(``regions_from_padded`` / ``convert_padded_npz``) turns those into this format.

An image's id is ``image.info["image_id"]``: :meth:`vlprobe.data.stimuli.Stimuli.payloads`
sets it to the item's ``image_id`` descriptor, else to the item id. A PIL image opened from a
file without that key falls back to the file name (``Path(image.filename).name``).

A source returns a :class:`RegionBatch`; its :meth:`identity` goes into the model's identity
(it changes the numbers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.errors import ConfigError, DataError
from vlprobe.models._hooks import cached_sha256
from vlprobe.models.base import ModelSpec
from vlprobe.settings import expand_path

DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_SITE = "vision.head"
_SUFFIXES = ("features", "boxes")
_GRID_KEYS = ("source", "model", "site", "boxes")
_BOX_FRAMES = ("image", "window")
_FILE_KEYS = ("source", "path")
_BOX_TOL = 1e-6


@dataclass
class RegionBatch:
    """The regions of a batch of images, padded to the most regions of any image.

    Attributes:
        features: ``[B, R, D]`` float32 (zeros at padding).
        boxes: ``[B, R, 4]`` float32 normalised ``x0, y0, x1, y1`` (zeros at padding: LXMERT
            feeds them to the model, where NaN would spread).
        mask: ``[B, R]`` long, 1 = a real region.
        image_boxes: ``[B, R, 4]`` the same boxes normalised to the ORIGINAL image (what
            ``Trace.extras["boxes"]`` reports); differs from ``boxes`` only for grid regions
            with ``boxes: window`` (None = same as ``boxes``).
    """

    features: Any
    boxes: Any
    mask: Any
    image_boxes: Any = None

    def __post_init__(self) -> None:
        if self.image_boxes is None:
            self.image_boxes = self.boxes


def pad_regions(items: Sequence[tuple[np.ndarray, ...]], where: str) -> RegionBatch:
    """``[(features [R_i, D], boxes [R_i, 4][, image_boxes [R_i, 4]]), ...]`` -> a
    zero-padded :class:`RegionBatch` (``image_boxes`` default to ``boxes``).

    Raises:
        DataError: naming ``where`` when the images' feature widths ``D`` differ.
    """
    import torch

    dims = {int(item[0].shape[1]) for item in items}
    if len(dims) > 1:
        raise DataError(
            f"{where}: feature widths differ between images ({sorted(dims)}); every image "
            "needs the same D"
        )
    n = max(item[0].shape[0] for item in items)
    feats = torch.zeros(len(items), n, dims.pop(), dtype=torch.float32)
    boxes = torch.zeros(len(items), n, 4, dtype=torch.float32)
    image_boxes = torch.zeros(len(items), n, 4, dtype=torch.float32)
    mask = torch.zeros(len(items), n, dtype=torch.long)
    for i, item in enumerate(items):
        f, b = item[0], item[1]
        r = f.shape[0]
        feats[i, :r] = torch.as_tensor(np.asarray(f, dtype=np.float32))
        boxes[i, :r] = torch.as_tensor(np.asarray(b, dtype=np.float32))
        image_boxes[i, :r] = torch.as_tensor(np.asarray(item[-1], dtype=np.float32))
        mask[i, :r] = 1
    return RegionBatch(feats, boxes, mask, image_boxes)


def grid_cell_boxes(w: int, h: int, window: Sequence[float] = (0, 0, 1, 1),
                    size: Sequence[float] = (1, 1)) -> np.ndarray:
    """``[h * w, 4]`` float64 boxes ``(x0, y0, x1, y1)`` of the cells of an ``h x w`` grid
    laid over ``window`` ``(left, top, right, bottom)`` of an image of ``size`` ``(width,
    height)``, normalised by the size; raster order (cell ``i * w + j`` = row i, column j).
    The defaults give the cells in the window's own frame."""
    left, top, right, bottom = (float(v) for v in window)
    width, height = (float(v) for v in size)
    rows, cols = np.divmod(np.arange(h * w), w)
    cw, ch = (right - left) / w, (bottom - top) / h
    return np.stack([(left + cols * cw) / width, (top + rows * ch) / height,
                     (left + (cols + 1) * cw) / width, (top + (rows + 1) * ch) / height],
                    axis=1)


def _check_pil(images: Sequence[Any], owner: str) -> None:
    for i, image in enumerate(images):
        if not (hasattr(image, "size") and hasattr(image, "info")):
            raise DataError(
                f"{owner}: pair item {i}: the image slot holds a {type(image).__name__}, not a "
                "PIL image (a regions file finds an image by image.info['image_id'])"
            )


# -- grid cells of a CNN ------------------------------------------------------------------
def _model_spec(raw: Any, where: str) -> ModelSpec:
    """A :class:`ModelSpec` from ``regions.model`` (an adapter name or a mapping with
    ModelSpec's fields)."""
    if isinstance(raw, str):
        raw = {"adapter": raw}
    if not isinstance(raw, Mapping) or "adapter" not in raw:
        raise ConfigError(
            f"{where}.model must be an adapter name or a mapping with an 'adapter' key (and "
            f"optionally checkpoint, config, random_init, seed, options), got {raw!r}"
        )
    known = {f.name for f in fields(ModelSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{where}.model has unknown key(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(known))}"
        )
    return ModelSpec(**{**raw, "options": dict(raw.get("options") or {})})


class GridRegions:
    """One region per cell of an image adapter's feature map (see the module docstring).

    The image adapter is loaded here (cheap: its weights load on first use), so a model
    without images, without ``input_window`` or without ``site`` is an error at load time.
    """

    def __init__(
        self, spec: ModelSpec, site: str, device: str, owner: str, boxes: str = "image"
    ) -> None:
        from vlprobe.models import load_model

        if boxes not in _BOX_FRAMES:
            raise ConfigError(
                f"{owner}: regions.boxes {boxes!r} is not one of {', '.join(_BOX_FRAMES)}"
            )
        self.owner = owner
        self.site = site
        self.boxes = boxes
        self.cnn = load_model(spec, device=device)
        if "image" not in self.cnn.modalities:
            raise ConfigError(f"{owner}: regions.model {spec.adapter!r} takes no images")
        if not hasattr(self.cnn, "input_window"):
            raise ConfigError(
                f"{owner}: regions.model {spec.adapter!r} does not say which part of an image "
                "it sees (no input_window), so its cells have no boxes; use an image adapter "
                "with one (efficientnet_lite0, hf_resnet) or a regions file"
            )
        self.cnn.check_sites([site])

    def describe(self) -> str:
        return f"{self.cnn.family} {self.site} grid cells"

    def identity(self) -> dict[str, Any]:
        out = {"source": "grid", "model": self.cnn.identity(), "site": self.site}
        if self.boxes != "image":  # the default keeps the identity (store keys) it had
            out["boxes"] = self.boxes
        return out

    def feature_maps(self, images: Sequence[Any]) -> Any:
        """``[B, C, h, w]`` float32 maps of ``images`` at the region site."""
        trace = self.cnn.forward(self.cnn.prepare(list(images), "image"), [self.site])
        fmap = trace.hidden[self.site]
        if fmap.ndim != 4:
            raise ConfigError(
                f"{self.owner}: regions.site {self.site!r} of {self.cnn.family!r} gives shape "
                f"{tuple(fmap.shape)}, not a feature map [B, C, h, w]"
            )
        return fmap

    def __call__(self, images: Sequence[Any]) -> RegionBatch:
        """PIL images -> ``h * w`` regions each (features ``[B, h*w, C]``)."""
        _check_pil(images, self.owner)
        fmap = self.feature_maps(images)
        h, w = fmap.shape[2:]
        feats = fmap.flatten(2).transpose(1, 2).contiguous()  # [B, h*w, C], raster order
        items = []
        for i, image in enumerate(images):
            width, height = image.size
            window = self.cnn.input_window(width, height)
            on_image = grid_cell_boxes(w, h, window, (width, height))  # footprints in the image
            # the boxes the model reads: the image frame, or the window the CNN sees
            boxes = grid_cell_boxes(w, h) if self.boxes == "window" else on_image
            items.append((feats[i].numpy(), boxes, on_image))
        return pad_regions(items, self.describe())


# -- a regions file -----------------------------------------------------------------------
def image_key(image: Any, index: int, owner: str) -> str:
    """The id a regions file knows ``image`` by (see the module docstring)."""
    key = image.info.get("image_id")
    if key is not None:
        return str(key)
    filename = getattr(image, "filename", "") or ""
    if filename:
        return Path(filename).name
    raise DataError(
        f"{owner}: pair item {index}: the regions file is keyed by image id, but this image "
        "has none (load the data as a Stimuli, set image.info['image_id'], or open the image "
        "from a file named like its key)"
    )


def check_regions(feats: Any, boxes: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(features [R, D], boxes [R, 4])`` as float32, validated.

    Raises:
        DataError: naming ``where`` for a wrong shape, a non-finite value, or a box that is
            not normalised ``x0 <= x1``, ``y0 <= y1`` in 0..1.
    """
    feats = np.asarray(feats, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] == 0 or feats.shape[1] == 0:
        raise DataError(f"{where}: features have shape {feats.shape}, expected [R, D], R > 0")
    if boxes.shape != (feats.shape[0], 4):
        raise DataError(f"{where}: boxes have shape {boxes.shape}, expected ({feats.shape[0]}, 4)")
    if not (np.isfinite(feats).all() and np.isfinite(boxes).all()):
        raise DataError(f"{where}: features or boxes are not finite")
    in_range = (boxes >= -_BOX_TOL).all() and (boxes <= 1 + _BOX_TOL).all()
    ordered = (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
    if not (in_range and ordered):
        raise DataError(
            f"{where}: boxes must be (x0, y0, x1, y1) normalised to 0..1 with x0 <= x1 and "
            "y0 <= y1"
        )
    return feats, np.clip(boxes, 0.0, 1.0)


class FileRegions:
    """Regions read from a regions file (see the module docstring), found by image id."""

    def __init__(self, path: str | Path, owner: str) -> None:
        self.owner = owner
        self.path = expand_path(str(path)).resolve()
        if not self.path.is_file():
            raise ConfigError(f"{owner}: regions file {str(self.path)!r} does not exist")
        if self.path.suffix == ".npz":
            try:
                self._store = np.load(self.path, allow_pickle=False)
            except Exception as exc:
                raise DataError(f"{owner}: regions file {self.path} is not a readable .npz: "
                                f"{exc}") from exc
            keys = list(self._store.files)
            self._get = self._store.__getitem__
        elif self.path.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                self._store = safe_open(str(self.path), framework="np")
            except Exception as exc:
                raise DataError(f"{owner}: regions file {self.path} is not a readable "
                                f".safetensors: {exc}") from exc
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
                    "'<image_id>/features' or '<image_id>/boxes' (padded arrays? convert them "
                    "with vlprobe.models.regions_io.convert_padded_npz)"
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

    def describe(self) -> str:
        return f"regions file {self.path}"

    def identity(self) -> dict[str, Any]:
        return {"source": "file", "path": str(self.path), "sha256": cached_sha256(self.path)}

    def read(self, image_id: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(features [R, D], boxes [R, 4])`` of one image (``index``: its pair item)."""
        where = f"{self.owner}: regions file {self.path}, image {image_id!r} (pair item {index})"
        if image_id not in self.ids:
            sample = ", ".join(repr(i) for i in sorted(self.ids)[:3])
            raise DataError(f"{where}: no regions for this image (the file has e.g. {sample})")
        return check_regions(
            self._get(f"{image_id}/features"), self._get(f"{image_id}/boxes"), where
        )

    def __call__(self, images: Sequence[Any]) -> RegionBatch:
        """PIL images (with ``info["image_id"]``) -> their regions, padded."""
        _check_pil(images, self.owner)
        items = [self.read(image_key(image, i, self.owner), i) for i, image in enumerate(images)]
        return pad_regions(items, f"{self.owner}: {self.describe()}")


# -- the option ---------------------------------------------------------------------------
def region_source(options: Any, device: str, owner: str) -> GridRegions | FileRegions:
    """The region source of a model's ``options.regions`` (None: the default grid, see the
    module docstring).

    Raises:
        ConfigError: naming the key for anything but ``{source: grid, model, site}`` or
            ``{source: file, path}``.
    """
    where = f"model {owner!r} options.regions"
    raw = {} if options is None else options
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{where} must be a mapping: {{source: grid, model: <image adapter>, site: "
            f"<site>}} or {{source: file, path: <.npz | .safetensors>}}; got {raw!r}"
        )
    source = raw.get("source", "grid")
    if source == "file":
        unknown = sorted(set(raw) - set(_FILE_KEYS))
        if unknown or not raw.get("path"):
            raise ConfigError(
                f"{where}: a file source takes exactly 'path' (got {', '.join(sorted(raw))})"
            )
        return FileRegions(str(raw["path"]), owner)
    if source != "grid":
        raise ConfigError(f"{where}.source: {source!r} is not one of grid, file")
    unknown = sorted(set(raw) - set(_GRID_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; a grid source takes "
            f"{', '.join(_GRID_KEYS)} (a file source: source: file, path)"
        )
    spec = _model_spec(raw.get("model", DEFAULT_MODEL), where)
    return GridRegions(spec, str(raw.get("site", DEFAULT_SITE)), device, owner,
                       boxes=str(raw.get("boxes", "image")))


def trained_regions(checkpoint: Any) -> dict[str, Any] | None:
    """The ``options.regions`` a ``vlprobe train`` fused checkpoint was trained with, or None
    for any other checkpoint.

    The trainer (:mod:`vlprobe.train.fusion`) feeds the grid cells of its region CNN with the
    boxes of :func:`vlprobe.train.fusion_data.cell_boxes`, normalised to the CNN's input
    window (``boxes: window``), so a checkpoint whose ``fusion.json`` records a grid region
    source must be read with the same boxes; the default frame (the original image) moves
    every box by the centre crop and changes a two-stream model's outputs.
    """
    import json

    if not checkpoint:
        return None
    meta_file = Path(expand_path(str(checkpoint))) / "fusion.json"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{meta_file}: not readable JSON ({exc})") from None
    regions = meta.get("regions")
    if not isinstance(regions, Mapping) or "site" not in regions:
        return None
    model = regions.get("model", DEFAULT_MODEL)
    return {"source": "grid", "model": model, "site": regions["site"], "boxes": "window"}

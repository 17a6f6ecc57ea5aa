"""Image regions for region-based fusion models (LXMERT, VisualBERT): features + boxes.

Region-based models read an image as R region feature vectors ``[R, D]`` with their boxes
``[R, 4]`` (normalised ``x0, y0, x1, y1`` in [0, 1]), originally Faster R-CNN detections. No
detector ships with vlprobe, so regions come from one of two sources:

- ``grid``: the cells of a CNN feature map are the regions. :func:`grid_regions` turns a map
  ``[B, C, h, w]`` into ``h * w`` regions per image (row-major: cell ``(r, c)`` is region
  ``r * w + c``) with ``D = C`` and the cell's box ``(c/w, r/h, (c+1)/w, (r+1)/h)``;
  :class:`GridRegionSource` runs a registered image adapter (default ``efficientnet_lite0``,
  site ``vision.head``: 1280 channels, 7 x 7 cells at 224 px) to get that map.
- ``file``: a user ``.npz`` of precomputed features (e.g. bottom-up-attention Faster R-CNN
  features), read by :func:`read_region_file`; :class:`FileRegionSource` looks items up by id.

The region file (``.npz``, ``N`` images, at most ``R`` regions each):

- ``ids`` ``[N]`` strings: the item ids the regions belong to (unique);
- ``features`` ``[N, R, D]`` floats;
- ``boxes`` ``[N, R, 4]`` floats ``x0, y0, x1, y1``: normalised to [0, 1], or pixels when
  ``image_sizes`` is given;
- ``image_sizes`` ``[N, 2]`` (optional): ``(width, height)`` in pixels; boxes are divided by it;
- ``counts`` ``[N]`` ints (optional): real regions per image (rows past the count are padding);
  default: all ``R``.

A source's :meth:`identity` goes into the model's identity (it changes the numbers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.errors import ConfigError, DataError
from vlprobe.models._hooks import cached_sha256
from vlprobe.models.base import ModelSpec
from vlprobe.settings import expand_path

_BOX_TOL = 1e-4


@dataclass(frozen=True)
class Regions:
    """The regions of one image: ``features [R, D]`` and ``boxes [R, 4]`` (normalised
    ``x0, y0, x1, y1``), float32 numpy arrays."""

    features: np.ndarray
    boxes: np.ndarray


def grid_regions(feature_map: Any) -> tuple[Any, Any]:
    """CNN feature map ``[B, C, h, w]`` -> (features ``[B, h*w, C]``, boxes ``[B, h*w, 4]``).

    Region ``r * w + c`` is cell (row ``r``, column ``c``); its box is
    ``(c/w, r/h, (c+1)/w, (r+1)/h)`` (normalised ``x0, y0, x1, y1``). Torch tensors in and out.
    """
    import torch

    if feature_map.ndim != 4:
        raise ConfigError(
            "grid regions need a CNN feature map [B, C, h, w]; got shape "
            f"{tuple(feature_map.shape)}"
        )
    b, _, h, w = feature_map.shape
    feats = feature_map.flatten(2).transpose(1, 2)  # [B, h*w, C]
    rows = torch.arange(h, dtype=torch.float32).repeat_interleave(w)  # [h*w]
    cols = torch.arange(w, dtype=torch.float32).repeat(h)
    boxes = torch.stack([cols / w, rows / h, (cols + 1) / w, (rows + 1) / h], dim=1)
    return feats, boxes.to(feature_map.device).unsqueeze(0).expand(b, -1, -1).contiguous()


def pad_regions(regions: Sequence[Regions], where: str = "regions") -> tuple[Any, Any, Any]:
    """Per-image regions -> (features ``[B, R, D]``, boxes ``[B, R, 4]``, mask ``[B, R]``)
    float32 torch tensors, zero-padded to the largest ``R`` (mask 1 = real region)."""
    import torch

    dims = {r.features.shape[1] for r in regions}
    if len(dims) > 1:
        raise DataError(f"{where}: images have region features of different widths {sorted(dims)}")
    r_max = max(len(r.features) for r in regions)
    d = dims.pop()
    feats = torch.zeros(len(regions), r_max, d)
    boxes = torch.zeros(len(regions), r_max, 4)
    mask = torch.zeros(len(regions), r_max, dtype=torch.long)
    for i, reg in enumerate(regions):
        n = len(reg.features)
        feats[i, :n] = torch.from_numpy(reg.features)
        boxes[i, :n] = torch.from_numpy(reg.boxes)
        mask[i, :n] = 1
    return feats, boxes, mask


def read_region_file(path: str | Path) -> dict[str, Regions]:
    """Read a region ``.npz`` (format in the module docstring) -> ``{item id: Regions}``.

    Raises:
        DataError: naming the file, the field and the image for anything malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"region file {str(path)!r} does not exist")
    try:
        data = dict(np.load(path, allow_pickle=False))
    except Exception as exc:
        raise DataError(f"region file {str(path)!r} is not a readable .npz: {exc}") from exc
    for key in ("ids", "features", "boxes"):
        if key not in data:
            raise DataError(f"region file {str(path)!r} has no {key!r} array (it has "
                            f"{', '.join(sorted(data)) or 'none'})")
    ids = [str(x) for x in data["ids"].reshape(-1)]
    feats = np.asarray(data["features"], dtype=np.float32)
    boxes = np.asarray(data["boxes"], dtype=np.float32)
    n = len(ids)
    if feats.ndim != 3 or feats.shape[0] != n:
        raise DataError(f"region file {path}: 'features' must be [N={n}, R, D]; got {feats.shape}")
    if boxes.shape != (*feats.shape[:2], 4):
        raise DataError(
            f"region file {path}: 'boxes' must be [N, R, 4] = {(*feats.shape[:2], 4)}; "
            f"got {boxes.shape}"
        )
    if len(set(ids)) != n:
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"region file {path}: id {dup!r} appears more than once in 'ids'")
    counts = np.asarray(data.get("counts", np.full(n, feats.shape[1])), dtype=np.int64)
    if counts.shape != (n,) or (counts < 1).any() or (counts > feats.shape[1]).any():
        raise DataError(
            f"region file {path}: 'counts' must be [N={n}] ints in 1..{feats.shape[1]}"
        )
    if "image_sizes" in data:
        sizes = np.asarray(data["image_sizes"], dtype=np.float32)
        if sizes.shape != (n, 2) or (sizes <= 0).any():
            raise DataError(f"region file {path}: 'image_sizes' must be [N={n}, 2] positive "
                            "(width, height)")
        boxes = boxes / np.concatenate([sizes, sizes], axis=1)[:, None, :]
    out: dict[str, Regions] = {}
    for i, item in enumerate(ids):
        k = int(counts[i])
        f, b = feats[i, :k], boxes[i, :k]
        where = f"region file {path}: image {i} (id {item!r})"
        if not np.isfinite(f).all() or not np.isfinite(b).all():
            raise DataError(f"{where} has non-finite features or boxes")
        if (b < -_BOX_TOL).any() or (b > 1 + _BOX_TOL).any():
            raise DataError(f"{where}: boxes must be normalised to [0, 1] (give 'image_sizes' "
                            "for pixel boxes)")
        if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
            raise DataError(f"{where}: boxes must be x0, y0, x1, y1 with x0 <= x1 and y0 <= y1")
        out[item] = Regions(np.ascontiguousarray(f), np.ascontiguousarray(b.clip(0.0, 1.0)))
    return out


# -- sources ------------------------------------------------------------------------------
class GridRegionSource:
    """Regions = the cells of a registered image adapter's CNN feature map (one site).

    Args:
        spec: the image model (e.g. ``ModelSpec("efficientnet_lite0")``); loaded lazily.
        site: its site giving a ``[B, C, h, w]`` map (e.g. ``vision.head``).
        device: where the image model runs.
    """

    kind = "grid"

    def __init__(self, spec: ModelSpec, site: str, device: str = "cpu") -> None:
        self.spec = spec
        self.site = site
        self.device = device
        self._adapter: Any = None

    @property
    def adapter(self) -> Any:
        if self._adapter is None:
            from vlprobe.models import load_model

            adapter = load_model(self.spec, device=self.device)
            if "image" not in adapter.modalities:
                raise ConfigError(f"region source: model {self.spec.adapter!r} has no image tower")
            adapter.check_sites([self.site])
            self._adapter = adapter
        return self._adapter

    def __call__(self, images: Sequence[Any]) -> tuple[Any, Any, Any]:
        """PIL images -> (features ``[B, h*w, C]``, boxes ``[B, h*w, 4]``, mask ``[B, h*w]``)."""
        import torch

        for i, im in enumerate(images):
            if not hasattr(im, "convert"):
                raise DataError(f"pair item {i}: the grid region source needs a PIL image, "
                                f"got {type(im).__name__}")
        a = self.adapter
        fmap = a.forward(a.prepare(list(images), "image"), [self.site]).hidden[self.site]
        if fmap.ndim != 4:
            raise ConfigError(
                f"region source: site {self.site!r} of {self.spec.adapter!r} gives shape "
                f"{tuple(fmap.shape)}, not a CNN feature map [B, C, h, w]"
            )
        feats, boxes = grid_regions(fmap)
        return feats, boxes, torch.ones(feats.shape[:2], dtype=torch.long)

    def identity(self) -> dict[str, Any]:
        return {"source": "grid", "site": self.site, "model": self.adapter.identity()}


class FileRegionSource:
    """Regions read from a region file (:func:`read_region_file`), looked up by item id."""

    kind = "file"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self._table: dict[str, Regions] | None = None

    @property
    def table(self) -> dict[str, Regions]:
        if self._table is None:
            self._table = read_region_file(self.path)
        return self._table

    def __call__(self, ids: Sequence[Any]) -> tuple[Any, Any, Any]:
        """Item ids -> (features ``[B, R, D]``, boxes ``[B, R, 4]``, mask ``[B, R]``)."""
        found = []
        for i, item in enumerate(ids):
            if not isinstance(item, str):
                raise DataError(
                    f"pair item {i}: the file region source takes item ids (str) in the image "
                    f"slot of a pair, got {type(item).__name__}"
                )
            if item not in self.table:
                raise DataError(f"pair item {i}: id {item!r} is not in region file {self.path}")
            found.append(self.table[item])
        return pad_regions(found, where=f"region file {self.path}")

    def identity(self) -> dict[str, Any]:
        return {"source": "file", "path": str(self.path), "sha256": cached_sha256(self.path)}


_GRID_KEYS = ("source", "adapter", "site", "checkpoint", "config", "random_init", "seed",
              "options")


def region_source(options: Mapping[str, Any] | None, device: str = "cpu", model: str = "model"):
    """The region source described by a model's ``options.regions`` (None = the default
    grid of ``efficientnet_lite0`` ``vision.head``).

    ``{source: grid, adapter: <image adapter>, site: <4-D site>, checkpoint / config /
    random_init / seed / options: <its spec>}`` or ``{source: file, path: <.npz>}``.
    """
    opts = dict(options or {})
    source = opts.get("source", "grid")
    where = f"model {model!r} options.regions"
    if source == "file":
        unknown = set(opts) - {"source", "path"}
        if unknown or not opts.get("path"):
            raise ConfigError(f"{where}: a file source takes exactly 'path' (got {sorted(opts)})")
        path = expand_path(str(opts["path"]))
        if not path.is_file():
            raise ConfigError(f"{where}.path: region file {str(path)!r} does not exist")
        return FileRegionSource(path)
    if source != "grid":
        raise ConfigError(f"{where}.source: {source!r} is not one of grid, file")
    unknown = sorted(set(opts) - set(_GRID_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; a grid source takes "
                          f"{', '.join(_GRID_KEYS)}")
    spec = ModelSpec(
        adapter=str(opts.get("adapter", "efficientnet_lite0")),
        checkpoint=opts.get("checkpoint"),
        config=opts.get("config"),
        random_init=bool(opts.get("random_init", False)),
        seed=int(opts.get("seed", 0)),
        options=dict(opts.get("options") or {}),
    )
    return GridRegionSource(spec, str(opts.get("site", "vision.head")), device)

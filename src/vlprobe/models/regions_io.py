"""Writing regions files (the format :mod:`vlprobe.models.regions` reads): from per-image
arrays, or converted from the padded layout other pipelines save (``[N, R, D]`` features,
pixel boxes, per-image sizes and region counts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.errors import ConfigError, DataError
from vlprobe.models.regions import check_regions


def write_regions_file(
    path: str | Path, regions: Mapping[str, tuple[Any, Any]]
) -> Path:
    """Write ``{image_id: (features [R, D], boxes [R, 4])}`` as a regions file (``.npz`` or
    ``.safetensors`` by the suffix of ``path``); every entry is validated first.

    Raises:
        ConfigError: another suffix. DataError: a malformed entry (named).
    """
    path = Path(path)
    if path.suffix not in (".npz", ".safetensors"):
        raise ConfigError(f"regions file {str(path)!r} must end in .npz or .safetensors")
    if not regions:
        raise DataError(f"regions file {str(path)!r}: no regions to write")
    arrays = {}
    for image_id, (feats, boxes) in regions.items():
        f, b = check_regions(feats, boxes, f"regions for image {image_id!r}")
        arrays[f"{image_id}/features"] = np.ascontiguousarray(f)
        arrays[f"{image_id}/boxes"] = np.ascontiguousarray(b)
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, str(path))
    else:
        np.savez(path, **arrays)
    return path


def regions_from_padded(
    ids: Sequence[Any], features: Any, boxes: Any, counts: Any = None, image_sizes: Any = None,
    where: str = "padded regions",
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Padded per-image arrays -> ``{image_id: (features [R_i, D], boxes [R_i, 4])}`` for
    :func:`write_regions_file`.

    Args:
        ids: ``[N]`` unique image ids.
        features: ``[N, R, D]``.
        boxes: ``[N, R, 4]`` ``x0, y0, x1, y1``: normalised, or pixels with ``image_sizes``.
        counts: ``[N]`` real regions per image (rows past the count are padding); default
            all ``R``.
        image_sizes: ``[N, 2]`` ``(width, height)`` in pixels; boxes are divided by it.

    Raises:
        DataError: naming ``where`` and the field (or image) that is malformed.
    """
    ids = [str(x) for x in np.asarray(ids).reshape(-1)]
    feats = np.asarray(features, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32)
    n = len(ids)
    if feats.ndim != 3 or feats.shape[0] != n:
        raise DataError(f"{where}: 'features' must be [N={n}, R, D]; got {feats.shape}")
    if boxes.shape != (*feats.shape[:2], 4):
        raise DataError(
            f"{where}: 'boxes' must be [N, R, 4] = {(*feats.shape[:2], 4)}; got {boxes.shape}"
        )
    if len(set(ids)) != n:
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{where}: id {dup!r} appears more than once in 'ids'")
    r_max = feats.shape[1]
    counts = np.full(n, r_max) if counts is None else np.asarray(counts)
    if counts.shape != (n,) or (counts < 1).any() or (counts > r_max).any():
        raise DataError(f"{where}: 'counts' must be [N={n}] ints in 1..{r_max}")
    if image_sizes is not None:
        sizes = np.asarray(image_sizes, dtype=np.float32)
        if sizes.shape != (n, 2) or (sizes <= 0).any():
            raise DataError(f"{where}: 'image_sizes' must be [N={n}, 2] positive (width, height)")
        boxes = boxes / np.concatenate([sizes, sizes], axis=1)[:, None, :]
    out = {}
    for i, image_id in enumerate(ids):
        k = int(counts[i])
        out[image_id] = check_regions(feats[i, :k], boxes[i, :k],
                                      f"{where}: image {i} (id {image_id!r})")
    return out


def convert_padded_npz(src: str | Path, dst: str | Path) -> Path:
    """Convert an ``.npz`` of padded arrays (``ids``, ``features``, ``boxes``, optional
    ``counts`` and ``image_sizes``: :func:`regions_from_padded`) into a regions file ``dst``.

    Raises:
        DataError: an unreadable file or a missing / malformed array (named).
    """
    src = Path(src)
    try:
        data = dict(np.load(src, allow_pickle=False))
    except Exception as exc:
        raise DataError(f"{str(src)!r} is not a readable .npz: {exc}") from exc
    for key in ("ids", "features", "boxes"):
        if key not in data:
            raise DataError(f"{src}: no {key!r} array (it has {', '.join(sorted(data)) or 'none'})")
    regions = regions_from_padded(data["ids"], data["features"], data["boxes"],
                                  data.get("counts"), data.get("image_sizes"), where=str(src))
    return write_regions_file(dst, regions)

"""``hf_hub``: a dataset through ``datasets.load_dataset`` (the optional ``vlprobe[hub]`` extra).

``path`` is the hub id (``"cifar10"``, ``"user/name"``) or a builder name such as
``"parquet"`` with ``options.data_files``. Options: ``name`` (configuration), ``split``
(one split; default all), ``revision``, ``data_files``, ``image_column`` (default: the first
``Image`` feature), ``label_column`` (default ``"label"`` when present; ``ClassLabel`` names
become label_names, string labels are indexed in sorted order), ``text_column`` (default:
``text``/``sentence``/``caption`` when present).

Without the ``datasets`` package, or when the dataset cannot be loaded (offline, unknown id),
the error is a DataError saying what to do and naming the dataset id. Ids are ``{split}/{row}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlprobe.data._common import (
    bytes_image_source,
    check_on_error,
    dataset_name,
    drop_unreadable,
    encode_labels,
    provenance,
)
from vlprobe.data.splits import canonical_split
from vlprobe.data.stimuli import Stimuli
from vlprobe.errors import DataError

LOADER = "hf_hub"
_TEXT_COLUMNS = ("text", "sentence", "caption")


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            "the hf_hub loader needs the Hugging Face datasets package: pip install 'vlprobe[hub]'"
        ) from exc
    return datasets


def _image_bytes(value: Any, where: str) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return value["bytes"]
        if value.get("path"):
            try:
                with open(value["path"], "rb") as handle:
                    return handle.read()
            except OSError as exc:
                raise DataError(
                    f"{where}: cannot read image file {value['path']!r}: {exc}"
                ) from exc
    raise DataError(f"{where}: unexpected image value of type {type(value).__name__}")


def _convert(datasets: Any, ds: Any, split: str, spec: Any, hub_id: str) -> Stimuli:
    options = dict(spec.options)
    features = ds.features
    image_column = options.get("image_column") or next(
        (c for c, f in features.items() if isinstance(f, datasets.Image)), None
    )
    label_column = options.get("label_column", "label" if "label" in features else None)
    text_column = options.get("text_column") or next(
        (c for c in _TEXT_COLUMNS if c in features), None
    )
    for option, column in (
        ("image_column", image_column),
        ("label_column", label_column),
        ("text_column", text_column),
    ):
        if column is not None and column not in features:
            raise DataError(
                f"hub dataset {hub_id!r} split {split!r} has no column {column!r} "
                f"(options.{option}); columns: {list(features)}"
            )
    if image_column is None and text_column is None:
        raise DataError(
            f"hub dataset {hub_id!r}: no image or text column found in {list(features)}; "
            "set options.image_column or options.text_column"
        )
    n = len(ds)
    names = [f"{hub_id}[{split}][row {i}]" for i in range(n)]
    images = None
    if image_column is not None:
        raw = ds.cast_column(image_column, datasets.Image(decode=False))[image_column]
        blobs = [_image_bytes(v, names[i]) for i, v in enumerate(raw)]
        bad = [names[i] for i, b in enumerate(blobs) if b is None]
        if bad:
            raise DataError(f"{bad[0]}: image is missing ({len(bad)} rows without an image)")
        images = bytes_image_source(blobs, names)  # type: ignore[arg-type]
    labels = label_names = None
    if label_column is not None:
        feature = features[label_column]
        values = ds[label_column]
        if isinstance(feature, datasets.ClassLabel):
            labels, label_names = np.asarray(values, dtype=np.int64), list(feature.names)
        elif all(isinstance(v, str) for v in values):
            labels, label_names = encode_labels(values)
        else:
            labels = np.asarray(values, dtype=np.int64)
    texts = [str(t) for t in ds[text_column]] if text_column is not None else None
    stimuli = Stimuli(
        dataset=dataset_name(spec, LOADER),
        split=split,
        ids=[f"{split}/{i}" for i in range(n)],
        images=images,
        texts=texts,
        labels=labels,
        label_names=label_names,
        source=provenance(LOADER, None, options, hub_id=hub_id, skipped=[]),
    )
    return drop_unreadable(stimuli, check_on_error(spec))


def load_hub(spec: Any) -> dict[str, Stimuli]:
    """Load a Hugging Face datasets dataset (see the module docstring)."""
    options = dict(spec.options)
    hub_id = spec.path or options.get("path")
    if not hub_id:
        raise DataError("hf_hub needs a path: the hub dataset id, e.g. 'cifar10'")
    check_on_error(spec)
    datasets = _import_datasets()
    kwargs = {k: options[k] for k in ("name", "split", "revision", "data_files") if k in options}
    what = hub_id + (f" (config {options['name']!r})" if options.get("name") else "")
    try:
        loaded = datasets.load_dataset(hub_id, **kwargs)
    except Exception as exc:  # offline, unknown id, bad config: many exception types
        raise DataError(
            f"cannot load hub dataset {what!r}: {type(exc).__name__}: {exc}. Check the id; "
            "offline, it must already be in the Hugging Face cache (HF_DATASETS_OFFLINE=1), "
            "or use a local loader (hf_parquet, image_folder)"
        ) from exc
    if isinstance(loaded, datasets.Dataset):
        parts = {str(kwargs.get("split", "train")): loaded}
    else:
        parts = dict(loaded)
    if not parts:
        raise DataError(f"hub dataset {what!r} has no splits")
    return {
        canonical_split(s): _convert(datasets, ds, canonical_split(s), spec, hub_id)
        for s, ds in parts.items()
    }


__all__ = ["load_hub"]

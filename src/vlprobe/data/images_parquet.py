"""``hf_parquet``: images (and/or texts) in the Hugging Face parquet layout.

Layout: ``image`` = ``struct<bytes: binary, path: string>`` (or plain binary), ``label`` int64
(or strings), optional caption column. ``path`` is one ``.parquet`` file (its split is
``options.split``, else the file's stem, e.g. ``sample``) or a directory of ``{split}.parquet``
files (also ``{split}-00000-of-00002.parquet`` shards and a ``data/`` subdirectory).

Options:
    image_column: default ``"image"`` when present (none = a text-only dataset).
    label_column: default ``"label"`` when present; ``null`` = unlabelled.
    text_column: optional captions / sentences.
    descriptor_columns: other columns to keep as per-item descriptors (e.g. ``[wnid]``).
    label_names: list of class names; or label_names_file (JSON list, JSON object with
        label_names_key or a ``...classes`` key, or one name per line; relative paths are tried
        beside the parquet file too). Default: the schema metadata ``label_names`` (JSON list),
        the Hugging Face ``ClassLabel`` names in the schema metadata, ``label_names.json``
        beside the file, or, for string labels, the sorted label strings.
    split: the split name of a single file, or the one split to load from a directory.

Images stay encoded in memory and decode lazily; their digests are sha1 of the bytes and their
names ``train.parquet[row 17]``. Ids are ``{split}/{row}``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.data._common import (
    bytes_image_source,
    check_label_names,
    check_on_error,
    dataset_name,
    drop_unreadable,
    encode_labels,
    provenance,
    read_label_names_file,
    resolve_path,
)
from vlprobe.data.splits import canonical_split
from vlprobe.data.stimuli import Stimuli
from vlprobe.errors import DataError
from vlprobe.settings import expand_path

LOADER = "hf_parquet"
_SHARD = re.compile(r"^(?P<split>.+?)(?:-\d+-of-\d+)?$")
_UNSET = object()


def _parquet_files(path: Path, split: str | None) -> dict[str, list[Path]]:
    if path.is_file():
        return {split or canonical_split(path.stem): [path]}
    folder = path
    files = sorted(folder.glob("*.parquet"))
    if not files and (folder / "data").is_dir():
        folder = folder / "data"
        files = sorted(folder.glob("*.parquet"))
    if not files:
        raise DataError(f"{LOADER}: no .parquet files in directory {str(path)!r}")
    groups: dict[str, list[Path]] = {}
    for f in files:
        match = _SHARD.match(f.stem)
        name = canonical_split(match.group("split") if match else f.stem)
        groups.setdefault(name, []).append(f)
    if split is not None:
        if split not in groups and canonical_split(split) not in groups:
            raise DataError(
                f"{LOADER}: no split {split!r} in {str(path)!r} (found {sorted(groups)})"
            )
        key = split if split in groups else canonical_split(split)
        return {key: groups[key]}
    return groups


def _open(file: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(file)
    except Exception as exc:  # ArrowInvalid, OSError...
        raise DataError(f"cannot read parquet file {str(file)!r}: {exc}") from exc


def _names_from_metadata(
    metadata: dict[bytes, bytes] | None, label_column: str
) -> list[str] | None:
    if not metadata:
        return None
    if b"label_names" in metadata:
        names = json.loads(metadata[b"label_names"])
        if isinstance(names, list):
            return [str(n) for n in names]
    if b"huggingface" in metadata:
        try:
            info = json.loads(metadata[b"huggingface"])
            feature = info["info"]["features"][label_column]
            if "names" in feature:
                return [str(n) for n in feature["names"]]
        except (KeyError, TypeError, ValueError):
            return None
    return None


def _label_names_option(options: dict[str, Any], near: Path) -> tuple[list[str] | None, str]:
    names = options.get("label_names")
    if names is not None:
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{LOADER}: options.label_names must be a list of strings")
        return list(names), "options.label_names"
    file = options.get("label_names_file")
    if file is None:
        return None, ""
    path = expand_path(str(file))
    if not path.is_absolute() and not path.exists():
        beside = (near if near.is_dir() else near.parent) / path
        path = beside if beside.exists() else path
    return read_label_names_file(path, options.get("label_names_key")), str(path)


def _column(table: Any, name: str) -> Any:
    return table.column(name).combine_chunks()


def _image_bytes(column: Any, file: Path, image_column: str) -> list[bytes | None]:
    import pyarrow as pa

    if pa.types.is_struct(column.type):
        if column.type.get_field_index("bytes") < 0:
            raise DataError(
                f"{file.name}: image column {image_column!r} is a struct without a 'bytes' field"
            )
        column = column.field("bytes")
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        raise DataError(
            f"{file.name}: image column {image_column!r} has type {column.type}; expected "
            "struct<bytes, path> or binary"
        )
    return column.to_pylist()


def _read_file(file: Path, options: dict[str, Any]) -> tuple[dict[str, Any], int, list[str] | None]:
    """Columns of one parquet file: images (bytes), labels (ints or strings), texts, descriptors."""
    pf = _open(file)
    schema = pf.schema_arrow
    columns = schema.names

    def pick(option: str, default: str) -> str | None:
        value = options.get(option, _UNSET)
        if value is _UNSET:
            return default if default in columns else None
        if value is not None and value not in columns:
            raise DataError(
                f"{file.name}: no column {value!r} (options.{option}); columns: {columns}"
            )
        return value

    image_column = pick("image_column", "image")
    label_column = pick("label_column", "label")
    text_column = pick("text_column", "\0none")
    descriptor_columns = list(options.get("descriptor_columns") or [])
    for name in descriptor_columns:
        if name not in columns:
            raise DataError(f"{file.name}: no descriptor column {name!r}; columns: {columns}")
    if image_column is None and text_column is None:
        raise DataError(
            f"{file.name}: neither an image column nor a text column (columns: {columns}); "
            "set options.image_column or options.text_column"
        )
    wanted = [c for c in (image_column, label_column, text_column) if c] + descriptor_columns
    try:
        table = pf.read(columns=list(dict.fromkeys(wanted)))
    except Exception as exc:
        raise DataError(f"cannot read parquet file {str(file)!r}: {exc}") from exc
    out: dict[str, Any] = {"descriptors": {}}
    if image_column:
        out["images"] = _image_bytes(_column(table, image_column), file, image_column)
    if label_column:
        col = _column(table, label_column)
        if col.null_count:
            row = col.is_null().to_pylist().index(True)
            raise DataError(f"{file.name}[row {row}]: label is null")
        values = col.to_pylist()
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            out["labels"] = np.asarray(values, dtype=np.int64)
        else:
            out["labels"] = [str(v) for v in values]
    if text_column:
        texts = _column(table, text_column).to_pylist()
        if None in texts:
            raise DataError(f"{file.name}[row {texts.index(None)}]: text is null")
        out["texts"] = [str(t) for t in texts]
    for name in descriptor_columns:
        out["descriptors"][name] = _column(table, name).to_pylist()
    meta_names = _names_from_metadata(schema.metadata, label_column) if label_column else None
    return out, table.num_rows, meta_names


def _load_split(
    split: str, files: list[Path], spec: Any, options: dict[str, Any], root: Path
) -> Stimuli:
    on_error = check_on_error(spec)
    images: list[bytes] = []
    names: list[str] = []
    texts: list[str] = []
    label_values: list[Any] = []
    descriptors: dict[str, list[Any]] = {}
    keep_rows: list[int] = []
    skipped: list[str] = []
    label_names, names_from = _label_names_option(options, root)
    has_images = has_texts = has_labels = False
    row0 = 0
    for file in files:
        data, n_rows, meta_names = _read_file(file, options)
        if n_rows == 0:
            continue
        has_images, has_texts = "images" in data, "texts" in data
        has_labels = "labels" in data
        if label_names is None and meta_names is not None:
            label_names, names_from = meta_names, f"{file.name} schema metadata"
        if label_names is None and has_labels and isinstance(data["labels"], np.ndarray):
            beside = file.parent / "label_names.json"
            if beside.is_file():
                label_names, names_from = read_label_names_file(beside), str(beside)
        for i in range(n_rows):
            name = f"{file.name}[row {i}]"
            if has_images and data["images"][i] is None:
                if on_error == "skip":
                    skipped.append(name)
                    continue
                raise DataError(f"{name}: image is null")
            keep_rows.append(row0 + i)
            names.append(name)
            if has_images:
                images.append(data["images"][i])
            if has_texts:
                texts.append(data["texts"][i])
            if has_labels:
                label_values.append(data["labels"][i])
            for key, values in data["descriptors"].items():
                descriptors.setdefault(key, []).append(values[i])
        row0 += n_rows
    where = ", ".join(f.name for f in files)
    if row0 == 0:
        raise DataError(f"{LOADER}: {where} has no rows")
    if not keep_rows:
        raise DataError(f"{LOADER}: every image in {where} is null")
    labels = None
    if has_labels:
        n_str = sum(isinstance(v, str) for v in label_values)
        if 0 < n_str < len(label_values):
            raise DataError(f"{LOADER}: {where} mixes integer and string labels")
        if n_str:
            unknown = set(label_values) - set(label_names or label_values)
            if unknown:
                raise DataError(f"{where}: labels {sorted(unknown)[:5]} are not in label_names")
            labels, label_names = encode_labels(label_values, label_names)
        else:
            labels = np.asarray(label_values, dtype=np.int64)
            check_label_names(labels, label_names, f"{where} (label_names from {names_from})")
    elif label_names is not None and options.get("label_names") is not None:
        raise DataError(f"{LOADER}: {where} has no label column but options.label_names is set")
    stimuli = Stimuli(
        dataset=dataset_name(spec, LOADER),
        split=split,
        ids=[f"{split}/{r}" for r in keep_rows],
        images=bytes_image_source(images, names) if has_images else None,
        texts=texts if has_texts else None,
        labels=labels,
        label_names=label_names if has_labels else None,
        descriptors=descriptors,
        source=provenance(
            LOADER,
            files[0] if len(files) == 1 else root,
            options,
            files=[str(f) for f in files],
            skipped=skipped,
        ),
    )
    return drop_unreadable(stimuli, on_error)


def load_parquet(spec: Any) -> dict[str, Stimuli]:
    """Load every split of a Hugging Face-layout parquet dataset (see the module docstring)."""
    options = dict(spec.options)
    root = resolve_path(spec, LOADER)
    groups = _parquet_files(root, options.get("split"))
    return {
        split: _load_split(split, files, spec, options, root) for split, files in groups.items()
    }


__all__ = ["load_parquet"]

"""Helpers shared by the dataset loaders (paths, lazy images, labels, bad-item skipping)."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.data.stimuli import ImageSource, Stimuli
from vlprobe.errors import DataError
from vlprobe.fileio import file_digest
from vlprobe.settings import expand_path

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
ON_ERROR = ("raise", "skip")


def dataset_name(spec: Any, loader: str) -> str:
    """The Stimuli.dataset of a load: the spec's name, else the loader's."""
    return spec.name or loader


def check_on_error(spec: Any) -> str:
    """``spec.on_error`` validated (``"raise"`` or ``"skip"``)."""
    value = getattr(spec, "on_error", "raise") or "raise"
    if value not in ON_ERROR:
        raise DataError(f"on_error must be one of {ON_ERROR}, got {value!r}")
    return value


def resolve_path(spec: Any, loader: str, default: str | Path | None = None, hint: str = "") -> Path:
    """The spec's path (or ``options.path``, or ``default``), expanded; it must exist."""
    raw = spec.path or spec.options.get("path") or default
    if raw is None:
        raise DataError(f"loader {loader!r} needs a path (dataset {spec.name or loader!r}){hint}")
    path = expand_path(str(raw))
    if not path.exists():
        raise DataError(f"{loader}: path {str(path)!r} does not exist{hint}")
    return path


def provenance(loader: str, path: Path | str | None, options: dict[str, Any], **extra: Any) -> dict:
    """Stimuli.source: loader, path and options (plus ``extra``)."""
    source: dict[str, Any] = {"loader": loader}
    if path is not None:
        source["path"] = str(path)
    source.update({k: v for k, v in options.items() if k != "path"})
    source.update(extra)
    return source


# --- lazy images -----------------------------------------------------------------------------


def _open_bytes(blob: bytes) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(blob))
    image.load()
    return image


def _open_file(path: str) -> Any:
    from PIL import Image

    with open(path, "rb") as handle:
        image = Image.open(handle)
        image.load()
    return image


def _from_array(array: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(array))


def bytes_image_source(blobs: Sequence[bytes], names: Sequence[str]) -> ImageSource:
    """Images decoded lazily from in-memory encoded bytes; digests = sha1 of the bytes."""
    return ImageSource(
        [functools.partial(_open_bytes, b) for b in blobs],
        names,
        [hashlib.sha1(b).hexdigest() for b in blobs],
    )


#: (path, size, mtime_ns, ctime_ns, inode) -> sha1 of the file's bytes, for this process.
#: ctime and inode are in the key because mtime can be set back (``os.utime``, ``cp -p``,
#: ``rsync -t``, ``tar`` extraction) but ctime cannot, and a replaced file has a new inode.
_FILE_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}
_FILE_DIGESTS_LOCK = threading.Lock()


def file_content_digest(path: Path | str) -> str:
    """sha1 of a file's bytes, memoised per (path, size, mtime, ctime, inode) in this
    process so that loading the same folder again does not re-read unchanged files."""
    resolved = os.path.abspath(path)
    st = os.stat(resolved)
    memo_key = (resolved, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    with _FILE_DIGESTS_LOCK:
        digest = _FILE_DIGESTS.get(memo_key)
    if digest is None:
        digest = file_digest(resolved, "sha1")
        with _FILE_DIGESTS_LOCK:
            _FILE_DIGESTS[memo_key] = digest
    return digest


def file_image_source(
    paths: Sequence[Path | str], names: Sequence[str] | None = None
) -> ImageSource:
    """Images read lazily from files.

    Digests (part of every cache key through the stimuli fingerprint) are sha1 of each
    file's bytes, so an edited image changes the key even when its size and mtime are kept;
    :func:`file_content_digest` memoises them within a process. Files are hashed by a few
    threads (hashlib and file reads release the GIL).
    """
    paths = list(paths)
    if len(paths) > 32:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            digests = list(pool.map(file_content_digest, paths))
    else:
        digests = [file_content_digest(p) for p in paths]
    return ImageSource(
        [functools.partial(_open_file, str(p)) for p in paths],
        list(names) if names is not None else [str(p) for p in paths],
        digests,
        files=[str(p) for p in paths],
    )


def array_image_source(arrays: np.ndarray, names: Sequence[str]) -> ImageSource:
    """Images made lazily from uint8 arrays ``[N, H, W]`` or ``[N, H, W, C]``."""
    return ImageSource(
        [functools.partial(_from_array, a) for a in arrays],
        names,
        [hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest() for a in arrays],
    )


def drop_unreadable(stimuli: Stimuli, on_error: str) -> Stimuli:
    """With ``on_error="skip"``, decode every image now and drop the unreadable ones.

    The dropped items' names are listed in ``source["skipped"]`` (a counted skip). With
    ``"raise"`` nothing is decoded here (images stay lazy; a bad one raises when used).
    """
    if on_error != "skip" or stimuli.images is None:
        return stimuli
    keep, skipped = [], []
    for i in range(len(stimuli)):
        try:
            stimuli.images[i]
        except DataError:
            skipped.append(stimuli.images.names[i])
        else:
            keep.append(i)
    if not keep:
        raise DataError(
            f"dataset {stimuli.dataset!r} split {stimuli.split!r}: all {len(stimuli)} images are "
            f"unreadable (first: {skipped[0]})"
        )
    out = stimuli.subset(keep) if skipped else stimuli
    earlier = list(stimuli.source.get("skipped", []))
    return replace(out, source={**stimuli.source, "skipped": earlier + skipped})


# --- labels ----------------------------------------------------------------------------------


def sorted_label_names(values: Sequence[str]) -> list[str]:
    """Unique label strings, sorted numerically when all are integers, else alphabetically."""
    unique = set(values)
    try:
        return sorted(unique, key=int)
    except ValueError:
        return sorted(unique)


def encode_labels(
    values: Sequence[str], names: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """String labels -> (int64 indices, names); ``names`` default to :func:`sorted_label_names`."""
    names = list(names) if names is not None else sorted_label_names(values)
    index = {n: i for i, n in enumerate(names)}
    return np.asarray([index[v] for v in values], dtype=np.int64), names


_NAME_KEYS = ("label_names", "class_names", "classes", "names", "labels")


def read_label_names_file(path: Path, key: str | None = None) -> list[str]:
    """Class names from a file: a JSON list, a JSON object (``key``, else one of
    label_names/class_names/classes/names/labels, else the one key ending in ``classes``),
    or a text file with one name per line."""
    if not path.is_file():
        raise DataError(f"label names file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".json":
        return [line.strip() for line in text.splitlines() if line.strip()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"label names file {str(path)!r} is not valid JSON: {exc}") from exc
    if isinstance(data, dict):
        if key is None:
            candidates = [k for k in _NAME_KEYS if k in data][:1] or [
                k for k in data if str(k).endswith("classes")
            ]
            if len(candidates) != 1:
                raise DataError(
                    f"label names file {str(path)!r}: say which key holds the names "
                    f"(options.label_names_key); keys: {sorted(data)}"
                )
            key = candidates[0]
        if key not in data:
            raise DataError(
                f"label names file {str(path)!r} has no key {key!r}; keys: {sorted(data)}"
            )
        data = data[key]
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise DataError(f"label names file {str(path)!r}: expected a list of strings")
    return data


def check_label_names(labels: np.ndarray, names: Sequence[str] | None, where: str) -> None:
    """DataError naming ``where`` when a label has no name or is negative."""
    if labels.size == 0:
        return
    if int(labels.min()) < 0:
        raise DataError(f"{where}: negative label {int(labels.min())}")
    if names is not None and int(labels.max()) >= len(names):
        raise DataError(
            f"{where}: label {int(labels.max())} has no name: only {len(names)} label_names"
        )


def read_text_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    """Lines of a text file (DataError naming the file when it cannot be read or decoded)."""
    if path.is_dir():
        raise DataError(f"{str(path)!r} is a directory; expected a text file")
    try:
        return path.read_text(encoding=encoding).splitlines()
    except (OSError, UnicodeDecodeError, LookupError) as exc:
        hint = " (set options.encoding, e.g. cp1252)" if isinstance(exc, UnicodeError) else ""
        raise DataError(f"cannot read text file {str(path)!r}: {exc}{hint}") from exc

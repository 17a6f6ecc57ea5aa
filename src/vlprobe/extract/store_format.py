"""On-disk layout and encodings of the activation store's files (no pickle anywhere).

File names and shard arithmetic are here, next to the encodings; the directory layout is
described in :mod:`vlprobe.extract.store`.

Shards are safetensors files:

- dense: one tensor ``data`` ``[rows, *item_shape]``;
- ragged: ``data`` (1-D: every item raveled in C order, items concatenated) and ``shapes``
  ``[rows, ndim]`` int64 (offsets follow from the shapes).

Consolidated arrays are plain ``.npy`` files, readable with ``np.load(mmap_mode=...)``.
:class:`NpyStreamWriter` writes one piece by piece (header, then the shards in row order) and
hashes the bytes on the way, so finalizing an entry reads each shard once and holds at most
one shard in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.errors import StoreError
from vlprobe.extract.ragged import RaggedArray, offsets_from_shapes
from vlprobe.fileio import file_digest, make_temp_file, read_json_dict

#: entry kinds: ``dense`` ``[N, *item_shape]``, ``ragged`` one array per item.
KINDS = ("dense", "ragged")
#: value dtypes an entry may have.
DTYPES = ("float32", "float16")


TMP_PREFIX = ".tmp-"  # temp files of atomic writes; readers never look at them
META = "meta.json"
DATA = "data.npy"
OFFSETS = "offsets.npy"
SHAPES = "shapes.npy"
DATA_SIDECAR = "data.json"


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard_{index:05d}.safetensors"


def sidecar_name(index: int) -> str:
    """File name of the sidecar (commit marker) of shard ``index``."""
    return f"shard_{index:05d}.json"


def n_shards_for(n_items: int, shard_size: int) -> int:
    """Number of shards of ``n_items`` rows cut into ``shard_size`` pieces."""
    return (n_items + shard_size - 1) // shard_size


def shard_bounds(index: int, n_items: int, shard_size: int) -> tuple[int, int]:
    """``(start, stop)`` rows of shard ``index``."""
    start = index * shard_size
    return start, min(start + shard_size, n_items)


def entry_kind(meta: Mapping[str, Any]) -> tuple[str, np.dtype]:
    """``(kind, dtype)`` of an entry's meta (format-1 entries: dense float32)."""
    return meta.get("kind", "dense"), np.dtype(meta.get("dtype", "float32"))


def consolidated_files(meta: Mapping[str, Any]) -> tuple[str, ...]:
    """Names of the consolidated files of an entry of this meta's kind."""
    return (DATA, OFFSETS, SHAPES) if entry_kind(meta)[0] == "ragged" else (DATA,)


def consolidated_layout(
    kind: str, n_items: int, sidecars: Sequence[Mapping[str, Any]]
) -> tuple[tuple[int, ...], dict[str, Any]]:
    """Shape of the consolidated ``data.npy`` and the meta fields describing the items,
    from the shards' sidecars: dense ``[N, *item_shape]`` (one item shape in all shards),
    ragged ``[n_values]`` (one item ndim in all shards).

    Raises:
        ValueError: the shards disagree on the item shape / ndim.
    """
    if kind == "dense":
        items = {tuple(sc.get("shape", [0])[1:]) for sc in sidecars}
    else:
        items = {sc.get("item_ndim") for sc in sidecars}
    if len(items) != 1:
        what = "shape" if kind == "dense" else "ndim"
        raise ValueError(f"shards disagree on the item {what} ({sorted(items, key=str)})")
    item = items.pop()
    if kind == "dense":
        shape = [int(s) for s in item]
        return (n_items, *shape), {
            "item_shape": shape, "shape": [n_items, *shape],
            "dim": shape[0] if len(shape) == 1 else None,
        }
    n_values = sum(int(sc.get("n_values", 0)) for sc in sidecars)
    return (n_values,), {"item_ndim": int(item), "n_values": n_values}


def check_kind_dtype(kind: str, dtype: Any) -> np.dtype:
    """Validate ``kind`` and ``dtype``; return the numpy dtype."""
    if kind not in KINDS:
        raise StoreError(f"unknown store entry kind {kind!r}; expected one of {KINDS}")
    dt = np.dtype(dtype)
    if dt.name not in DTYPES:
        raise StoreError(f"store entries hold {'/'.join(DTYPES)} values, not {dt.name}")
    return dt


def _cast(array: Any, dtype: np.dtype, where: str) -> tuple[np.ndarray, int]:
    """``array`` as a C-contiguous ``dtype`` array, and its number of non-finite values.

    A cast that turns finite values into inf (float16 overflow) is an error."""
    src = np.asarray(array)
    if not np.issubdtype(src.dtype, np.number):
        raise StoreError(f"{where}: expected numbers, got dtype {src.dtype}")
    with np.errstate(over="ignore"):  # an overflow is reported below, as an error
        out = np.ascontiguousarray(src, dtype=dtype)
    n_bad = int(out.size - np.count_nonzero(np.isfinite(out)))
    if n_bad and out.dtype != src.dtype and np.isfinite(src).all():
        raise StoreError(f"{where}: values overflow {dtype.name} (max |x| {np.abs(src).max():g})")
    return out, n_bad


def encode_dense(array: Any, dtype: np.dtype, rows: int, metadata: dict[str, str]) -> tuple[
    bytes, dict[str, Any]
]:
    """Shard payload of a dense ``[rows, *item_shape]`` array and its sidecar fields
    (``shape``, ``dtype``, ``n_nonfinite``)."""
    from safetensors.numpy import save

    arr, n_bad = _cast(array, dtype, f"entry {metadata.get('key')}")
    if arr.ndim < 1 or arr.shape[0] != rows:
        raise StoreError(
            f"entry {metadata.get('key')}: expected a [{rows}, ...] shard, got shape {arr.shape}"
        )
    payload = save({"data": arr}, metadata=metadata)
    return payload, {"shape": list(arr.shape), "dtype": arr.dtype.name, "n_nonfinite": n_bad}


def encode_ragged(
    items: Sequence[Any] | RaggedArray, dtype: np.dtype, rows: int, metadata: dict[str, str]
) -> tuple[bytes, dict[str, Any]]:
    """Shard payload of ``rows`` per-item arrays (one ndim) and its sidecar fields
    (``shape`` of the flat values, ``dtype``, ``item_ndim``, ``n_values``, ``n_nonfinite``)."""
    from safetensors.numpy import save

    where = f"entry {metadata.get('key')}"
    if len(items) != rows:
        raise StoreError(f"{where}: expected {rows} items in the shard, got {len(items)}")
    if isinstance(items, RaggedArray):
        (data, n_bad), shapes = _cast(items.data, dtype, where), np.array(items.shapes, np.int64)
    else:
        arrays = [np.asarray(a) for a in items]
        ndims = sorted({a.ndim for a in arrays})
        if len(ndims) != 1:
            raise StoreError(f"{where}: the items of one entry must share one ndim, got {ndims}")
        shapes = np.asarray([a.shape for a in arrays], dtype=np.int64).reshape(rows, ndims[0])
        data, n_bad = _cast(np.concatenate([a.reshape(-1) for a in arrays]), dtype, where)
    payload = save({"data": data, "shapes": shapes}, metadata=metadata)
    return payload, {
        "shape": [int(data.shape[0])], "dtype": data.dtype.name,
        "item_ndim": int(shapes.shape[1]), "n_values": int(data.shape[0]), "n_nonfinite": n_bad,
    }


def decode_shard(kind: str, payload: bytes, rows: int) -> np.ndarray | RaggedArray:
    """The array (dense) or RaggedArray in a shard payload.

    Raises:
        ValueError: unreadable payload or a shape that does not have ``rows`` items.
    """
    from safetensors.numpy import load

    try:
        tensors = load(payload)
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"unreadable safetensors ({exc})") from None
    if "data" not in tensors:
        raise ValueError("no 'data' tensor")
    data = tensors["data"]
    if kind == "dense":
        if data.ndim < 1 or data.shape[0] != rows:
            raise ValueError(f"unexpected shape {data.shape} for {rows} rows")
        return data
    shapes = tensors.get("shapes")
    if shapes is None or shapes.ndim != 2 or shapes.shape[0] != rows:
        raise ValueError(f"ragged shapes {None if shapes is None else shapes.shape}, {rows} rows")
    return RaggedArray(data, offsets_from_shapes(shapes), shapes)


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` serialised as a ``.npy`` file (for the small offsets / shapes files)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


class NpyStreamWriter:
    """Write one ``.npy`` file of known dtype and shape piece by piece.

    The bytes go to a temp file (``<tmp_prefix><name>.*``) in the target directory;
    :meth:`commit` checks that exactly ``shape`` was written, fsyncs and renames it into place
    and returns the sha256 of the whole file (hashed on the way: no second read). Leaving the
    ``with`` block without :meth:`commit` (an error) removes the temp file.
    """

    def __init__(self, path: Path, dtype: np.dtype, shape: Sequence[int], tmp_prefix: str):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        self._expected = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._written = 0
        self._hash = hashlib.sha256()
        fd, self._tmp = make_temp_file(self.path.parent, prefix=f"{tmp_prefix}{self.path.name}.")
        self._fh: Any = os.fdopen(fd, "wb")
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header,
            {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
             "shape": self.shape},
        )
        self._put(header.getvalue())

    def _put(self, buf: Any) -> None:
        self._fh.write(buf)
        self._hash.update(buf)

    def write(self, array: np.ndarray) -> None:
        """Append ``array``'s values (C order, cast to the file's dtype)."""
        flat = np.ascontiguousarray(array, dtype=self.dtype).reshape(-1).view(np.uint8)
        self._put(flat.data)
        self._written += flat.nbytes

    def commit(self) -> str:
        """Close, fsync and move the file into place; its sha256."""
        if self._written != self._expected:
            raise StoreError(
                f"{self.path}: wrote {self._written} bytes of values, expected {self._expected}"
            )
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)
        self._tmp = None
        return self._hash.hexdigest()

    def abort(self) -> None:
        """Drop the temp file (no-op after :meth:`commit`)."""
        if self._tmp is not None:
            self._fh.close()
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None

    def __enter__(self) -> NpyStreamWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.abort()


# -- consolidated entries ----------------------------------------------------------------------
def open_consolidated(path: Path, meta: Mapping[str, Any]) -> tuple[Any, str | None]:
    """``(values, None)`` of the complete consolidated entry in ``path``, or ``(None, problem)``.

    Dense: ``[N, *item_shape]`` memory-mapped copy-on-write; ragged: a RaggedArray over
    read-only memory maps. Structure only (files present, dtype, shapes): no hashing."""
    kind, dt = entry_kind(meta)
    names = consolidated_files(meta)
    if read_json_dict(path / DATA_SIDECAR) is None or not all((path / n).exists() for n in names):
        return None, f"consolidated {'/'.join(names)} or their sidecar are missing"
    mode = "c" if kind == "dense" else "r"
    try:
        arrays = {n: np.load(path / n, mmap_mode=mode, allow_pickle=False) for n in names}
    except (OSError, ValueError) as exc:
        return None, f"unreadable consolidated file ({exc})"
    data = arrays[DATA]
    if data.dtype != dt:
        return None, f"{DATA} has dtype {data.dtype}, expected {dt}"
    if kind == "dense":
        if list(data.shape) != list(meta.get("shape") or []):
            return None, f"{DATA} has shape {data.shape}, expected {meta.get('shape')}"
        return data, None
    try:
        ragged = RaggedArray(data, arrays[OFFSETS], arrays[SHAPES])
    except ValueError as exc:
        return None, str(exc)
    if len(ragged) != meta["n_items"] or ragged.ndim != meta.get("item_ndim"):
        return None, (
            f"{len(ragged)} items of ndim {ragged.ndim}, expected {meta['n_items']} of ndim "
            f"{meta.get('item_ndim')}"
        )
    return ragged, None


def verify_consolidated(path: Path, meta: Mapping[str, Any]) -> list[str]:
    """Problems of the consolidated entry in ``path``: every file rehashed against its
    sidecar (one full read), then the structure checked. Empty: intact."""
    sidecar = read_json_dict(path / DATA_SIDECAR) or {}
    files = sidecar.get("files") or (
        {DATA: sidecar["sha256"]} if "sha256" in sidecar else {}  # format-1 sidecar
    )
    problems = []
    for name in consolidated_files(meta):
        if name not in files or not (path / name).exists():
            problems.append(f"{name} or its sha256 is missing")
        elif file_digest(path / name) != files[name]:
            problems.append(f"sha256 mismatch in {name} (corrupted file)")
    if not problems:
        problem = open_consolidated(path, meta)[1]
        problems += [problem] if problem else []
    return problems

"""The activation store: pooled ``[N, D]`` features on disk, one entry per cache key.

Layout (``root`` = ``settings.cache_dir() / "activations"``)::

    root/<key>/meta.json                 key dict, n_items, shard_size, n_shards, dim, dtype,
                                         complete flag (+ n_truncated once complete)
    root/<key>/shard_00000.safetensors   rows [0, shard_size) as one float32 tensor "data"
    root/<key>/shard_00000.json          sidecar {sha256, rows, start, shape, dtype,
                                         n_truncated}: written AFTER the shard, so it is the
                                         commit marker of the shard
    ...
    root/<key>/data.npy                  consolidated [N, D] array, once every shard is there
    root/<key>/data.json                 its sidecar (sha256, shape, dtype): commit marker

Every file is written atomically: to a ``.tmp-*`` file in the same directory, flushed, fsynced
and moved into place with :func:`os.replace`; readers never look at ``.tmp-*`` files (a
leftover one from a killed writer is ignored and removed by :meth:`ActivationStore.gc`).
No pickle anywhere: shards are safetensors, the consolidated array is a plain ``.npy`` loaded
with ``allow_pickle=False``.

Every read verifies the sha256 recorded in the sidecar. A corrupted or partial shard (missing
sidecar, bad hash, wrong row count) is never returned: it is deleted, logged, recorded in
:attr:`ActivationStore.events` and reported as missing, so the extractor recomputes it.

After consolidation the shards are deleted and reads return ``np.load(mmap_mode="c")``:
pages are read lazily (memory does not grow with N) and the array is copy-on-write, so an
analysis may modify it in place without touching the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.errors import StoreError
from vlprobe.extract.keys import STORE_FORMAT_VERSION
from vlprobe.fileio import make_temp_file

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
META = "meta.json"
DATA = "data.npy"
DATA_SIDECAR = "data.json"
DTYPE = np.float32


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


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform / filesystem
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same dir, fsync, replace).

    ``sync_dir`` also fsyncs the directory, making the rename itself durable (needed before
    a later file that depends on this one, e.g. a shard before its sidecar)."""
    fd, tmp = make_temp_file(path.parent, prefix=f"{TMP_PREFIX}{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:
        _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any, *, sync_dir: bool = True) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(
        path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode(), sync_dir=sync_dir
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class EntryInfo:
    """One store entry, as :meth:`ActivationStore.ls` lists it."""

    key: str
    path: Path
    site: str | None
    pooling: str | None
    model: Any
    dataset: str | None
    split: str | None
    n_items: int
    dim: int | None
    complete: bool
    n_shards_committed: int
    n_shards: int
    bytes_on_disk: int


class ActivationStore:
    """Pooled activations on disk (see the module docstring for the layout).

    Args:
        root: store directory (default ``settings.cache_dir() / "activations"``).
        consolidate: on :meth:`finalize`, merge the shards into one ``data.npy`` opened with
            ``mmap_mode="c"`` on reads (else keep the shards and concatenate them on reads).
        verify: check sha256 of every file on every read (recommended; costs one pass over
            the bytes).

    Attributes:
        events: human-readable list of problems found (corrupt / partial shards deleted).
    """

    def __init__(
        self, root: str | os.PathLike[str] | None = None, *, consolidate: bool = True,
        verify: bool = True,
    ) -> None:
        if root is None:
            from vlprobe.settings import cache_dir

            root = cache_dir() / "activations"
        self.root = Path(root)
        self.consolidate = consolidate
        self.verify = verify
        self.events: list[str] = []

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.root)!r})"

    # -- paths & meta --------------------------------------------------------------------
    def entry_dir(self, key: str) -> Path:
        """Directory of entry ``key``."""
        if not key or "/" in key or key.startswith("."):
            raise StoreError(f"invalid store key {key!r}")
        return self.root / key

    def meta(self, key: str) -> dict[str, Any] | None:
        """The entry's ``meta.json`` (None if the entry does not exist)."""
        return _read_json(self.entry_dir(key) / META)

    def _report(self, message: str) -> None:
        log.warning("activation store: %s", message)
        self.events.append(message)

    # -- writing -------------------------------------------------------------------------
    def open_entry(
        self, key: str, key_dict: Mapping[str, Any], n_items: int, shard_size: int
    ) -> dict[str, Any]:
        """Create entry ``key`` (or check the existing one) and return its meta.

        An existing incomplete entry with another shard size is cleared; a complete one is
        kept as it is (its layout does not matter for reading). A key dict that differs from
        the stored one (a hash collision or a tampered file) is an error.
        """
        if n_items <= 0 or shard_size <= 0:
            raise StoreError(f"n_items ({n_items}) and shard_size ({shard_size}) must be > 0")
        path = self.entry_dir(key)
        meta = self.meta(key)
        if meta is not None:
            if meta.get("key_dict") != json.loads(json.dumps(dict(key_dict), sort_keys=True)):
                raise StoreError(
                    f"store entry {path} holds a different key dict than the one requested "
                    "(hash collision or edited meta.json); delete the directory"
                )
            if meta.get("n_items") != n_items:
                raise StoreError(f"store entry {path}: n_items {meta.get('n_items')} != {n_items}")
            if meta.get("complete") or meta.get("shard_size") == shard_size:
                return meta
            self._report(
                f"entry {key}: shard size changed ({meta.get('shard_size')} -> {shard_size}); "
                "its incomplete shards are discarded"
            )
            self.delete(key)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": STORE_FORMAT_VERSION,
            "key": key,
            "key_dict": json.loads(json.dumps(dict(key_dict), sort_keys=True)),
            "n_items": int(n_items),
            "shard_size": int(shard_size),
            "n_shards": n_shards_for(n_items, shard_size),
            "dtype": np.dtype(DTYPE).name,
            "dim": None,
            "shape": None,
            "complete": False,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_json(path / META, meta)
        return meta

    def write_shard(self, key: str, index: int, array: np.ndarray, n_truncated: int = 0) -> None:
        """Write shard ``index`` (rows ``[index*shard_size, ...)``) atomically, then its sidecar.

        ``array`` is ``[rows, D]`` (any float dtype; stored as float32).
        """
        from safetensors.numpy import save

        meta = self._require_meta(key)
        start, stop = shard_bounds(index, meta["n_items"], meta["shard_size"])
        arr = np.ascontiguousarray(array, dtype=DTYPE)
        if arr.ndim != 2 or arr.shape[0] != stop - start:
            raise StoreError(
                f"entry {key} shard {index}: expected [{stop - start}, D] rows, got {arr.shape}"
            )
        if not np.isfinite(arr).all():
            log.warning("entry %s shard %d has non-finite values", key, index)
        payload = save({"data": arr}, metadata={"start": str(start), "key": key})
        path = self.entry_dir(key)
        atomic_write_bytes(path / shard_name(index), payload)
        sidecar = {
            "sha256": hashlib.sha256(payload).hexdigest(),
            "rows": int(arr.shape[0]),
            "start": int(start),
            "shape": list(arr.shape),
            "dtype": arr.dtype.name,
            "n_truncated": int(n_truncated),
        }
        # the shard's rename is durable (dir fsynced above) before its commit marker exists;
        # losing the marker's rename in a crash only means the shard is recomputed
        atomic_write_json(path / sidecar_name(index), sidecar, sync_dir=False)

    def _require_meta(self, key: str) -> dict[str, Any]:
        meta = self.meta(key)
        if meta is None:
            raise StoreError(f"store entry {key} does not exist (call open_entry first)")
        return meta

    # -- shard reading / validation -------------------------------------------------------
    def _discard_shard(self, key: str, index: int, why: str) -> None:
        self._report(f"entry {key} shard {index}: {why}; deleted, it will be recomputed")
        path = self.entry_dir(key)
        for name in (sidecar_name(index), shard_name(index)):  # marker first
            with contextlib.suppress(FileNotFoundError):
                (path / name).unlink()

    def read_shard(self, key: str, index: int) -> tuple[np.ndarray, dict[str, Any]] | None:
        """Shard ``index`` as ``([rows, D] float32, sidecar)``, or None if missing / invalid.

        An invalid shard (no sidecar, hash mismatch, bad shape) is deleted and reported.
        """
        from safetensors.numpy import load

        meta = self._require_meta(key)
        path = self.entry_dir(key)
        sidecar = _read_json(path / sidecar_name(index))
        shard_path = path / shard_name(index)
        if sidecar is None:
            if shard_path.exists():  # a shard without commit marker: never read it
                self._discard_shard(key, index, "shard without sidecar (partial write)")
            return None
        try:
            payload = shard_path.read_bytes()
        except FileNotFoundError:
            self._discard_shard(key, index, "sidecar without shard file")
            return None
        if self.verify and hashlib.sha256(payload).hexdigest() != sidecar.get("sha256"):
            self._discard_shard(key, index, "sha256 mismatch (corrupted file)")
            return None
        start, stop = shard_bounds(index, meta["n_items"], meta["shard_size"])
        try:
            arr = load(payload)["data"]
        except Exception as exc:  # safetensors raises its own error types
            self._discard_shard(key, index, f"unreadable safetensors ({exc})")
            return None
        if arr.ndim != 2 or arr.shape[0] != stop - start or sidecar.get("rows") != stop - start:
            self._discard_shard(key, index, f"unexpected shape {arr.shape}")
            return None
        return arr, sidecar

    def valid_shard(self, key: str, index: int) -> bool:
        """Whether shard ``index`` is committed and intact (verifies the hash)."""
        return self.read_shard(key, index) is not None

    def missing_shards(self, key: str) -> list[int]:
        """Shards of an open entry that are absent or invalid (invalid ones are deleted)."""
        meta = self._require_meta(key)
        if meta.get("complete") and self.load(key) is not None:
            return []
        meta = self._require_meta(key)  # load() may have reset a corrupt complete entry
        return [i for i in range(meta["n_shards"]) if not self.valid_shard(key, i)]

    # -- consolidation -------------------------------------------------------------------
    def finalize(self, key: str) -> dict[str, Any]:
        """Mark a fully written entry complete (consolidating its shards if configured).

        Raises:
            StoreError: if a shard is missing or invalid.
        """
        meta = self._require_meta(key)
        if meta.get("complete"):
            return meta
        path = self.entry_dir(key)
        n_shards = meta["n_shards"]
        dim = None
        n_truncated = 0
        out = None
        tmp_name = None
        try:
            for i in range(n_shards):
                got = self.read_shard(key, i)
                if got is None:
                    raise StoreError(f"entry {key}: shard {i} is missing; cannot finalize")
                arr, sidecar = got
                n_truncated += int(sidecar.get("n_truncated", 0))
                if dim is None:
                    dim = int(arr.shape[1])
                    if self.consolidate:
                        fd, tmp_name = make_temp_file(path, prefix=f"{TMP_PREFIX}{DATA}.")
                        os.close(fd)
                        out = np.lib.format.open_memmap(
                            tmp_name, mode="w+", dtype=DTYPE, shape=(meta["n_items"], dim)
                        )
                elif arr.shape[1] != dim:
                    raise StoreError(f"entry {key}: shard {i} has width {arr.shape[1]} != {dim}")
                if out is not None:
                    start, stop = shard_bounds(i, meta["n_items"], meta["shard_size"])
                    out[start:stop] = arr
            if out is not None and tmp_name is not None:
                out.flush()
                del out
                out = None
                with open(tmp_name, "rb+") as fh:
                    os.fsync(fh.fileno())
                digest = _sha256_file(Path(tmp_name))
                os.replace(tmp_name, path / DATA)
                tmp_name = None
                _fsync_dir(path)  # data.npy in place before its sidecar
                atomic_write_json(
                    path / DATA_SIDECAR,
                    {"sha256": digest, "shape": [meta["n_items"], dim], "dtype": "float32"},
                    sync_dir=False,
                )
        finally:
            if tmp_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)
        meta.update(
            complete=True, dim=dim, shape=[meta["n_items"], dim], n_truncated=n_truncated,
            consolidated=bool(self.consolidate),
            finalized=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        atomic_write_json(path / META, meta)
        if self.consolidate:
            for i in range(n_shards):
                for name in (sidecar_name(i), shard_name(i)):
                    with contextlib.suppress(FileNotFoundError):
                        (path / name).unlink()
        return meta

    # -- reading -------------------------------------------------------------------------
    def is_complete(self, key: str) -> bool:
        """Cheap check (no hashing): the entry says it is complete."""
        meta = self.meta(key)
        return bool(meta and meta.get("complete"))

    def load(self, key: str, *, verify: bool | None = None) -> np.ndarray | None:
        """The ``[N, D]`` float32 features of a complete entry, or None.

        A consolidated entry is memory-mapped copy-on-write; a corrupted one is deleted
        (reported in :attr:`events`) and None is returned, so it gets recomputed.
        ``verify`` overrides the store's setting (sha256 check of the data).
        """
        verify = self.verify if verify is None else verify
        meta = self.meta(key)
        if not meta or not meta.get("complete"):
            return None
        path = self.entry_dir(key)
        n, dim = meta["n_items"], meta["dim"]
        if meta.get("consolidated"):
            sidecar = _read_json(path / DATA_SIDECAR)
            data_path = path / DATA
            problem = None
            if sidecar is None or not data_path.exists():
                problem = "consolidated data.npy or its sidecar is missing"
            elif verify and _sha256_file(data_path) != sidecar.get("sha256"):
                problem = "sha256 mismatch in data.npy (corrupted file)"
            if problem is None:
                try:
                    arr = np.load(data_path, mmap_mode="c", allow_pickle=False)
                except (OSError, ValueError) as exc:
                    problem = f"unreadable data.npy ({exc})"
                else:
                    if arr.shape != (n, dim) or arr.dtype != DTYPE:
                        problem = f"data.npy has shape {arr.shape} {arr.dtype}"
            if problem is not None:
                self._report(f"entry {key}: {problem}; entry deleted, it will be recomputed")
                self.delete(key)
                return None
            return arr
        parts = []
        for i in range(meta["n_shards"]):
            got = self.read_shard(key, i)
            if got is None:
                meta.update(complete=False)
                atomic_write_json(path / META, meta)
                return None
            parts.append(got[0])
        return np.concatenate(parts, axis=0)

    # -- housekeeping --------------------------------------------------------------------
    def delete(self, key: str) -> None:
        """Remove entry ``key`` (no error if absent)."""
        shutil.rmtree(self.entry_dir(key), ignore_errors=True)

    def keys(self) -> Iterator[str]:
        """Keys of all entries (directories holding a meta.json)."""
        if not self.root.is_dir():
            return
        for child in sorted(self.root.iterdir()):
            if child.is_dir() and not child.name.startswith(".") and (child / META).exists():
                yield child.name

    def info(self, key: str) -> EntryInfo:
        """What entry ``key`` holds."""
        meta = self.meta(key)
        if meta is None:
            raise StoreError(f"no store entry {key} under {self.root}")
        path = self.entry_dir(key)
        kd = meta.get("key_dict", {})
        stim = kd.get("stimuli", {})
        committed = sum(1 for i in range(meta["n_shards"]) if (path / sidecar_name(i)).exists())
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        return EntryInfo(
            key=key, path=path, site=kd.get("site"), pooling=kd.get("pooling"),
            model=kd.get("model"), dataset=stim.get("dataset"), split=stim.get("split"),
            n_items=meta["n_items"], dim=meta.get("dim"), complete=bool(meta.get("complete")),
            n_shards_committed=meta["n_shards"] if meta.get("complete") else committed,
            n_shards=meta["n_shards"], bytes_on_disk=size,
        )

    def ls(self) -> list[EntryInfo]:
        """All entries."""
        return [self.info(k) for k in self.keys()]

    def gc(self, *, incomplete: bool = False, tmp_older_than_s: float = 3600.0) -> list[Path]:
        """Remove leftover temp files older than ``tmp_older_than_s`` (and, if
        ``incomplete``, every incomplete entry). Returns what was removed."""
        removed: list[Path] = []
        now = time.time()
        for key in list(self.keys()):
            path = self.entry_dir(key)
            if incomplete and not self.is_complete(key):
                self.delete(key)
                removed.append(path)
                continue
            for f in path.glob(f"{TMP_PREFIX}*"):
                with contextlib.suppress(OSError):
                    if now - f.stat().st_mtime >= tmp_older_than_s:
                        f.unlink()
                        removed.append(f)
        return removed

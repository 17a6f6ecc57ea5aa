"""The activation store: per-item arrays on disk, one entry per cache key.

Entry kinds (both float32 or float16, chosen when the entry is opened):

- ``dense``: ``[N, *item_shape]``, e.g. pooled features ``[N, D]`` (the default, what the
  extractor writes) or per-head statistics ``[N, H]`` / ``[N, H, K]``. Read with
  :meth:`ActivationStore.load`: a copy-on-write memory map.
- ``ragged``: one array per item, all of one ndim, with item-dependent shapes, e.g. raw
  attention ``[H, T_i, T_i]``. Read with :meth:`ActivationStore.load_ragged`: a read-only
  :class:`~vlprobe.extract.ragged.RaggedArray` over memory maps (``ra[i]`` is a view).

Writing an entry (any kind); shards are rows ``[i * shard_size, ...)`` of the N items::

    with store.lock(keys):                         # every key this process will write
        store.open_entry(key, key_dict, n_items, shard_size, kind="ragged", dtype="float16")
        for i in store.missing_shards(key):        # resume: committed shards are kept
            start, stop = shard_bounds(i, n_items, shard_size)
            store.write_shard(key, i, [attention(j) for j in range(start, stop)])
        store.finalize(key)                        # verify every shard once, consolidate
    attn = store.load_ragged(key)                  # attn[j]: [H, T_j, T_j] float16 view

Layout (``root`` = ``settings.cache_dir() / "activations"``)::

    root/<key>/meta.json                 key dict, kind, dtype, n_items, shard_size, n_shards,
                                         complete flag; once complete also item_shape (dense) or
                                         item_ndim and n_values (ragged), n_truncated
    root/<key>/shard_00000.safetensors   rows [0, shard_size) (encodings: store_format.py)
    root/<key>/shard_00000.json          sidecar {sha256, rows, start, shape, dtype, ...}:
                                         written AFTER the shard: its commit marker
    root/<key>/data.npy                  consolidated values: dense [N, *item_shape]; ragged
                                         every item raveled and concatenated (1-D)
    root/<key>/offsets.npy, shapes.npy   ragged only: [N + 1] and [N, ndim] int64
    root/<key>/data.json                 {files: {name: sha256}, ...} of the consolidated
                                         files: their commit marker
    root/.locks/<key>.lock               the key's cross-process lock file (empty, kept)

Every file is written atomically (a ``.tmp-*`` file in the same directory, fsynced, then
:func:`os.replace`); readers never look at ``.tmp-*`` files. No pickle anywhere: shards are
safetensors, consolidated arrays plain ``.npy`` loaded with ``allow_pickle=False``.

Integrity: shards in flight (an unfinished entry) are verified against their sidecar's sha256
whenever they are read (resume, finalize); a corrupted or partial one (no sidecar, bad hash,
wrong shape) is deleted, recorded in :attr:`ActivationStore.events` and reported missing, so
it is recomputed. A finished entry is hashed ONCE, by :meth:`ActivationStore.finalize`; reads
only check structure (files present, shapes and dtype as recorded), so opening an entry costs
milliseconds whatever its size. :meth:`ActivationStore.verify_entry` (``vlprobe cache
verify``) rehashes finished entries on demand.

Concurrency: :meth:`ActivationStore.lock` takes per-key file locks (PyPI ``filelock``,
``flock`` on POSIX; released by the OS if the holder dies), in sorted key order so two
processes locking overlapping key sets cannot deadlock. Whoever writes, resumes, repairs or
deletes an entry must hold its lock; :func:`~vlprobe.extract.extract_features` holds the
locks of all its keys from the cache check to the read-back, so a second run of the same
config waits and then finds the entries complete. Readers of complete entries need no lock
(entries are immutable once complete; a deleted entry's memory map stays valid on POSIX).
Lock files need a filesystem with working ``flock`` (local disks; NFS only with lock
support); a store that cannot hold them (read-only) is used without locks, with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.errors import StoreError
from vlprobe.extract.keys import STORE_FORMAT_VERSION
from vlprobe.extract.ragged import RaggedArray, offsets_from_shapes
from vlprobe.extract.store_consolidate import finalize_entry
from vlprobe.extract.store_format import (
    META,
    TMP_PREFIX,
    check_kind_dtype,
    decode_shard,
    encode_dense,
    encode_ragged,
    entry_kind,
    n_shards_for,
    open_consolidated,
    shard_bounds,
    shard_name,
    sidecar_name,
    verify_consolidated,
)
from vlprobe.extract.store_locks import KeyLocks
from vlprobe.fileio import atomic_write_bytes, atomic_write_json, read_json_dict

log = logging.getLogger(__name__)

LOCK_DIR = ".locks"


def _write_json(path: Path, obj: Any, *, sync_dir: bool = True) -> None:
    atomic_write_json(path, obj, tmp_prefix=TMP_PREFIX, sync_dir=sync_dir)


class ActivationStore:
    """Per-item arrays on disk (see the module docstring for kinds, layout and protocol).

    Args:
        root: store directory (default ``settings.cache_dir() / "activations"``).
        consolidate: on :meth:`finalize`, merge the shards into ``.npy`` files read as memory
            maps (else keep the shards and concatenate them on reads).
        verify: check the sha256 of shards in flight whenever they are read (resume,
            finalize). Finished entries are hashed once at finalize, then only on demand
            (:meth:`verify_entry`, ``load(..., verify=True)``).

    Attributes:
        events: human-readable list of problems found and repaired (corrupt / partial shards).
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
        self._locks = KeyLocks(self.root / LOCK_DIR)

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.root)!r})"

    # -- paths & meta --------------------------------------------------------------------
    def entry_dir(self, key: str) -> Path:
        """Directory of entry ``key``."""
        if not key or "/" in key or "\\" in key or key.startswith("."):
            raise StoreError(f"invalid store key {key!r}")
        return self.root / key

    def meta(self, key: str) -> dict[str, Any] | None:
        """The entry's ``meta.json`` (None if the entry does not exist)."""
        return read_json_dict(self.entry_dir(key) / META)

    def _require_meta(self, key: str) -> dict[str, Any]:
        meta = self.meta(key)
        if meta is None:
            raise StoreError(f"store entry {key} does not exist (call open_entry first)")
        return meta

    def _report(self, message: str) -> None:
        log.warning("activation store: %s", message)
        self.events.append(message)

    # -- locking -------------------------------------------------------------------------
    def lock(
        self, keys: str | Iterable[str], *, timeout: float | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Context manager holding the cross-process locks of ``keys`` (one or several).

        Taken in sorted key order (no deadlock between processes locking overlapping sets),
        re-entrant within a thread; a lock held elsewhere is waited for (logged once per
        key), up to ``timeout`` seconds per key (None = forever; then StoreError)."""
        names = [keys] if isinstance(keys, str) else list(keys)
        for key in names:
            self.entry_dir(key)  # validates the key
        return self._locks.hold(names, timeout)

    def try_lock(self, key: str) -> contextlib.AbstractContextManager[bool]:
        """Context manager taking ``key``'s lock if it is free: yields True (held for the
        block) or False (another process or thread holds it)."""
        self.entry_dir(key)
        return self._locks.try_hold(key)

    def is_locked(self, key: str) -> bool:
        """Whether another process (or thread) holds ``key``'s lock right now."""
        with self.try_lock(key) as got:
            return not got

    # -- writing -------------------------------------------------------------------------
    def open_entry(
        self, key: str, key_dict: Mapping[str, Any], n_items: int, shard_size: int, *,
        kind: str = "dense", dtype: Any = "float32",
    ) -> dict[str, Any]:
        """Create entry ``key`` (or check the existing one) and return its meta.

        An existing incomplete entry with another shard size, kind or dtype is cleared; a
        complete one is kept (its shard size does not matter for reading). A key dict,
        ``n_items``, kind or dtype that differs from a complete entry's is an error.
        """
        if n_items <= 0 or shard_size <= 0:
            raise StoreError(f"n_items ({n_items}) and shard_size ({shard_size}) must be > 0")
        dt = check_kind_dtype(kind, dtype)
        path = self.entry_dir(key)
        kd = json.loads(json.dumps(dict(key_dict), sort_keys=True))
        meta = self.meta(key)
        if meta is not None:
            if meta.get("key_dict") != kd:
                raise StoreError(
                    f"store entry {path} holds a different key dict than the one requested "
                    "(hash collision or edited meta.json); delete the directory"
                )
            if meta.get("n_items") != n_items:
                raise StoreError(f"store entry {path}: n_items {meta.get('n_items')} != {n_items}")
            same_kind = entry_kind(meta) == (kind, dt)
            if meta.get("complete") and not same_kind:
                raise StoreError(
                    f"store entry {path} is a complete {'/'.join(map(str, entry_kind(meta)))} "
                    f"entry; {kind}/{dt.name} was requested"
                )
            if meta.get("complete") or (same_kind and meta.get("shard_size") == shard_size):
                return meta
            self._report(
                f"entry {key}: layout changed (shard size {meta.get('shard_size')} -> "
                f"{shard_size}, {'/'.join(map(str, entry_kind(meta)))} -> {kind}/{dt.name}); "
                "its incomplete shards are discarded"
            )
            self.delete(key)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": STORE_FORMAT_VERSION, "key": key, "key_dict": kd,
            "kind": kind, "dtype": dt.name, "n_items": int(n_items),
            "shard_size": int(shard_size), "n_shards": n_shards_for(n_items, shard_size),
            "dim": None, "shape": None, "complete": False,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write_json(path / META, meta)
        return meta

    def write_shard(
        self, key: str, index: int, array: Any, n_truncated: int = 0
    ) -> None:
        """Write shard ``index`` (rows ``[start, stop)``) atomically, then its sidecar.

        Args:
            array: dense entry: ``[stop - start, *item_shape]`` numbers; ragged entry: a
                sequence of ``stop - start`` arrays of one ndim, or a RaggedArray. Values are
                cast to the entry's dtype (an overflow to inf is an error).
            n_truncated: items of this shard cut by truncation (summed into the meta).

        The shard's file is built in memory first: peak memory is about twice the shard's
        bytes (dense) or three times (ragged: items, their concatenation, the file), so
        choose ``shard_size`` for big items (raw attention) accordingly.
        """
        meta = self._require_meta(key)
        if not 0 <= index < meta["n_shards"]:
            raise StoreError(f"entry {key}: shard {index} out of range ({meta['n_shards']})")
        kind, dt = entry_kind(meta)
        start, stop = shard_bounds(index, meta["n_items"], meta["shard_size"])
        info = {"start": str(start), "key": key, "kind": kind}
        encode = encode_ragged if kind == "ragged" else encode_dense
        payload, fields = encode(array, dt, stop - start, info)
        if fields["n_nonfinite"]:
            log.warning("entry %s shard %d has %d non-finite values", key, index,
                        fields["n_nonfinite"])
        path = self.entry_dir(key)
        atomic_write_bytes(path / shard_name(index), payload, tmp_prefix=TMP_PREFIX)
        sidecar = {
            "sha256": hashlib.sha256(payload).hexdigest(), "rows": stop - start, "start": start,
            "kind": kind, "n_truncated": int(n_truncated), **fields,
        }
        # the shard's rename is durable (dir fsynced above) before its commit marker exists;
        # losing the marker's rename in a crash only means the shard is recomputed
        _write_json(path / sidecar_name(index), sidecar, sync_dir=False)

    # -- shards --------------------------------------------------------------------------
    def _check_shard(
        self, key: str, index: int, meta: Mapping[str, Any], *, verify: bool
    ) -> tuple[Any, dict[str, Any] | None, str | None]:
        """``(data, sidecar, problem)`` of shard ``index``, without side effects.

        ``(None, None, None)``: not written. ``problem``: why it is unusable."""
        path = self.entry_dir(key)
        sidecar = read_json_dict(path / sidecar_name(index))
        shard_path = path / shard_name(index)
        if sidecar is None:
            if shard_path.exists():
                return None, None, "shard without sidecar (partial write)"
            return None, None, None
        try:
            payload = shard_path.read_bytes()
        except FileNotFoundError:
            return None, sidecar, "sidecar without shard file"
        if verify and hashlib.sha256(payload).hexdigest() != sidecar.get("sha256"):
            return None, sidecar, "sha256 mismatch (corrupted file)"
        start, stop = shard_bounds(index, meta["n_items"], meta["shard_size"])
        try:
            data = decode_shard(entry_kind(meta)[0], payload, stop - start)
        except ValueError as exc:
            return None, sidecar, str(exc)
        if sidecar.get("rows") != stop - start or sidecar.get("start") != start:
            return None, sidecar, f"sidecar rows/start {sidecar.get('rows')}/{sidecar.get('start')}"
        return data, sidecar, None

    def _discard_shard(self, key: str, index: int, why: str) -> None:
        self._report(f"entry {key} shard {index}: {why}; deleted, it will be recomputed")
        path = self.entry_dir(key)
        for name in (sidecar_name(index), shard_name(index)):  # marker first
            with contextlib.suppress(FileNotFoundError):
                (path / name).unlink()

    def read_shard(self, key: str, index: int) -> tuple[Any, dict[str, Any]] | None:
        """Shard ``index`` as ``(data, sidecar)``, or None if missing / invalid.

        ``data`` is ``[rows, *item_shape]`` (dense) or a RaggedArray of ``rows`` items. An
        invalid shard (no sidecar, hash mismatch, bad shape) is deleted and reported.
        """
        meta = self._require_meta(key)
        data, sidecar, problem = self._check_shard(key, index, meta, verify=self.verify)
        if problem is not None:
            self._discard_shard(key, index, problem)
            return None
        return None if sidecar is None else (data, sidecar)

    def valid_shard(self, key: str, index: int) -> bool:
        """Whether shard ``index`` is committed and intact (verifies the hash)."""
        return self.read_shard(key, index) is not None

    def missing_shards(self, key: str) -> list[int]:
        """Shards of an open entry that are absent or invalid (invalid ones are deleted)."""
        meta = self._require_meta(key)
        if meta.get("complete") and self._read_complete(key, meta) is not None:
            return []
        meta = self._require_meta(key)  # the read may have reset a broken complete entry
        return [i for i in range(meta["n_shards"]) if not self.valid_shard(key, i)]

    # -- consolidation -------------------------------------------------------------------
    def finalize(self, key: str) -> dict[str, Any]:
        """Verify every shard (once), consolidate them if configured, mark the entry complete.

        Every shard is read once and at most one is in memory. Dense entries need one
        item shape, ragged entries one item ndim, across all shards.

        Raises:
            StoreError: if a shard is missing or invalid, or shards disagree on item shape.
        """
        return finalize_entry(self, key)

    # -- reading -------------------------------------------------------------------------
    def is_complete(self, key: str) -> bool:
        """Cheap check (no hashing): the entry says it is complete."""
        meta = self.meta(key)
        return bool(meta and meta.get("complete"))

    def load(self, key: str, *, verify: bool = False) -> np.ndarray | None:
        """The ``[N, *item_shape]`` values of a complete dense entry, or None.

        No hashing (see the module docstring): a consolidated entry is memory-mapped
        copy-on-write (an analysis may modify it in place without touching the file), in
        milliseconds whatever its size. ``verify=True`` rehashes first; a corrupted entry is
        then repaired as by :meth:`verify_entry` and None is returned. An entry whose files
        are missing or of the wrong shape is deleted (reported in :attr:`events`).
        """
        return self._load(key, "dense", verify)

    def load_ragged(self, key: str, *, verify: bool = False) -> RaggedArray | None:
        """The items of a complete ragged entry as a read-only RaggedArray, or None.

        Consolidated entries are memory-mapped (``ra[i]`` is a view; only the pages read
        are loaded); ``verify`` as in :meth:`load`."""
        return self._load(key, "ragged", verify)

    def _load(self, key: str, kind: str, verify: bool) -> Any:
        meta = self.meta(key)
        if not meta or not meta.get("complete"):
            return None
        if entry_kind(meta)[0] != kind:
            other = "load_ragged" if kind == "dense" else "load"
            raise StoreError(f"store entry {key} is {entry_kind(meta)[0]}; read it with {other}()")
        if verify and self.verify_entry(key, repair=True):
            return None
        return self._read_complete(key, meta)

    def _read_complete(self, key: str, meta: dict[str, Any]) -> Any:
        """The values of a complete entry (no hashing), or None if it is broken (repaired)."""
        kind = entry_kind(meta)[0]
        if meta.get("consolidated"):
            out, problem = open_consolidated(self.entry_dir(key), meta)
            if problem is not None:
                self._report(f"entry {key}: {problem}; entry deleted, it will be recomputed")
                self.delete(key)
            return out
        parts = []
        for i in range(meta["n_shards"]):
            data, sidecar, problem = self._check_shard(key, i, meta, verify=False)
            if sidecar is None or problem is not None:
                self._discard_shard(key, i, problem or "shard missing")
                meta.update(complete=False)
                _write_json(self.entry_dir(key) / META, meta)
                return None
            parts.append(data)
        if kind == "dense":
            return np.concatenate(parts, axis=0)
        shapes = np.concatenate([p.shapes for p in parts])
        data = np.concatenate([p.data for p in parts])
        return RaggedArray(data, offsets_from_shapes(shapes), shapes)

    # -- integrity -----------------------------------------------------------------------
    def verify_entry(self, key: str, *, repair: bool = False) -> list[str]:
        """Rehash entry ``key``'s files against their recorded sha256 and check structure.

        Complete consolidated entries: the ``.npy`` files; otherwise every committed shard
        (a complete non-consolidated entry also needs all of them). Returns the problems
        found (empty: intact). With ``repair`` (hold the key's :meth:`lock`), a corrupted
        consolidated entry is deleted; corrupted shards are deleted and a complete entry is
        marked incomplete, so only they are recomputed.
        """
        meta = self.meta(key)
        if meta is None:
            return [f"entry {key}: no readable {META}"]
        path = self.entry_dir(key)
        problems: list[str] = []
        if meta.get("complete") and meta.get("consolidated"):
            problems = verify_consolidated(path, meta)
            if problems and repair:
                self._report(f"entry {key}: {'; '.join(problems)}; entry deleted")
                self.delete(key)
            return [f"entry {key}: {p}" for p in problems]
        bad: list[tuple[int, str]] = []
        for i in range(meta["n_shards"]):
            _, sidecar, problem = self._check_shard(key, i, meta, verify=True)
            if problem is None and sidecar is None and meta.get("complete"):
                problem = "missing"
            if problem is not None:
                bad.append((i, problem))
        if bad and repair:
            for i, problem in bad:
                self._discard_shard(key, i, problem)
            if meta.get("complete"):
                meta.update(complete=False)
                _write_json(path / META, meta)
        return [f"entry {key}: shard {i}: {problem}" for i, problem in bad]

    # -- housekeeping --------------------------------------------------------------------
    def delete(self, key: str) -> None:
        """Remove entry ``key`` (no error if absent; hold its :meth:`lock` if others may
        write it)."""
        shutil.rmtree(self.entry_dir(key), ignore_errors=True)

    def keys(self) -> Iterator[str]:
        """Keys of all entries (directories holding a meta.json)."""
        if not self.root.is_dir():
            return
        for child in sorted(self.root.iterdir()):
            if child.is_dir() and not child.name.startswith(".") and (child / META).exists():
                yield child.name

    def info(self, key: str) -> Any:
        """What entry ``key`` holds, as an :class:`~vlprobe.extract.cache_admin.EntryInfo`
        (no hashing)."""
        from vlprobe.extract.cache_admin import entry_info

        return entry_info(self, key)

    def ls(self) -> list[Any]:
        """:meth:`info` of every entry."""
        return [self.info(k) for k in self.keys()]

    def gc(self, *, incomplete: bool = False, tmp_older_than_s: float = 0.0) -> list[Path]:
        """Remove the leftover temp files (older than ``tmp_older_than_s``) of entries no
        process holds and, if ``incomplete``, the unlocked incomplete entries; returns what
        was removed (:func:`~vlprobe.extract.cache_admin.collect_garbage` does more)."""
        from vlprobe.extract.cache_admin import collect_garbage

        actions = collect_garbage(self, incomplete=incomplete, tmp_older_than_s=tmp_older_than_s)
        return [a.path for a in actions if a.removed]

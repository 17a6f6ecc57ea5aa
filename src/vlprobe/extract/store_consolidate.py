"""Finalizing an activation-store entry: verify every shard once, consolidate, mark complete.

One job of :class:`~vlprobe.extract.store.ActivationStore` (its :meth:`finalize` calls
:func:`finalize_entry`), kept in its own module so the store stays readable; the file layout
and the commit order are described in :mod:`vlprobe.extract.store`.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from vlprobe.errors import StoreError
from vlprobe.extract.ragged import offsets_from_shapes
from vlprobe.extract.store_format import (
    DATA,
    DATA_SIDECAR,
    META,
    OFFSETS,
    SHAPES,
    TMP_PREFIX,
    NpyStreamWriter,
    consolidated_layout,
    entry_kind,
    npy_bytes,
    shard_name,
    sidecar_name,
)
from vlprobe.fileio import atomic_write_bytes, atomic_write_json, fsync_dir, read_json_dict

if TYPE_CHECKING:
    from vlprobe.extract.store import ActivationStore


def _write_json(path: Any, obj: Any) -> None:
    atomic_write_json(path, obj, tmp_prefix=TMP_PREFIX, sync_dir=True)


def finalize_entry(store: ActivationStore, key: str) -> dict[str, Any]:
    """:meth:`ActivationStore.finalize <vlprobe.extract.store.ActivationStore.finalize>` of
    entry ``key``: returns its meta (``complete=True``).

    Raises:
        StoreError: if a shard is missing or invalid, or shards disagree on item shape.
    """
    meta = store._require_meta(key)
    if meta.get("complete"):
        return meta
    kind, dt = entry_kind(meta)
    path = store.entry_dir(key)
    n, n_shards = meta["n_items"], meta["n_shards"]
    sidecars = [read_json_dict(path / sidecar_name(i)) for i in range(n_shards)]
    absent = [i for i, sc in enumerate(sidecars) if sc is None]
    if absent:
        raise StoreError(f"entry {key}: shard(s) {absent[:10]} are missing; cannot finalize")
    try:
        total, item_meta = consolidated_layout(kind, n, sidecars)
    except ValueError as exc:
        raise StoreError(
            f"entry {key}: {exc}; delete the entry ({path}) and write it again"
        ) from None
    shapes: list[np.ndarray] = []
    files: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        writer = None
        if store.consolidate:
            writer = stack.enter_context(NpyStreamWriter(path / DATA, dt, total, TMP_PREFIX))
        for i, sc in enumerate(sidecars):
            got = store.read_shard(key, i)
            if got is None:
                raise StoreError(f"entry {key}: shard {i} is missing; cannot finalize")
            data = got[0]
            values = data.data if kind == "ragged" else data
            if list(values.shape) != list(sc.get("shape", [])):
                raise StoreError(f"entry {key}: shard {i} holds {values.shape}, sidecar {sc}")
            if kind == "ragged":
                shapes.append(np.asarray(data.shapes))
            if writer is not None:
                writer.write(values)
        if writer is not None:
            files[DATA] = writer.commit()
    if store.consolidate and kind == "ragged":
        all_shapes = np.concatenate(shapes)
        for name, arr in ((OFFSETS, offsets_from_shapes(all_shapes)), (SHAPES, all_shapes)):
            payload = npy_bytes(arr)
            atomic_write_bytes(path / name, payload, tmp_prefix=TMP_PREFIX, sync_dir=False)
            files[name] = hashlib.sha256(payload).hexdigest()
    if files:  # the consolidated files are in place (durably) before their sidecar
        fsync_dir(path)
        _write_json(path / DATA_SIDECAR, {"files": files, "kind": kind, "dtype": dt.name})
    meta.update(
        complete=True, consolidated=bool(store.consolidate),
        n_truncated=sum(int(sc.get("n_truncated", 0)) for sc in sidecars),
        finalized=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **item_meta,
    )
    _write_json(path / META, meta)
    if store.consolidate:
        for i in range(n_shards):
            for name in (sidecar_name(i), shard_name(i)):
                with contextlib.suppress(FileNotFoundError):
                    (path / name).unlink()
    return meta

"""Housekeeping of the activation store: what ``vlprobe cache ls / gc / verify`` do.

- :func:`entry_info` / :func:`ls_rows`: what each entry holds (from ``meta.json``, no hashing).
- :func:`collect_garbage`: removes leftover ``.tmp-*`` files, orphan directories (no
  ``meta.json``), incomplete entries and optionally stale or old complete entries. Only
  entries whose lock is free are touched, and the lock is held while they are removed, so a
  running extraction never loses its entry.
- :func:`verify_all`: rehashes every entry (:meth:`ActivationStore.verify_entry`) and
  optionally repairs the corrupted ones.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlprobe.extract.keys import STORE_FORMAT_VERSION, software_versions
from vlprobe.extract.store import ActivationStore
from vlprobe.extract.store_format import META, TMP_PREFIX, entry_kind, sidecar_name


@dataclass
class EntryInfo:
    """One store entry, as ``ActivationStore.ls`` lists it.

    ``shape`` is ``[N, *item_shape]`` for a complete dense entry (None otherwise); a complete
    ragged entry has ``item_ndim``. ``mtime`` is the time meta.json was last written (the
    finalize time of a complete entry)."""

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
    kind: str = "dense"
    dtype: str = "float32"
    shape: list[int] | None = None
    item_ndim: int | None = None
    modality: str | None = None
    key_dict: dict[str, Any] = field(default_factory=dict)
    mtime: float = 0.0


def entry_paths(store: ActivationStore) -> list[Path]:
    """Every entry directory of ``store``, with or without meta.json (orphans included)."""
    if not store.root.is_dir():
        return []
    return sorted(c for c in store.root.iterdir() if c.is_dir() and not c.name.startswith("."))


def _dir_bytes(path: Path) -> int:
    total = 0
    for f in path.rglob("*"):
        try:
            total += f.stat().st_size if f.is_file() else 0
        except OSError:  # removed while we looked
            continue
    return total


def entry_info(store: ActivationStore, key: str) -> EntryInfo:
    """What entry ``key`` holds (from its meta.json and file sizes; no hashing)."""
    from vlprobe.errors import StoreError

    meta = store.meta(key)
    if meta is None:
        raise StoreError(f"no store entry {key} under {store.root}")
    path = store.entry_dir(key)
    kd = meta.get("key_dict") or {}
    stim = kd.get("stimuli") if isinstance(kd.get("stimuli"), dict) else {}
    complete = bool(meta.get("complete"))
    committed = sum(1 for i in range(meta["n_shards"]) if (path / sidecar_name(i)).exists())
    kind, dt = entry_kind(meta)
    return EntryInfo(
        key=key, path=path, site=kd.get("site"), pooling=kd.get("pooling"),
        model=kd.get("model"), dataset=stim.get("dataset"), split=stim.get("split"),
        n_items=meta["n_items"], dim=meta.get("dim"), complete=complete,
        n_shards_committed=meta["n_shards"] if complete else committed,
        n_shards=meta["n_shards"], bytes_on_disk=_dir_bytes(path), kind=kind, dtype=dt.name,
        shape=meta.get("shape"), item_ndim=meta.get("item_ndim"), modality=kd.get("modality"),
        key_dict=kd, mtime=(path / META).stat().st_mtime,
    )


def model_label(model: Any) -> str:
    """A short name of a model identity: its checkpoint's last path part, else its adapter
    (``+random`` for random-init weights)."""
    if not isinstance(model, dict):
        return str(model or "?")
    name = str(model.get("checkpoint") or model.get("adapter") or "?").rstrip("/")
    name = name.rsplit("/", 1)[-1] if name.startswith("/") else name
    return name + (" +random" if model.get("random_init") else "")


def human_bytes(n: float) -> str:
    """``n`` bytes as ``12.3 MB`` (powers of 1024)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def _shape_text(info: EntryInfo) -> str:
    if info.kind == "ragged":
        nd = "?" if info.item_ndim is None else info.item_ndim
        return f"{info.n_items} x ragged {nd}-d"
    return "x".join(map(str, info.shape)) if info.shape else f"{info.n_items} x ?"


def ls_rows(store: ActivationStore) -> list[tuple[str, ...]]:
    """One row per entry: key prefix, model, data, site, pooling, shape, dtype, size, state."""
    rows = []
    for info in store.ls():
        state = "complete" if info.complete else (
            f"{info.n_shards_committed}/{info.n_shards} shards"
        )
        rows.append((
            info.key[:12], model_label(info.model), f"{info.dataset}/{info.split}",
            str(info.site), str(info.pooling), _shape_text(info), info.dtype,
            human_bytes(info.bytes_on_disk), state,
        ))
    return rows


LS_HEADER = ("key", "model", "data", "site", "pooling", "shape", "dtype", "size", "state")


# -- gc -----------------------------------------------------------------------------------------
@dataclass
class GcAction:
    """One thing garbage collection removed (or would remove, or skipped)."""

    path: Path
    reason: str
    nbytes: int
    removed: bool


def is_stale(meta: dict[str, Any]) -> bool:
    """Whether an entry was made by another store format or vlprobe / torch / transformers
    version than this installation's (no run of this installation can hit its key)."""
    kd = meta.get("key_dict") or {}
    current = {"store_format": STORE_FORMAT_VERSION, **software_versions()}
    return any(kd.get(name) != value for name, value in current.items())


def _why_remove(
    store: ActivationStore, key: str, *, incomplete: bool, stale: bool,
    older_than_days: float | None,
) -> str | None:
    meta = store.meta(key)
    if meta is None:
        return "orphan (no meta.json)"
    if not meta.get("complete"):
        return "incomplete" if incomplete else None
    if stale and is_stale(meta):
        return "stale (other store format or vlprobe/torch/transformers version)"
    if older_than_days is not None:
        age_days = (time.time() - (store.entry_dir(key) / META).stat().st_mtime) / 86400
        if age_days > older_than_days:
            return f"finalized {age_days:.1f} days ago"
    return None


def collect_garbage(
    store: ActivationStore, *, incomplete: bool = True, stale: bool = False,
    older_than_days: float | None = None, tmp_older_than_s: float = 0.0, dry_run: bool = False,
) -> list[GcAction]:
    """Remove what no run can use, touching only entries whose lock is free.

    Removed: orphan entry directories (no meta.json); incomplete entries (``incomplete``;
    their committed shards would let a rerun resume, so ``vlprobe cache gc --keep-incomplete``
    keeps them); complete entries made by another store format / vlprobe / torch /
    transformers version (``stale``) or finalized more than ``older_than_days`` ago; in
    kept entries, ``.tmp-*`` files older than ``tmp_older_than_s`` (left by killed writers).
    A locked entry (a running extraction) is skipped and reported with ``removed=False``.
    ``dry_run`` reports without removing.
    """
    actions: list[GcAction] = []
    for path in entry_paths(store):
        key = path.name
        with store.try_lock(key) as free:
            if not free:
                actions.append(GcAction(path, "in use (locked by a running process)", 0, False))
                continue
            why = _why_remove(store, key, incomplete=incomplete, stale=stale,
                              older_than_days=older_than_days)
            if why is not None:
                actions.append(GcAction(path, why, _dir_bytes(path), not dry_run))
                if not dry_run:
                    shutil.rmtree(path, ignore_errors=True)
                continue
            now = time.time()
            for f in sorted(path.glob(f"{TMP_PREFIX}*")):
                try:
                    st = f.stat()
                except OSError:
                    continue
                if now - st.st_mtime >= tmp_older_than_s:
                    actions.append(GcAction(f, "leftover temp file", st.st_size, not dry_run))
                    if not dry_run:
                        f.unlink(missing_ok=True)
    return actions


# -- verify -------------------------------------------------------------------------------------
@dataclass
class VerifyResult:
    """One entry checked by :func:`verify_all`: ``status`` is ``ok``, ``corrupt``,
    ``repaired`` (corrupt, removed so it is recomputed) or ``in use`` (locked: skipped)."""

    key: str
    status: str
    complete: bool
    problems: list[str]


def verify_all(store: ActivationStore, *, repair: bool = False) -> list[VerifyResult]:
    """Rehash every entry not locked by a running process (complete entries: their
    consolidated files; others: their committed shards); with ``repair``, corrupted ones
    are removed as :meth:`ActivationStore.verify_entry` describes."""
    results = []
    entry_keys = list(store.keys())
    for key in entry_keys:
        with store.try_lock(key) as free:
            complete = store.is_complete(key)
            if not free:
                results.append(VerifyResult(key, "in use", complete, []))
                continue
            problems = store.verify_entry(key, repair=repair)
            status = "ok" if not problems else ("repaired" if repair else "corrupt")
            results.append(VerifyResult(key, status, complete, problems))
    return results

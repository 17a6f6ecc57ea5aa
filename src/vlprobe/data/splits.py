"""Seeded, stratified split carving and subsampling.

:func:`apply_split_spec` is what :func:`vlprobe.data.load_dataset` applies to a loader's splits
(carve ``test`` from ``train``, drop cross-split duplicates when asked, then subsample each
split). :func:`train_val_split` is THE stratified carve of the package: the dataset's
``test_fraction`` and every analysis' validation carve (``val_fraction``) use it;
:func:`stratified_indices` is the stratified subsample (``subsample``, ``max_items``).

Every function here is deterministic given its seed, never duplicates an item, and never moves
an item into two splits. Item ids therefore stay unique across the splits of one dataset.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from vlprobe.data.duplicates import drop_cross_split_duplicates
from vlprobe.data.stimuli import Stimuli
from vlprobe.errors import DataError

Seed = int | Sequence[int]

# Names a source may use for a split -> the name vlprobe uses.
_SPLIT_ALIASES = {
    "tr": "train",
    "training": "train",
    "va": "validation",
    "val": "validation",
    "valid": "validation",
    "dev": "validation",
    "te": "test",
    "t10k": "test",
    "testing": "test",
}


def canonical_split(name: str) -> str:
    """The vlprobe name of a split: ``val``/``valid``/``dev``/``va`` -> ``validation``,
    ``tr``/``training`` -> ``train``, ``te``/``t10k``/``testing`` -> ``test``; others unchanged."""
    return _SPLIT_ALIASES.get(name.lower(), name)


def _rng(seed: Seed, *tags: int) -> np.random.Generator:
    base = [int(seed)] if np.isscalar(seed) else [int(s) for s in seed]  # type: ignore[union-attr]
    return np.random.default_rng([*base, *tags])


def _tag(text: str) -> int:
    """A stable integer for a string (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode())


def _as_labels(labels: Any) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {arr.shape}")
    return arr


def _allocate(caps: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``n`` draws over classes proportionally to ``caps`` (at most ``caps[k]`` each).

    Largest-remainder rounding of the exact quotas ``n * caps / sum(caps)``; then every class
    with ``caps[k] > 0`` gets at least one draw when ``n`` allows it (so no class is left out of
    a sample that could hold all classes), taken from the classes most above their quota.
    Ties are broken by the seeded ``rng``.
    """
    caps = caps.astype(np.int64)
    quota = n * caps / max(int(caps.sum()), 1)
    alloc = np.minimum(np.floor(quota).astype(np.int64), caps)
    tiebreak = rng.random(len(caps))
    left = n - int(alloc.sum())
    if left > 0:
        frac = quota - alloc
        frac[(caps - alloc) <= 0] = -np.inf
        order = np.lexsort((tiebreak, -frac))
        alloc[order[:left]] += 1
    avail = np.flatnonzero(caps > 0)
    if n >= len(avail):
        for k in avail[alloc[avail] == 0]:
            surplus = alloc - quota
            surplus[alloc <= 1] = -np.inf
            donor = int(np.lexsort((tiebreak, -surplus))[0])
            alloc[donor] -= 1
            alloc[k] += 1
    return alloc


def stratified_indices(labels: Any, n: int, seed: Seed = 0) -> np.ndarray:
    """``n`` distinct indices into ``labels``, stratified by label, sorted ascending.

    Each class gets a share of ``n`` proportional to its size (largest-remainder rounding, so
    a balanced set of 10 classes subsampled to 1000 gives exactly 100 per class), and at least
    one item whenever ``n`` is at least the number of classes. Deterministic for a given seed.
    For unlabelled data pass ``np.zeros(N)`` (one class: a plain seeded random sample).

    Raises:
        DataError: ``n`` is larger than ``len(labels)`` or not positive.
    """
    y = _as_labels(labels)
    n_total = len(y)
    n = int(n)
    if n <= 0:
        raise DataError(f"cannot sample {n} items: the sample size must be positive")
    if n > n_total:
        raise DataError(f"cannot sample {n} items from {n_total}")
    if n == n_total:
        return np.arange(n_total)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    rng = _rng(seed, 1)
    alloc = _allocate(counts, n, rng)
    chosen = []
    for k in range(len(classes)):
        if alloc[k]:
            members = np.flatnonzero(inverse == k)
            chosen.append(rng.choice(members, size=int(alloc[k]), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def train_val_split(
    labels: Any, val_fraction: float, seed: Seed = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..N-1`` into ``(train_idx, val_idx)``, stratified by label.

    ``round(N * val_fraction)`` items (at least 1) go to validation, shared among classes
    proportionally. A class keeps at least one item in train; a class with two or more items
    gets at least one validation item whenever the validation size allows it; a class with a
    single item stays in train. Both index arrays are sorted, disjoint and cover ``0..N-1``.
    For unlabelled data pass ``np.zeros(N)``.

    Raises:
        DataError: ``val_fraction`` outside (0, 1), or no item can be held out (every class
            has a single item).
    """
    y = _as_labels(labels)
    if not 0.0 < float(val_fraction) < 1.0:
        raise DataError(f"a held-out fraction must be in (0, 1), got {val_fraction}")
    n_total = len(y)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    caps = np.maximum(counts - 1, 0)
    if caps.sum() == 0:
        raise DataError(
            f"cannot hold out {val_fraction:.0%} of {n_total} items: every class has a single "
            "item (each must stay in train)"
        )
    n_val = min(max(1, round(n_total * float(val_fraction))), int(caps.sum()))
    rng = _rng(seed, 2)
    alloc = _allocate(caps, n_val, rng)
    val = []
    for k in range(len(classes)):
        if alloc[k]:
            members = np.flatnonzero(inverse == k)
            val.append(rng.choice(members, size=int(alloc[k]), replace=False))
    val_idx = np.sort(np.concatenate(val))
    mask = np.ones(n_total, dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask), val_idx


def _labels_or_zeros(stimuli: Stimuli) -> np.ndarray:
    return stimuli.labels if stimuli.labels is not None else np.zeros(len(stimuli), np.int64)


def _with_source(stimuli: Stimuli, **extra: Any) -> Stimuli:
    return replace(stimuli, source={**stimuli.source, **extra})


def apply_split_spec(splits: Mapping[str, Stimuli], spec: Any) -> dict[str, Stimuli]:
    """Apply ``spec.test_fraction``, ``spec.drop_cross_split_duplicates`` and
    ``spec.subsample`` to a loader's splits.

    1. Carving: when ``spec.test_fraction`` is set and the source has no ``test`` split, a
       ``test`` split of that fraction is carved from ``train`` (or from the only split when
       there is exactly one and it is not called ``train``), stratified by label when
       labelled, seeded by ``spec.seed``. When the source has a ``test`` split, the fraction
       is ignored and ``test.source["test_fraction_ignored"]`` says so.
    2. Duplicates: with ``spec.drop_cross_split_duplicates``, items of a held-out split with
       the same content as an item of an earlier split (train before validation before
       test; :mod:`vlprobe.data.duplicates`) are dropped, before subsampling (so a subsample
       of the test split is drawn from its clean part).
    3. Subsampling: ``spec.subsample = {"train": 1000, "test": 500}`` keeps that many items
       of each named split (stratified by label, seeded, original order kept). Split names
       accept aliases (``val`` for ``validation``, ...). Asking for more items than a split
       has is a :class:`DataError` naming the split and both sizes; an unknown split name too.

    Deterministic: the same spec gives the same items. The result's ids are unique across
    splits (checked).
    """
    out: dict[str, Stimuli] = dict(splits)
    if not out:
        raise DataError(f"dataset {getattr(spec, 'name', '')!r}: the loader returned no splits")
    seed = int(getattr(spec, "seed", 0) or 0)

    fraction = getattr(spec, "test_fraction", None)
    if fraction is not None:
        if not 0.0 < float(fraction) < 1.0:
            raise DataError(f"test_fraction must be in (0, 1), got {fraction}")
        if "test" in out:
            out["test"] = _with_source(
                out["test"], test_fraction_ignored="the source has a test split"
            )
        else:
            if "train" in out:
                origin = "train"
            elif len(out) == 1:
                origin = next(iter(out))
            else:
                raise DataError(
                    f"test_fraction needs a 'train' split to carve 'test' from; the dataset has "
                    f"{sorted(out)}"
                )
            whole = out[origin]
            if len(whole) < 2:
                raise DataError(
                    f"cannot carve a test split from {origin!r}: it has {len(whole)} item"
                )
            tr_idx, te_idx = train_val_split(
                _labels_or_zeros(whole), fraction, (seed, _tag("test"))
            )
            info = {"carved_from": origin, "test_fraction": float(fraction), "seed": seed}
            out[origin] = _with_source(whole.subset(tr_idx), **info)
            out["test"] = _with_source(whole.subset(te_idx, split="test"), **info)

    if getattr(spec, "drop_cross_split_duplicates", False):
        out = drop_cross_split_duplicates(out)

    subsample = dict(getattr(spec, "subsample", None) or {})
    for key, n in subsample.items():
        name = key if key in out else canonical_split(key)
        if name not in out:
            raise DataError(
                f"subsample names split {key!r}, but the dataset has only {sorted(out)}"
            )
        part = out[name]
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise DataError(f"subsample[{key!r}] must be a positive integer, got {n!r}")
        if n > len(part):
            raise DataError(
                f"subsample[{key!r}] = {n} is larger than split {name!r} ({len(part)} items)"
            )
        if n == len(part):
            continue
        idx = stratified_indices(_labels_or_zeros(part), int(n), (seed, _tag(name)))
        out[name] = _with_source(
            part.subset(idx), subsample=int(n), subsampled_from=len(part), seed=seed
        )

    seen: dict[str, str] = {}
    for name, part in out.items():
        for item_id in part.ids:
            other = seen.setdefault(item_id, name)
            if other != name:
                raise DataError(
                    f"dataset {part.dataset!r}: item id {item_id!r} is in both split {other!r} "
                    f"and {name!r} (ids must be unique across splits)"
                )
    return out


__all__ = ["apply_split_spec", "canonical_split", "stratified_indices", "train_val_split"]

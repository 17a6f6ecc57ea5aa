"""Items with the same content in two splits (train/test leakage), found by content digests.

Item ids cannot reveal leakage: they embed the split name (``train/17``, ``test/3``), so the
same image in train and in test has two different ids. Here two items are the same when
their payloads are:

- images: the same encoded bytes (``ImageSource.digests``: sha1 of the bytes, or of the
  pixels for array sources). Folders of image files carry size + mtime digests (listing a big
  folder reads no file), so for them equal file sizes only mark candidates, and the files of
  the candidates are read and hashed (:meth:`ImageSource.content_digest`);
- texts: the same text after :func:`normalise_text` (Unicode NFKC, case folded, runs of
  whitespace collapsed, stripped);
- items with both an image and a text: both parts equal.

Exact duplicates only: a re-encoded or resized copy of an image is not found (CIFAR-10's
known test-set near-duplicates, Barz & Denzler 2020, need a perceptual comparison).

:func:`cross_split_duplicates` lists the duplicates among the splits of a dataset (for the
run record and the analyses' notes); :func:`drop_cross_split_duplicates` removes them from
the held-out splits (the dataset option ``drop_cross_split_duplicates: true``).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from vlprobe.data.stimuli import Stimuli
from vlprobe.errors import DataError

N_EXAMPLES = 3
_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """The form texts are compared in: NFKC, case folded, whitespace runs -> one space."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _text_digest(text: str) -> str:
    return hashlib.sha1(normalise_text(text).encode()).hexdigest()


def _keys(stimuli: Stimuli, image_keys: Sequence[str]) -> list[str]:
    texts = [_text_digest(t) for t in stimuli.texts] if stimuli.texts is not None else None
    return [
        f"{image_keys[i] if stimuli.images is not None else '-'}|{texts[i] if texts else '-'}"
        for i in range(len(stimuli))
    ]


def _needs_confirmation(stimuli: Stimuli) -> bool:
    return stimuli.images is not None and stimuli.images.files is not None


def shared_content(first: Stimuli, second: Stimuli) -> list[tuple[int, int]]:
    """``(i, j)`` for every item ``i`` of ``first`` and ``j`` of ``second`` with the same
    content (see the module docstring), ordered by ``j`` then ``i``."""
    keys_first, keys_second = (
        _keys(s, s.images.content_candidates() if s.images is not None else [])
        for s in (first, second)
    )
    by_key: dict[str, list[int]] = {}
    for i, key in enumerate(keys_first):
        by_key.setdefault(key, []).append(i)
    pairs = [(i, j) for j, key in enumerate(keys_second) for i in by_key.get(key, ())]
    if not pairs or not (_needs_confirmation(first) or _needs_confirmation(second)):
        return pairs
    # equal file sizes only: compare the bytes of the candidate files
    exact: dict[tuple[int, int], str] = {}

    def digest(which: int, stim: Stimuli, index: int) -> str:
        if (which, index) not in exact:
            exact[(which, index)] = stim.images.content_digest(index)  # type: ignore[union-attr]
        return exact[(which, index)]

    return [(i, j) for i, j in pairs if digest(0, first, i) == digest(1, second, j)]


@dataclass(frozen=True)
class SplitDuplicates:
    """Items of ``split`` whose content also occurs in the earlier split ``other``.

    Attributes:
        split / other: split names (``other`` comes first in :func:`split_order`).
        ids: ids in ``split`` of the duplicated items (each once).
        examples: up to 3 ``(id in split, id in other)`` pairs.
    """

    split: str
    other: str
    ids: tuple[str, ...]
    examples: tuple[tuple[str, str], ...]

    @property
    def count(self) -> int:
        return len(self.ids)

    def describe(self, dataset: str) -> str:
        eg = ", ".join(f"{a} = {b}" for a, b in self.examples)
        return (f"dataset {dataset!r}: {self.count} item(s) of split {self.split!r} have the "
                f"same content as items of split {self.other!r} (e.g. {eg})")


def find_duplicates(first: Stimuli, second: Stimuli) -> SplitDuplicates | None:
    """The items of ``second`` that duplicate items of ``first`` (None when there are none)."""
    pairs = shared_content(first, second)
    if not pairs:
        return None
    ids = tuple(dict.fromkeys(second.ids[j] for _, j in pairs))
    seen: set[int] = set()
    examples = []
    for i, j in pairs:
        if j not in seen and len(examples) < N_EXAMPLES:
            seen.add(j)
            examples.append((second.ids[j], first.ids[i]))
    return SplitDuplicates(second.split, first.split, ids, tuple(examples))


def split_order(names: Sequence[str]) -> list[str]:
    """Splits from the one that is fitted to the most held-out: ``train`` first, the others in
    their order, then ``validation``, then ``test``."""
    rank = {"train": 0, "validation": 2, "test": 3}
    return sorted(names, key=lambda n: rank.get(n, 1))  # stable: the others keep their order


def cross_split_duplicates(splits: Mapping[str, Stimuli]) -> list[SplitDuplicates]:
    """For every pair of splits (earlier, later in :func:`split_order`), the items of the later
    one that duplicate items of the earlier one."""
    order = split_order(list(splits))
    found = []
    for k, later in enumerate(order):
        for earlier in order[:k]:
            dup = find_duplicates(splits[earlier], splits[later])
            if dup is not None:
                found.append(dup)
    return found


def drop_cross_split_duplicates(splits: Mapping[str, Stimuli]) -> dict[str, Stimuli]:
    """The splits without the items that duplicate an item of an earlier split (in
    :func:`split_order`: a test item equal to a train or validation item goes, the train item
    stays). What was dropped is recorded in ``source["dropped_cross_split_duplicates"]`` of
    each affected split (count, count per earlier split, example id pairs).

    Raises:
        DataError: a split would be left empty.
    """
    out = dict(splits)
    order = split_order(list(out))
    for k, name in enumerate(order[1:], start=1):
        found = [d for d in (find_duplicates(out[e], out[name]) for e in order[:k]) if d]
        if not found:
            continue
        drop = {i for d in found for i in d.ids}
        part = out[name]
        keep = np.flatnonzero([item_id not in drop for item_id in part.ids])
        if len(keep) == 0:
            raise DataError(
                f"dataset {part.dataset!r}: every item of split {name!r} also occurs in "
                f"{', '.join(repr(d.other) for d in found)}; dropping the duplicates "
                "(drop_cross_split_duplicates) would leave it empty"
            )
        info = {"n": len(drop), "with": {d.other: d.count for d in found},
                "examples": [list(e) for d in found for e in d.examples][:N_EXAMPLES]}
        subset = part.subset(keep)
        out[name] = replace(subset, source={**subset.source,
                                            "dropped_cross_split_duplicates": info})
    return out


__all__ = [
    "SplitDuplicates",
    "cross_split_duplicates",
    "drop_cross_split_duplicates",
    "find_duplicates",
    "normalise_text",
    "shared_content",
    "split_order",
]

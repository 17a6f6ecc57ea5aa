"""Split carving and subsampling: deterministic, stratified, never duplicating or leaking."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlprobe.data import DatasetSpec
from vlprobe.data.splits import (
    apply_split_spec,
    canonical_split,
    stratified_indices,
    train_val_split,
)
from vlprobe.data.stimuli import Stimuli
from vlprobe.errors import DataError


def _stimuli(split: str, labels, prefix: str | None = None) -> Stimuli:
    labels = np.asarray(labels, dtype=np.int64)
    prefix = prefix or split
    return Stimuli(
        dataset="toy",
        split=split,
        ids=[f"{prefix}/{i}" for i in range(len(labels))],
        texts=[f"text {prefix} {i}" for i in range(len(labels))],
        labels=labels,
        label_names=[f"c{k}" for k in range(int(labels.max()) + 1)],
        source={"loader": "toy"},
    )


def _unlabelled(split: str, n: int) -> Stimuli:
    return Stimuli(dataset="toy", split=split, ids=[f"{split}/{i}" for i in range(n)],
                   texts=["x"] * n)


def test_canonical_split_names():
    assert canonical_split("val") == "validation"
    assert canonical_split("dev") == "validation"
    assert canonical_split("t10k") == "test"
    assert canonical_split("tr") == "train"
    assert canonical_split("sample") == "sample"


def test_stratified_indices_balanced_exact():
    labels = np.repeat(np.arange(10), 50)
    idx = stratified_indices(labels, 100, seed=3)
    assert len(idx) == len(set(idx.tolist())) == 100
    assert np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx]).tolist() == [10] * 10


def test_stratified_indices_deterministic_and_seed_dependent():
    labels = np.random.default_rng(0).integers(0, 4, size=300)
    a = stratified_indices(labels, 50, seed=1)
    b = stratified_indices(labels, 50, seed=1)
    c = stratified_indices(labels, 50, seed=2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_stratified_indices_keeps_rare_class():
    labels = np.array([0] * 97 + [1, 2, 2])
    idx = stratified_indices(labels, 10, seed=0)
    assert set(labels[idx].tolist()) == {0, 1, 2}


def test_stratified_indices_too_many_and_all():
    labels = np.zeros(5)
    with pytest.raises(DataError, match="cannot sample 6 items from 5"):
        stratified_indices(labels, 6)
    with pytest.raises(DataError, match="positive"):
        stratified_indices(labels, 0)
    assert stratified_indices(labels, 5).tolist() == [0, 1, 2, 3, 4]


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8),
    fraction=st.floats(min_value=0.01, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_stratified_indices_property(counts, fraction, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(labels)
    n = max(1, round(fraction * len(labels)))
    idx = stratified_indices(labels, n, seed=seed)
    assert len(idx) == n
    assert len(np.unique(idx)) == n
    assert idx.min() >= 0 and idx.max() < len(labels)
    assert np.array_equal(idx, stratified_indices(labels, n, seed=seed))
    got = np.bincount(labels[idx], minlength=len(counts))
    assert np.all(got <= np.asarray(counts))
    if n >= len(counts):  # every class represented
        assert np.all(got >= 1)
    # proportional: each class within 1 of its exact share, plus what the minimum-one rule
    # moves to classes whose share is below one item
    share = n * np.asarray(counts) / len(labels)
    bumped = int(np.sum(share < 1)) if n >= len(counts) else 0
    assert np.all(np.abs(got - share) <= 1 + bumped)


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=2, max_value=30), min_size=1, max_size=6),
    fraction=st.floats(min_value=0.05, max_value=0.6),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_train_val_split_property(counts, fraction, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    tr, va = train_val_split(labels, fraction, seed)
    assert len(np.intersect1d(tr, va)) == 0
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(labels)))
    # every class keeps at least one training item
    assert set(labels[tr].tolist()) == set(range(len(counts)))
    tr2, va2 = train_val_split(labels, fraction, seed)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)


def test_train_val_split_every_class_in_val_when_possible():
    labels = np.repeat(np.arange(5), 10)
    tr, va = train_val_split(labels, 0.2, seed=0)
    assert len(va) == 10
    assert np.bincount(labels[va]).tolist() == [2] * 5
    assert np.bincount(labels[tr]).tolist() == [8] * 5


def test_train_val_split_errors():
    with pytest.raises(DataError, match=r"\(0, 1\)"):
        train_val_split(np.zeros(10), 1.0)
    with pytest.raises(DataError, match="single item"):
        train_val_split(np.arange(4), 0.5)


def test_carve_test_from_train_stratified():
    train = _stimuli("train", np.repeat(np.arange(4), 25))
    spec = DatasetSpec(loader="toy", test_fraction=0.2, seed=7)
    out = apply_split_spec({"train": train}, spec)
    assert set(out) == {"train", "test"}
    assert len(out["train"]) == 80 and len(out["test"]) == 20
    assert np.bincount(out["test"].labels).tolist() == [5, 5, 5, 5]
    assert not set(out["train"].ids) & set(out["test"].ids)
    assert set(out["train"].ids) | set(out["test"].ids) == set(train.ids)
    assert out["test"].split == "test" and out["test"].source["carved_from"] == "train"
    again = apply_split_spec({"train": train}, spec)
    assert again["test"].ids == out["test"].ids
    other = apply_split_spec({"train": train}, DatasetSpec(loader="toy", test_fraction=0.2, seed=8))
    assert other["test"].ids != out["test"].ids


def test_carve_ignored_when_source_has_test():
    splits = {"train": _stimuli("train", [0, 1] * 5), "test": _stimuli("test", [0, 1] * 3)}
    out = apply_split_spec(splits, DatasetSpec(loader="toy", test_fraction=0.5))
    assert len(out["train"]) == 10 and len(out["test"]) == 6
    assert "test_fraction_ignored" in out["test"].source


def test_carve_from_single_non_train_split():
    out = apply_split_spec(
        {"sample": _stimuli("sample", [0, 1] * 10)}, DatasetSpec(loader="toy", test_fraction=0.25)
    )
    assert len(out["sample"]) == 15 and len(out["test"]) == 5


def test_carve_unlabelled():
    out = apply_split_spec({"train": _unlabelled("train", 10)},
                           DatasetSpec(loader="toy", test_fraction=0.3))
    assert len(out["test"]) == 3 and len(out["train"]) == 7


def test_subsample_per_split_stratified_and_deterministic():
    splits = {
        "train": _stimuli("train", np.repeat(np.arange(3), 30)),
        "test": _stimuli("test", np.repeat(np.arange(3), 10)),
    }
    spec = DatasetSpec(loader="toy", subsample={"train": 30, "test": 9}, seed=1)
    out = apply_split_spec(splits, spec)
    assert np.bincount(out["train"].labels).tolist() == [10, 10, 10]
    assert np.bincount(out["test"].labels).tolist() == [3, 3, 3]
    assert set(out["train"].ids) <= set(splits["train"].ids)
    assert out["train"].source["subsampled_from"] == 90
    assert apply_split_spec(splits, spec)["train"].ids == out["train"].ids
    # the loader's splits are not modified
    assert len(splits["train"]) == 90


def test_carve_then_subsample_no_leak():
    train = _stimuli("train", np.repeat(np.arange(2), 50))
    spec = DatasetSpec(loader="toy", test_fraction=0.2, subsample={"train": 40, "test": 10})
    out = apply_split_spec({"train": train}, spec)
    assert len(out["train"]) == 40 and len(out["test"]) == 10
    assert not set(out["train"].ids) & set(out["test"].ids)


def test_subsample_errors():
    splits = {"train": _stimuli("train", [0, 1] * 5)}
    msg = r"subsample\['train'\] = 11 is larger than split 'train' \(10"
    with pytest.raises(DataError, match=msg):
        apply_split_spec(splits, DatasetSpec(loader="toy", subsample={"train": 11}))
    with pytest.raises(DataError, match="only \\['train'\\]"):
        apply_split_spec(splits, DatasetSpec(loader="toy", subsample={"tset": 5}))
    with pytest.raises(DataError, match="positive integer"):
        apply_split_spec(splits, DatasetSpec(loader="toy", subsample={"train": 0}))
    same = apply_split_spec(splits, DatasetSpec(loader="toy", subsample={"train": 10}))
    assert same["train"].ids == splits["train"].ids


def test_subsample_split_alias():
    splits = {"validation": _stimuli("validation", [0, 1] * 5)}
    out = apply_split_spec(splits, DatasetSpec(loader="toy", subsample={"val": 4}))
    assert len(out["validation"]) == 4


def test_duplicate_ids_across_splits_rejected():
    splits = {"train": _stimuli("train", [0, 1], prefix="x"), "test": _stimuli("test", [0], "x")}
    with pytest.raises(DataError, match="unique across splits"):
        apply_split_spec(splits, DatasetSpec(loader="toy"))


def test_bad_test_fraction():
    with pytest.raises(DataError, match="test_fraction"):
        apply_split_spec({"train": _stimuli("train", [0, 1])},
                         DatasetSpec(loader="toy", test_fraction=1.5))

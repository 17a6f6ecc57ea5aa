"""Flickr8k in the reference kit: the official 6k / 1k / 1k split, 5 captions per image."""

from __future__ import annotations

from vlprobe.data import DatasetSpec, load_dataset


def test_official_split_and_views(reference_dir):
    root = reference_dir / "captions" / "flickr8k"
    images = load_dataset(DatasetSpec(loader="flickr8k", path=str(root),
                                      options={"view": "image"}))
    assert {k: len(v) for k, v in images.items()} == {
        "train": 6000, "validation": 1000, "test": 1000}
    assert all(len(c) == 5 for c in images["test"].descriptors["captions"])
    digests = {s: set(v.images.digests) for s, v in images.items()}
    assert not digests["train"] & digests["test"] and not digests["validation"] & digests["test"]
    pairs = load_dataset(DatasetSpec(loader="flickr8k", path=str(root)))["test"]
    assert len(pairs) == 5000 and len(pairs.unique_images()[0]) == 1000
    first = pairs.payloads("pair", [0])[0]
    assert first[0].size == (160, 160) and first[1].startswith("A blond woman")

"""Cross-split duplicates on real CIFAR-10 (skipped without VLPROBE_REFERENCE).

Digests only: the images are never decoded (the whole 60k-image check takes about a second).
"""

from __future__ import annotations

import pytest

from vlprobe.data import DatasetSpec, load_dataset
from vlprobe.data.duplicates import cross_split_duplicates, find_duplicates


@pytest.fixture(scope="module")
def cifar_dir(reference_dir):
    return reference_dir / "images/cifar10"


def test_cifar10_train_test_exact_duplicates(cifar_dir):
    """The kit's CIFAR-10 (JPEG re-encodings) has no byte-identical image in both train and
    test (checked once by decoding all 60k: no pixel-identical pair either). Its known
    duplicates are near-duplicates (Barz & Denzler 2020), out of reach of exact digests."""
    cifar = load_dataset(DatasetSpec("hf_parquet", name="cifar10", path=str(cifar_dir)))
    assert len(cifar["train"]) == 50000 and len(cifar["test"]) == 10000
    assert find_duplicates(cifar["train"], cifar["test"]) is None
    assert cross_split_duplicates(cifar) == []
    # every digest is distinct inside each split too: a duplicate would be visible
    for split in cifar.values():
        assert len(set(split.images.digests)) == len(split)


def test_real_images_planted_into_train_are_found_and_dropped(cifar_dir, tmp_path):
    """7 real test images copied into a 1000-image train split: found through the loader,
    reported, and dropped from test with the dataset option."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    train = pq.read_table(cifar_dir / "train.parquet").slice(0, 1000)
    test = pq.read_table(cifar_dir / "test.parquet").slice(0, 300)
    planted = [3, 41, 42, 100, 150, 201, 299]
    copies = test.take(pa.array(planted)).cast(train.schema)
    pq.write_table(pa.concat_tables([train, copies]), tmp_path / "train.parquet")
    pq.write_table(test, tmp_path / "test.parquet")
    (tmp_path / "label_names.json").write_text((cifar_dir / "label_names.json").read_text())

    spec = DatasetSpec("hf_parquet", name="mix", path=str(tmp_path))
    splits = load_dataset(spec)
    (dup,) = cross_split_duplicates(splits)
    assert (dup.split, dup.other, dup.count) == ("test", "train", 7)
    assert set(dup.ids) == {f"test/{i}" for i in planted}
    assert dup.examples[0] == ("test/3", "train/1000")

    clean = load_dataset(DatasetSpec("hf_parquet", name="mix", path=str(tmp_path),
                                     drop_cross_split_duplicates=True))
    assert len(clean["test"]) == 300 - 7 and len(clean["train"]) == 1007
    assert not {f"test/{i}" for i in planted} & set(clean["test"].ids)
    assert cross_split_duplicates(clean) == []

"""The flickr8k loader on a tiny parquet in the reference kit's layout."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlprobe.data import DatasetSpec, load_dataset
from vlprobe.errors import DataError


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((16, 16, 3)) * 255).astype("uint8")).save(buf, "JPEG")
    return buf.getvalue()


def write_split(root: Path, split: str, n: int, seed: int, captions=None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [f"{split}_{i}.jpg" for i in range(n)]
    caps = captions or [[f"image {split} {i} caption {k}" for k in range(5)] for i in range(n)]
    table = pa.table({
        "image": [{"bytes": _jpeg(seed + i), "path": f} for i, f in enumerate(ids)],
        "image_id": ids,
        "captions": caps,
    })
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / f"{split}.parquet")


@pytest.fixture()
def tiny_flickr(tmp_path) -> Path:
    root = tmp_path / "flickr8k"
    for j, (split, n) in enumerate((("train", 6), ("validation", 2), ("test", 3))):
        write_split(root, split, n, 100 * j)
    return root


def _load(root, **options):
    return load_dataset(DatasetSpec(loader="flickr8k", name="f8k", path=str(root),
                                    options=options, seed=3))


def test_caption_view_pairs_each_caption_with_its_image(tiny_flickr):
    splits = _load(tiny_flickr)
    assert {k: len(v) for k, v in splits.items()} == {"train": 30, "validation": 10, "test": 15}
    test = splits["test"]
    assert test.modalities == ("image", "text", "pair")
    assert test.ids[:2] == ["test/test_0.jpg#0", "test/test_0.jpg#1"]
    assert test.descriptors["image_id"][5] == "test_1.jpg" and test.texts[5].endswith("1 caption 0")
    view, inverse = test.unique_images()
    assert len(view) == 3 and inverse.tolist() == [0] * 5 + [1] * 5 + [2] * 5


def test_image_view_and_caption_cap(tiny_flickr):
    test = _load(tiny_flickr, view="image")["test"]
    assert len(test) == 3 and test.modalities == ("image",)
    assert len(test.descriptors["captions"][0]) == 5
    two = _load(tiny_flickr, captions_per_image=2)["train"]
    assert len(two) == 12


def test_itm_negatives_never_equal_the_true_caption(tiny_flickr):
    test = _load(tiny_flickr, view="itm", negatives=2)["test"]
    assert len(test) == 45 and test.label_names == ["mismatch", "match"]
    labels = test.labels
    assert labels.sum() == 15
    true = test.descriptors["true_caption"]
    for text, label, truth, image_id in zip(test.texts, labels, true,
                                            test.descriptors["image_id"]):
        if label == 0:
            assert text != truth and image_id.split(".")[0] not in text.replace(" ", "_")
        else:
            assert text == truth
    again = _load(tiny_flickr, view="itm", negatives=2)["test"]
    assert again.texts == test.texts  # seeded


def test_bad_input_is_named(tmp_path):
    root = tmp_path / "bad"
    caps = [[f"c {k}" for k in range(5)], []]
    write_split(root, "test", 2, 0, captions=caps)
    with pytest.raises(DataError, match=r"row 1 \(image 'test_1.jpg'\) has no captions"):
        _load(root)
    caps = [["fine", "  ", "x", "y", "z"]]
    write_split(root, "test", 1, 0, captions=caps)
    with pytest.raises(DataError, match="caption #1 is empty"):
        _load(root)
    with pytest.raises(DataError, match="view must be one of"):
        _load(root, view="captions")
    with pytest.raises(DataError, match="does not exist"):
        _load(tmp_path / "nowhere")
    with pytest.raises(DataError, match="unknown option"):
        _load(root, negative=2)

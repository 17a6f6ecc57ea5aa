"""Image loaders on tiny fixture files: hf_parquet, image_folder, idx/mnist/fashion_mnist,
skimage_photos."""

from __future__ import annotations

import gzip
import io
import json
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlprobe.data import DatasetSpec, load_dataset
from vlprobe.errors import DataError, UnknownNameError


def _png(color=(255, 0, 0), size=(8, 6), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 128).save(buf, format="PNG")
    return buf.getvalue()


def _write_parquet(path: Path, labels, *, names=None, blobs=None, extra=None, metadata=True):
    blobs = blobs if blobs is not None else [_png((10 * i % 255, 0, 0)) for i in range(len(labels))]
    columns = {
        "image": pa.array(
            [{"bytes": b, "path": f"{i:04d}.png"} for i, b in enumerate(blobs)],
            type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        ),
        "label": pa.array(labels, type=pa.int64() if labels and isinstance(labels[0], int)
                          else pa.string()),
    }
    columns.update(extra or {})
    table = pa.table(columns)
    if metadata and names is not None:
        table = table.replace_schema_metadata({"label_names": json.dumps(names)})
    pq.write_table(table, path)
    return path


# --- hf_parquet --------------------------------------------------------------------------------


def test_parquet_directory_of_splits(tmp_path):
    _write_parquet(tmp_path / "train.parquet", [0, 1, 2, 0, 1, 2], names=["a", "b", "c"])
    _write_parquet(tmp_path / "test.parquet", [2, 1, 0], names=["a", "b", "c"])
    out = load_dataset(DatasetSpec("hf_parquet", name="toy", path=str(tmp_path)))
    assert set(out) == {"train", "test"}
    train = out["train"]
    assert train.dataset == "toy" and len(train) == 6
    assert train.label_names == ["a", "b", "c"]
    assert train.labels.tolist() == [0, 1, 2, 0, 1, 2]
    img = train.images[1]
    assert img.mode == "RGB" and img.size == (8, 6)
    assert train.images.names[1] == "train.parquet[row 1]"
    assert not set(train.ids) & set(out["test"].ids)
    assert train.source["loader"] == "hf_parquet"
    import hashlib

    assert train.images.digests[0] == hashlib.sha1(_png((0, 0, 0))).hexdigest()


def test_parquet_single_file_split_from_stem_and_option(tmp_path):
    f = _write_parquet(tmp_path / "sample.parquet", [0, 1], names=["x", "y"])
    assert list(load_dataset(DatasetSpec("parquet", path=str(f)))) == ["sample"]
    out = load_dataset(DatasetSpec("hf_parquet", path=str(f), options={"split": "test"}))
    assert list(out) == ["test"]


def test_parquet_label_names_json_beside(tmp_path):
    _write_parquet(tmp_path / "train.parquet", [0, 1], names=None)
    (tmp_path / "label_names.json").write_text('["cat", "dog"]')
    out = load_dataset(DatasetSpec("hf_parquet", path=str(tmp_path)))
    assert out["train"].label_names == ["cat", "dog"]


def test_parquet_label_names_file_and_list_options(tmp_path):
    f = _write_parquet(tmp_path / "s.parquet", [0, 2], names=["n0", "n1", "n2"])
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"my_classes": ["zero", "one", "two"], "templates": ["{}"]}))
    out = load_dataset(DatasetSpec("hf_parquet", path=str(f),
                                   options={"label_names_file": "names.json"}))
    assert out["s"].label_names == ["zero", "one", "two"]
    out = load_dataset(DatasetSpec("hf_parquet", path=str(f),
                                   options={"label_names": ["A", "B", "C"]}))
    assert out["s"].label_names == ["A", "B", "C"]


def test_parquet_string_labels_text_and_descriptor_columns(tmp_path):
    f = _write_parquet(
        tmp_path / "train.parquet",
        ["dog", "cat", "dog"],
        extra={"caption": pa.array(["a", "b", "c"]), "wnid": pa.array(["n1", "n2", "n1"])},
    )
    out = load_dataset(DatasetSpec("hf_parquet", path=str(f), options={
        "text_column": "caption", "descriptor_columns": ["wnid"]}))["train"]
    assert out.label_names == ["cat", "dog"]
    assert out.labels.tolist() == [1, 0, 1]
    assert out.texts == ["a", "b", "c"]
    assert out.modalities == ("image", "text", "pair")
    assert out.descriptors["wnid"] == ["n1", "n2", "n1"]


def test_parquet_unlabelled_option(tmp_path):
    f = _write_parquet(tmp_path / "train.parquet", [0, 1], names=["a", "b"])
    out = load_dataset(DatasetSpec("hf_parquet", path=str(f), options={"label_column": None}))
    assert out["train"].labels is None and out["train"].label_names is None


def test_parquet_short_label_names_names_the_file(tmp_path):
    _write_parquet(tmp_path / "train.parquet", [0, 1, 5], names=["a", "b"])
    with pytest.raises(DataError, match=r"train\.parquet.*label 5 has no name.*2 label_names"):
        load_dataset(DatasetSpec("hf_parquet", path=str(tmp_path)))


def test_parquet_missing_column_and_bad_files(tmp_path):
    f = _write_parquet(tmp_path / "train.parquet", [0, 1], names=["a", "b"])
    with pytest.raises(DataError, match=r"no column 'pixels'.*columns"):
        load_dataset(DatasetSpec("hf_parquet", path=str(f), options={"image_column": "pixels"}))
    bad = tmp_path / "broken" / "train.parquet"
    bad.parent.mkdir()
    bad.write_bytes(b"not a parquet file at all")
    with pytest.raises(DataError, match=r"broken/train.parquet"):
        load_dataset(DatasetSpec("hf_parquet", path=str(bad.parent)))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match=r"no .parquet files"):
        load_dataset(DatasetSpec("hf_parquet", path=str(tmp_path / "empty_dir")))


def test_parquet_empty_file(tmp_path):
    f = _write_parquet(tmp_path / "train.parquet", [], names=["a"], blobs=[])
    with pytest.raises(DataError, match="no rows"):
        load_dataset(DatasetSpec("hf_parquet", path=str(f)))


def test_parquet_corrupt_image_raise_names_row_and_skip_counts(tmp_path):
    blobs = [_png(), b"garbage bytes", _png((0, 255, 0))]
    f = _write_parquet(tmp_path / "train.parquet", [0, 1, 0], names=["a", "b"], blobs=blobs)
    out = load_dataset(DatasetSpec("hf_parquet", path=str(f)))["train"]
    assert len(out) == 3  # lazy: nothing decoded at load time
    with pytest.raises(DataError, match=r"train\.parquet\[row 1\]"):
        out.images[1]
    skipped = load_dataset(DatasetSpec("hf_parquet", path=str(f), on_error="skip"))["train"]
    assert len(skipped) == 2
    assert skipped.ids == ["train/0", "train/2"]
    assert skipped.source["skipped"] == ["train.parquet[row 1]"]
    with pytest.raises(DataError, match="on_error"):
        load_dataset(DatasetSpec("hf_parquet", path=str(f), on_error="ignore"))


def test_parquet_all_images_corrupt_with_skip(tmp_path):
    f = _write_parquet(tmp_path / "train.parquet", [0], names=["a"], blobs=[b"xx"])
    with pytest.raises(DataError, match="unreadable"):
        load_dataset(DatasetSpec("hf_parquet", path=str(f), on_error="skip"))


def test_parquet_sharded_directory(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write_parquet(data / "train-00000-of-00002.parquet", [0, 1], names=["a", "b"])
    _write_parquet(data / "train-00001-of-00002.parquet", [1, 1], names=["a", "b"])
    _write_parquet(data / "validation-00000-of-00001.parquet", [0], names=["a", "b"])
    out = load_dataset(DatasetSpec("hf_parquet", path=str(tmp_path)))
    assert set(out) == {"train", "validation"}
    assert out["train"].labels.tolist() == [0, 1, 1, 1]
    assert out["train"].ids == ["train/0", "train/1", "train/2", "train/3"]
    assert out["train"].images.names[2] == "train-00001-of-00002.parquet[row 0]"


def test_missing_path_and_unknown_loader(tmp_path):
    with pytest.raises(DataError, match="nope"):
        load_dataset(DatasetSpec("hf_parquet", path=str(tmp_path / "nope")))
    with pytest.raises(DataError, match="needs a path"):
        load_dataset(DatasetSpec("image_folder"))
    with pytest.raises(UnknownNameError, match="Did you mean 'hf_parquet'"):
        load_dataset(DatasetSpec("hf_parqet", path=str(tmp_path)))


def test_parquet_subsample_through_load_dataset(tmp_path):
    _write_parquet(tmp_path / "train.parquet", [0] * 10 + [1] * 10, names=["a", "b"])
    spec = DatasetSpec("hf_parquet", path=str(tmp_path), subsample={"train": 6}, seed=2)
    out = load_dataset(spec)["train"]
    assert np.bincount(out.labels).tolist() == [3, 3]
    assert load_dataset(spec)["train"].fingerprint() == out.fingerprint()


# --- image_folder ------------------------------------------------------------------------------


def _folder(root: Path, layout: dict[str, int], mode="RGB") -> None:
    for rel, n in layout.items():
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (d / f"img{i}.png").write_bytes(_png(mode=mode))


def test_image_folder_single_split(tmp_path):
    _folder(tmp_path, {"dog": 2, "cat": 3})
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    out = load_dataset(DatasetSpec("image_folder", path=str(tmp_path)))
    train = out["train"]
    assert list(out) == ["train"]
    assert train.label_names == ["cat", "dog"]
    assert train.labels.tolist() == [0, 0, 0, 1, 1]
    assert train.ids[0] == "cat/img0.png"
    assert train.images[4].size == (8, 6)


def test_image_folder_splits_share_labels_and_grayscale(tmp_path):
    _folder(tmp_path, {"train/ant": 2, "train/bee": 1, "val/bee": 2}, mode="L")
    out = load_dataset(DatasetSpec("image_folder", path=str(tmp_path)))
    assert set(out) == {"train", "validation"}
    assert out["validation"].labels.tolist() == [1, 1]
    assert out["validation"].label_names == ["ant", "bee"]
    assert out["validation"].ids[0] == "val/bee/img0.png"
    assert out["train"].images[0].mode == "RGB"


def test_image_folder_unlabelled_and_empty(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    out = load_dataset(DatasetSpec("image_folder", path=str(tmp_path)))["train"]
    assert out.labels is None and out.ids == ["a.png"]
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_dataset(DatasetSpec("image_folder", path=str(empty)))


def test_image_folder_corrupt_file(tmp_path):
    _folder(tmp_path, {"a": 2})
    bad = tmp_path / "a" / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    out = load_dataset(DatasetSpec("image_folder", path=str(tmp_path)))["train"]
    i = out.ids.index("a/bad.jpg")
    with pytest.raises(DataError, match=r"bad.jpg"):
        out.images[i]
    skipped = load_dataset(DatasetSpec("image_folder", path=str(tmp_path), on_error="skip"))
    assert len(skipped["train"]) == 2
    assert skipped["train"].source["skipped"] == [str(bad)]


# --- idx ---------------------------------------------------------------------------------------


def _idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _mnist_dir(root: Path, n_train=6, n_test=4, gz=True, train_images=True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    if train_images:
        _idx(root / f"train-images-idx3-ubyte{ext}", rng.integers(0, 255, (n_train, 5, 4)), gz)
    _idx(root / f"train-labels-idx1-ubyte{ext}", np.arange(n_train) % 10, gz)
    _idx(root / f"t10k-images-idx3-ubyte{ext}", rng.integers(0, 255, (n_test, 5, 4)), gz)
    _idx(root / f"t10k-labels-idx1-ubyte{ext}", np.arange(n_test) % 10, gz)
    return root


@pytest.mark.parametrize("gz", [True, False])
def test_idx_gz_and_raw(tmp_path, gz):
    root = _mnist_dir(tmp_path / "m", gz=gz)
    out = load_dataset(DatasetSpec("mnist", path=str(root)))
    assert set(out) == {"train", "test"}
    assert len(out["train"]) == 6 and len(out["test"]) == 4
    assert out["test"].labels.tolist() == [0, 1, 2, 3]
    assert out["test"].label_names == [str(d) for d in range(10)]
    img = out["train"].images[0]
    assert img.mode == "RGB" and img.size == (4, 5)
    assert out["test"].ids[0] == "test/0"


def test_idx_only_existing_splits(tmp_path):
    root = _mnist_dir(tmp_path / "m", train_images=False)
    out = load_dataset(DatasetSpec("idx", path=str(root)))
    assert list(out) == ["test"]
    assert out["test"].source["ignored_files"] == ["train-labels-idx1-ubyte.gz"]
    assert out["test"].label_names is None


def test_idx_count_mismatch_names_files(tmp_path):
    root = _mnist_dir(tmp_path / "m")
    _idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(3))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz has 3 labels but "
                       "t10k-images-idx3-ubyte.gz has 4"):
        load_dataset(DatasetSpec("mnist", path=str(root)))


def test_idx_bad_magic_and_truncated(tmp_path):
    root = _mnist_dir(tmp_path / "m", gz=False)
    (root / "t10k-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*magic"):
        load_dataset(DatasetSpec("mnist", path=str(root)))
    raw = struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">3I", 4, 5, 4) + b"\0" * 10
    (root / "t10k-images-idx3-ubyte").write_bytes(raw)
    with pytest.raises(DataError, match="header says shape"):
        load_dataset(DatasetSpec("mnist", path=str(root)))


def test_idx_empty_dir(tmp_path):
    with pytest.raises(DataError, match="no idx images"):
        load_dataset(DatasetSpec("idx", path=str(tmp_path)))


def test_fashion_mnist_missing_says_what_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(DatasetSpec("fashion_mnist", path=str(tmp_path / "absent")))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(DatasetSpec("fashion_mnist", path=str(tmp_path)))


def test_fashion_mnist_names(tmp_path):
    root = _mnist_dir(tmp_path / "f")
    out = load_dataset(DatasetSpec("fashion_mnist", path=str(root)))
    assert out["train"].label_names[0] == "T-shirt/top"
    assert out["train"].label_names[-1] == "Ankle boot"
    assert out["train"].dataset == "fashion_mnist"


# --- skimage_photos ----------------------------------------------------------------------------


def test_skimage_photos():
    pytest.importorskip("skimage")
    out = load_dataset(DatasetSpec("skimage_photos", options={"names": ["astronaut", "camera"]}))
    photos = out["train"]
    assert photos.ids == ["astronaut", "camera"]
    assert photos.labels is None
    assert all(photos.images[i].mode == "RGB" for i in range(2))
    with pytest.raises(DataError, match="unknown photo"):
        load_dataset(DatasetSpec("skimage_photos", options={"names": ["astronautt"]}))

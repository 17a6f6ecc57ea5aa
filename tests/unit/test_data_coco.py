"""COCO captions / instances loaders on a tiny COCO layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlprobe.data import DatasetSpec, load_dataset
from vlprobe.errors import DataError


def _coco(root: Path, split: str = "val") -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images_dir = root / f"{split}2017"
    images_dir.mkdir(exist_ok=True)
    images = [
        {"id": 3, "file_name": "000003.jpg", "width": 8, "height": 6},
        {"id": 1, "file_name": "000001.jpg", "width": 8, "height": 6},
        {"id": 2, "file_name": "000002.jpg", "width": 8, "height": 6},  # file missing
        {"id": 4, "file_name": "000004.jpg", "width": 8, "height": 6},  # no caption
    ]
    for im in images:
        if im["id"] != 2:
            Image.new("RGB", (8, 6), (im["id"] * 40, 0, 0)).save(images_dir / im["file_name"])
    captions = [
        {"id": 11, "image_id": 1, "caption": "A dog. "},
        {"id": 10, "image_id": 1, "caption": "A brown dog."},
        {"id": 12, "image_id": 3, "caption": "Two cats."},
        {"id": 13, "image_id": 2, "caption": "Not on disk."},
    ]
    (root / "annotations" / f"captions_{split}2017.json").write_text(
        json.dumps({"images": images, "annotations": captions})
    )
    instances = [
        {"id": 1, "image_id": 1, "category_id": 18, "bbox": [0, 0, 2, 2], "area": 4.0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 3, 1], "area": 3.0},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 1], "area": 2.0},
        {"id": 4, "image_id": 3, "category_id": 17, "bbox": [0, 0, 4, 4]},
    ]
    categories = [
        {"id": 18, "name": "dog"},
        {"id": 1, "name": "person"},
        {"id": 17, "name": "cat"},
    ]
    (root / "annotations" / f"instances_{split}2017.json").write_text(
        json.dumps({"images": images, "annotations": instances, "categories": categories})
    )
    return root


def test_captions_per_caption(tmp_path):
    root = _coco(tmp_path)
    out = load_dataset(DatasetSpec("coco_captions", path=str(root)))
    assert list(out) == ["validation"]
    val = out["validation"]
    assert val.ids == ["validation/1/10", "validation/1/11", "validation/3/12"]
    assert val.texts == ["A brown dog.", "A dog.", "Two cats."]
    assert val.descriptors["image_id"] == [1, 1, 3]
    assert val.modalities == ("image", "text", "pair")
    assert val.images[0].size == (8, 6)
    assert val.images.names[2].endswith("000003.jpg")
    assert val.source["missing_images"] == 1
    assert val.source["unannotated_images"] == 1


def test_captions_per_image(tmp_path):
    root = _coco(tmp_path)
    val = load_dataset(DatasetSpec("coco", path=str(root), options={"per": "image"}))["validation"]
    assert val.ids == ["validation/1", "validation/3"]
    assert val.texts == ["A brown dog.", "Two cats."]
    assert val.descriptors["captions"] == [["A brown dog.", "A dog."], ["Two cats."]]
    with pytest.raises(DataError, match="per"):
        load_dataset(DatasetSpec("coco", path=str(root), options={"per": "box"}))


def test_captions_explicit_annotation_file(tmp_path):
    root = _coco(tmp_path)
    full = root / "annotations" / "captions_val2017_full.json"
    full.write_text((root / "annotations" / "captions_val2017.json").read_text())
    out = load_dataset(DatasetSpec("coco_captions", path=str(root), options={
        "annotations": {"val": "annotations/captions_val2017_full.json"}}))
    assert out["validation"].source["annotations"] == str(full)
    out = load_dataset(DatasetSpec("coco_captions", path=str(root), options={
        "annotations": "annotations/captions_val2017_full.json"}))
    assert len(out["validation"]) == 3


def test_instances(tmp_path):
    root = _coco(tmp_path)
    val = load_dataset(DatasetSpec("coco_instances", path=str(root)))["validation"]
    # categories ordered by id: person(1), cat(17), dog(18)
    assert val.label_names == ["person", "cat", "dog"]
    # image 1: dog area 4 < person area 3 + 2 -> person; image 3: cat (bbox area)
    assert val.labels.tolist() == [0, 1]
    assert val.descriptors["boxes"][0][0] == [0.0, 0.0, 2.0, 2.0, "dog"]
    assert val.descriptors["categories"] == [["dog", "person"], ["cat"]]
    assert val.images is not None and val.texts is None


def test_coco_errors(tmp_path):
    with pytest.raises(DataError, match="no COCO split"):
        load_dataset(DatasetSpec("coco_captions", path=str(tmp_path)))
    root = _coco(tmp_path / "c")
    (root / "annotations" / "captions_val2017.json").write_text("{broken")
    with pytest.raises(DataError, match=r"captions_val2017.json"):
        load_dataset(DatasetSpec("coco_captions", path=str(root)))
    with pytest.raises(DataError, match="train2017"):
        load_dataset(DatasetSpec("coco_captions", path=str(root), options={"splits": ["train"]}))


def test_coco_corrupt_image_skip(tmp_path):
    root = _coco(tmp_path)
    (root / "val2017" / "000003.jpg").write_bytes(b"broken")
    out = load_dataset(DatasetSpec("coco_captions", path=str(root), on_error="skip"))
    assert out["validation"].ids == ["validation/1/10", "validation/1/11"]
    assert out["validation"].source["skipped"][0].endswith("000003.jpg")
    lazy = load_dataset(DatasetSpec("coco_captions", path=str(root)))["validation"]
    with pytest.raises(DataError, match=r"000003.jpg"):
        lazy.images[2]


def test_captions_with_instance_boxes(tmp_path):
    root = _coco(tmp_path)
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"].append({"id": 5, "image_id": 3, "category_id": 1, "iscrowd": 1,
                                "bbox": [0, 0, 8, 6]})  # a crowd region: left out
    path.write_text(json.dumps(data))
    spec = DatasetSpec("coco_captions", path=str(root), options={"instances": True})
    val = load_dataset(spec)["validation"]
    assert val.descriptors["boxes"] == [
        [[0.0, 0.0, 2.0, 2.0, "dog"], [0.0, 0.0, 3.0, 1.0, "person"],
         [1.0, 1.0, 2.0, 1.0, "person"]]] * 2 + [[[0.0, 0.0, 4.0, 4.0, "cat"]]]
    assert val.descriptors["image_size"] == [[8, 6]] * 3
    plain = load_dataset(DatasetSpec("coco_captions", path=str(root)))["validation"]
    assert "boxes" not in plain.descriptors
    digest = val.source["boxes_sha256"]
    data["annotations"][0]["bbox"] = [0, 0, 1, 1]  # other boxes -> another provenance
    path.write_text(json.dumps(data))
    assert load_dataset(spec)["validation"].source["boxes_sha256"] != digest
    bad = DatasetSpec("coco_captions", path=str(root), options={"instances": "nope.json"})
    with pytest.raises(DataError, match=r"nope\.json"):
        load_dataset(bad)

"""Loaders on the real data of the reference kit (skipped without VLPROBE_REFERENCE)."""

from __future__ import annotations

import numpy as np
import pytest

from vlprobe.data import DatasetSpec, load_dataset

CIFAR_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


@pytest.fixture(scope="module")
def cifar(reference_dir):
    return load_dataset(DatasetSpec("hf_parquet", name="cifar10",
                                    path=str(reference_dir / "images/cifar10")))


def test_cifar10_parquet(cifar):
    assert len(cifar["train"]) == 50000 and len(cifar["test"]) == 10000
    for split in cifar.values():
        assert split.label_names == CIFAR_NAMES
        assert split.n_classes == 10
    assert np.bincount(cifar["test"].labels).tolist() == [1000] * 10
    for i in (0, 12345, 49999):
        img = cifar["train"].images[i]
        assert img.mode == "RGB" and img.size == (32, 32)
    assert cifar["train"].dataset == "cifar10"


def test_cifar10_subsample_stratified(reference_dir):
    spec = DatasetSpec("hf_parquet", path=str(reference_dir / "images/cifar10"),
                       subsample={"train": 1000, "test": 500}, seed=0)
    out = load_dataset(spec)
    assert np.bincount(out["train"].labels).tolist() == [100] * 10
    assert np.bincount(out["test"].labels).tolist() == [50] * 10
    assert load_dataset(spec)["train"].fingerprint() == out["train"].fingerprint()
    assert not set(out["train"].ids) & set(out["test"].ids)


def test_imagenet_sample_names(reference_dir):
    out = load_dataset(DatasetSpec(
        "hf_parquet",
        path=str(reference_dir / "images/imagenet_sample/sample.parquet"),
        options={
            "label_names_file": str(
                reference_dir / "prompts/openai_clip_imagenet_classes_templates.json"),
            "descriptor_columns": ["wnid"],
        },
    ))
    sample = out["sample"]
    assert len(sample) == 500
    assert len(sample.label_names) == 1000
    assert sample.label_names[0] == "tench"
    assert sample.label_names[sample.labels[0]] == "tench"
    assert sample.descriptors["wnid"][0] == "n01440764"
    assert sample.images[0].mode == "RGB"
    # without the names file: the wnids stored in the schema metadata
    wnids = load_dataset(DatasetSpec(
        "hf_parquet", path=str(reference_dir / "images/imagenet_sample/sample.parquet")))
    assert wnids["sample"].label_names[0] == "n01440764"


def test_coco_captions_val(reference_dir):
    root = reference_dir / "captions/coco_mini"
    options = {"annotations": {"val": "annotations/captions_val2017_full.json"}}
    per_image = load_dataset(DatasetSpec("coco_captions", path=str(root),
                                         options={**options, "per": "image"}))["validation"]
    assert len(per_image) == 159
    assert min(len(c) for c in per_image.descriptors["captions"]) >= 5
    assert per_image.source["missing_images"] == 5000 - 159
    per_caption = load_dataset(DatasetSpec("coco_captions", path=str(root),
                                           options=options))["validation"]
    assert len(per_caption) == sum(len(c) for c in per_image.descriptors["captions"])
    assert len(set(per_caption.descriptors["image_id"])) == 159
    assert per_caption.images[0].mode == "RGB"
    # the default annotation files: both splits, all their images on disk
    default = load_dataset(DatasetSpec("coco_captions", path=str(root), options={"per": "image"}))
    assert len(default["train"]) == 80 and len(default["validation"]) == 79


def test_coco_instances(reference_dir):
    root = reference_dir / "captions/coco_mini"
    out = load_dataset(DatasetSpec("coco_instances", path=str(root)))
    val = out["validation"]
    assert len(val.label_names) == 80 and val.label_names[0] == "person"
    assert len(val) + val.source["unannotated_images"] == 79
    assert all(len(b) >= 1 for b in val.descriptors["boxes"])


def test_mnist_test_idx(reference_dir):
    out = load_dataset(DatasetSpec("mnist", path=str(reference_dir / "images/mnist_test")))
    assert list(out) == ["test"]
    test = out["test"]
    assert len(test) == 10000
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    img = test.images[0]
    assert img.size == (28, 28) and img.mode == "RGB"


def test_movie_posters(reference_dir):
    path = reference_dir / "human_centric/movie_posters/posters.parquet"
    out = load_dataset(DatasetSpec("hf_parquet", path=str(path), test_fraction=0.2, seed=0))
    assert set(out) == {"posters", "test"}
    assert len(out["posters"]) + len(out["test"]) == 1500
    assert len(out["test"]) == 300
    assert out["test"].label_names == ["Comedy", "Drama"]
    assert out["test"].images[0].mode == "RGB"

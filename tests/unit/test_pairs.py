"""Paired (image, text) stimuli, the one modality resolver, and pair extraction."""

from __future__ import annotations

import numpy as np
import pytest
from fusion_fakes import PlantedFusion
from PIL import Image

from _helpers import tiny_adapter
from vlprobe.data.stimuli import ImageSource, Stimuli
from vlprobe.errors import ConfigError, DataError
from vlprobe.extract import ActivationStore, extract_features, feature_keys
from vlprobe.modality import (
    TAG_IMAGE,
    TAG_SPECIAL,
    TAG_TEXT,
    check_sites_for,
    readable_modality,
    resolve_modality,
    sequence_stream,
)
from vlprobe.pooling import pool_numpy


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8"))


def paired(n_images: int = 4, per_image: int = 3, seed: int = 0) -> Stimuli:
    """``n_images`` images with ``per_image`` captions each, one item per caption."""
    images = [_image(seed + i) for i in range(n_images)]
    loaders, names, digests, texts, ids, image_ids = [], [], [], [], [], []
    words = ["a cat sits", "the dog runs", "a red car", "two birds", "a big tree", "a man"]
    for i in range(n_images):
        for c in range(per_image):
            loaders.append(lambda im=images[i]: im)
            names.append(f"img{i}.png")
            digests.append(f"digest{i}")
            texts.append(f"{words[(i + c) % len(words)]} {'very ' * c}small")
            ids.append(f"img{i}#{c}")
            image_ids.append(f"img{i}")
    return Stimuli(
        dataset="pairs", split="test", ids=ids, images=ImageSource(loaders, names, digests),
        texts=texts, descriptors={"image_id": image_ids},
    )


# -- stimuli ------------------------------------------------------------------------------
def test_paired_stimuli_offer_pairs_and_unique_images():
    stim = paired(3, 2)
    assert stim.modalities == ("image", "text", "pair")
    pairs = stim.payloads("pair", [0, 3])
    assert pairs[0][1] == stim.texts[0] and isinstance(pairs[1][0], Image.Image)
    view, inverse = stim.unique_images()
    assert view.ids == ["img0", "img1", "img2"] and view.modalities == ("image",)
    assert inverse.tolist() == [0, 0, 1, 1, 2, 2]
    one_each = paired(3, 1)
    assert one_each.unique_images() is None  # nothing shared: nothing to save


def test_pair_with_empty_caption_is_named():
    stim = paired(2, 2)
    texts = list(stim.texts)
    texts[3] = "   "
    with pytest.raises(DataError, match=r"item 'img1#1' .*empty caption"):
        Stimuli(dataset="d", split="s", ids=stim.ids, images=stim.images, texts=texts,
                descriptors=stim.descriptors)


def test_pair_with_unreadable_image_is_named():
    def broken():
        raise OSError("truncated file")

    stim = Stimuli(
        dataset="d", split="s", ids=["a", "b"], texts=["a cat", "a dog"],
        images=ImageSource([lambda: _image(0), broken], ["ok.png", "bad.png"], ["1", "2"]),
    )
    with pytest.raises(DataError, match=r"bad\.png"):
        stim.payloads("pair", [0, 1])


def test_image_id_with_two_different_images_is_an_error():
    stim = paired(2, 2)
    ids = list(stim.descriptors["image_id"])
    ids[2] = "img0"  # claims image 0 but carries image 1's digest
    with pytest.raises(DataError, match="image_id 'img0' carry different images"):
        Stimuli(dataset="d", split="s", ids=stim.ids, images=stim.images, texts=stim.texts,
                descriptors={"image_id": ids})


# -- the one resolver ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "data", "requested", "expected"),
    [
        (("image", "text"), ("image",), None, "image"),
        (("image", "text"), ("text",), None, "text"),
        (("image", "text"), ("image", "text", "pair"), None, "image"),
        (("image", "text"), ("image", "text", "pair"), "text", "text"),
        (("pair",), ("image", "text", "pair"), None, "pair"),
        (("image", "pair"), ("image", "text", "pair"), None, "pair"),
        (("image", "pair"), ("image",), None, "image"),
        (("text",), ("image", "text", "pair"), None, "text"),
    ],
)
def test_resolver_rule(model, data, requested, expected):
    assert resolve_modality(model, data, requested) == expected


def test_resolver_errors_name_model_and_dataset():
    with pytest.raises(ConfigError, match=r"model 'vilt' takes pair input but dataset 'cifar'"):
        resolve_modality(("pair",), ("image",), model="vilt", dataset="cifar")
    with pytest.raises(ConfigError, match="not pair"):
        resolve_modality(("image", "text"), ("image", "text", "pair"), "pair")
    with pytest.raises(ConfigError, match="unknown modality"):
        resolve_modality(("image",), ("image",), "audio")
    assert readable_modality(("text",), ("image",)) is None


def test_sites_of_another_stream_are_refused():
    check_sites_for("pair", ["fusion.blocks.0", "cross.blocks.1.v2t.attn", "text.stem"])
    with pytest.raises(ConfigError, match=r"text\.blocks\.0 .*cannot be captured from image"):
        check_sites_for("image", ["vision.blocks.0", "text.blocks.0"])
    with pytest.raises(ConfigError, match="stream"):
        check_sites_for("pair", ["head.blocks.0"])
    assert sequence_stream("cross.blocks.2.text") == "text"
    assert sequence_stream("cross.blocks.2.vision.attn") == "vision"
    assert sequence_stream("fusion.blocks.1") == "fusion"


# -- image-side work once per image -------------------------------------------------------
def test_paired_set_forwards_each_image_once(tmp_path):
    adapter = tiny_adapter("clip", tmp_path)
    stim = paired(n_images=5, per_image=3)
    calls: list[int] = []
    orig = adapter.forward

    def counting(batch, sites):
        calls.append(len(batch))
        return orig(batch, sites)

    adapter.forward = counting
    store = ActivationStore(tmp_path / "store")
    res = extract_features(adapter, stim, modality="image", store=store, batch_size=4,
                           shard_size=4, progress=False)
    assert sum(calls) == 5 and res.n_items_computed == 5  # 5 images, 15 items
    emb = res.features["vision.proj"]
    assert emb.shape[0] == 15
    view, inverse = stim.unique_images()
    direct = extract_features(adapter, view, modality="image", store=store, progress=False)
    np.testing.assert_array_equal(emb, direct.features["vision.proj"][inverse])
    assert direct.n_forward_batches == 0  # the same store entry
    # the text tower runs once per caption
    calls.clear()
    text = extract_features(adapter, stim, modality="text", store=store, progress=False)
    assert sum(calls) == 15 and text.features["text.proj"].shape[0] == 15
    # the keys the result cache recomputes without extracting are the keys extraction used
    calls.clear()
    assert feature_keys(adapter, stim, modality="image") == res.keys == direct.keys
    assert feature_keys(adapter, stim, modality="text") == text.keys
    assert calls == []  # no forward pass


# -- pair extraction with a planted fusion model ------------------------------------------
def test_pair_extraction_pools_by_tag_never_by_offset(tmp_path):
    from vlprobe.models.base import ModelSpec

    adapter = PlantedFusion(ModelSpec(adapter="planted_fusion"))
    stim = paired(3, 2)
    assert resolve_modality(adapter.modalities, stim.modalities) == "pair"
    store = ActivationStore(tmp_path / "store")
    out = {}
    for how in ("mean_text", "mean_image", "cls"):
        res = extract_features(adapter, stim, sites=["fusion.blocks.0"], pooling=how,
                               store=store, batch_size=4, progress=False)
        out[how] = res.features["fusion.blocks.0"]
    assert np.all(out["mean_text"] == TAG_TEXT) and np.all(out["mean_image"] == TAG_IMAGE)
    assert np.all(out["cls"] == TAG_SPECIAL)
    mean = extract_features(adapter, stim, sites=["fusion.blocks.0"], pooling="mean",
                            store=store, progress=False).features["fusion.blocks.0"]
    assert np.isfinite(mean).all()  # the padding (NaN) never leaks into a mask-aware mean
    with pytest.raises(ConfigError, match=r"cannot be captured from pair|no site"):
        extract_features(adapter, stim, sites=["vision.blocks.0"], store=store, progress=False)


def test_tag_pooling_needs_tags_and_tokens():
    x = np.ones((2, 3, 4), np.float32)
    with pytest.raises(ConfigError, match="modality tags"):
        pool_numpy(x, "mean_image")
    tags = np.array([[0, 1, 1], [0, 2, -1]])
    with pytest.raises(ConfigError, match="row 0 has no image tokens"):
        pool_numpy(x, "mean_image", modality_tags=tags)

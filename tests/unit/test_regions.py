"""Region sources of region-based fusion models (vlprobe.models.region_sources)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tiny_models import tiny_resnet  # noqa: E402
from vlprobe.errors import ConfigError, DataError  # noqa: E402
from vlprobe.models.region_sources import (  # noqa: E402
    FileRegionSource,
    GridRegionSource,
    Regions,
    grid_regions,
    pad_regions,
    read_region_file,
    region_source,
)


def test_grid_regions_order_and_boxes():
    fmap = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4)  # h=2, w=4
    feats, boxes = grid_regions(fmap)
    assert feats.shape == (2, 8, 3) and boxes.shape == (2, 8, 4)
    # region r * w + c is cell (row r, column c) with all its channels
    assert torch.equal(feats[1, 1 * 4 + 2], fmap[1, :, 1, 2])
    assert torch.allclose(boxes[0, 1 * 4 + 2], torch.tensor([0.5, 0.5, 0.75, 1.0]))
    assert torch.allclose(boxes[0, 0], torch.tensor([0.0, 0.0, 0.25, 0.5]))
    assert torch.equal(boxes[0], boxes[1])
    with pytest.raises(ConfigError, match=r"\[B, C, h, w\]"):
        grid_regions(torch.zeros(2, 5, 3))


def test_pad_regions_masks_the_padding():
    a = Regions(np.ones((3, 4), np.float32), np.full((3, 4), 0.5, np.float32))
    b = Regions(np.full((1, 4), 2, np.float32), np.zeros((1, 4), np.float32))
    feats, boxes, mask = pad_regions([a, b])
    assert feats.shape == (2, 3, 4) and boxes.shape == (2, 3, 4)
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert feats[1, 0, 0] == 2 and feats[1, 1:].abs().sum() == 0
    c = Regions(np.ones((2, 5), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(DataError, match="different widths"):
        pad_regions([a, c])


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_region_file_roundtrip_counts_and_pixel_boxes(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.random((2, 3, 4)).astype(np.float32)
    boxes = np.array([[[0, 0, 50, 20]] * 3, [[10, 10, 20, 40]] * 3], np.float32)
    path = _write(tmp_path / "r.npz", ids=np.array(["a", "b"]), features=feats, boxes=boxes,
                  counts=np.array([3, 2]), image_sizes=np.array([[100, 40], [20, 40]]))
    table = read_region_file(path)
    assert set(table) == {"a", "b"}
    assert table["a"].features.shape == (3, 4) and table["b"].features.shape == (2, 4)
    np.testing.assert_allclose(table["a"].boxes[0], [0, 0, 0.5, 0.5])
    np.testing.assert_allclose(table["b"].boxes[1], [0.5, 0.25, 1.0, 1.0])
    f, _, m = FileRegionSource(path)(["b", "a"])
    assert f.shape == (2, 3, 4) and m.tolist() == [[1, 1, 0], [1, 1, 1]]
    np.testing.assert_allclose(f[1].numpy(), feats[0])
    with pytest.raises(DataError, match=r"pair item 1: id 'zzz' is not in region file"):
        FileRegionSource(path)(["a", "zzz"])
    with pytest.raises(DataError, match=r"pair item 0: .*item ids"):
        FileRegionSource(path)([object()])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"boxes": None}, "has no 'boxes'"),
        ({"features": np.zeros((2, 3), np.float32)}, r"'features' must be \[N=2, R, D\]"),
        ({"boxes": np.zeros((2, 3, 5), np.float32)}, r"'boxes' must be \[N, R, 4\]"),
        ({"ids": np.array(["a", "a"])}, "id 'a' appears more than once"),
        ({"counts": np.array([3, 0])}, "'counts' must be"),
        ({"boxes": np.full((2, 3, 4), 2.0, np.float32)}, r"image 0 \(id 'a'\).*\[0, 1\]"),
        ({"boxes": np.tile(np.array([0.5, 0, 0.2, 1], np.float32), (2, 3, 1))}, "x0 <= x1"),
        ({"features": np.full((2, 3, 4), np.nan, np.float32)}, "non-finite"),
    ],
)
def test_region_file_errors_name_the_field(tmp_path, change, match):
    arrays = {"ids": np.array(["a", "b"]), "features": np.zeros((2, 3, 4), np.float32),
              "boxes": np.tile(np.array([0, 0, 1, 1], np.float32), (2, 3, 1))}
    arrays.update(change)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match) as err:
        read_region_file(path)
    assert str(path) in str(err.value)


def test_region_source_options(tmp_path):
    assert isinstance(region_source(None), GridRegionSource)
    default = region_source(None)
    assert default.spec.adapter == "efficientnet_lite0" and default.site == "vision.head"
    with pytest.raises(ConfigError, match=r"options.regions.source: 'detector'"):
        region_source({"source": "detector"})
    with pytest.raises(ConfigError, match="unknown key"):
        region_source({"source": "grid", "layer": 3})
    with pytest.raises(ConfigError, match="does not exist"):
        region_source({"source": "file", "path": str(tmp_path / "none.npz")})
    with pytest.raises(ConfigError, match="exactly 'path'"):
        region_source({"source": "file"})


def test_grid_source_runs_a_registered_cnn(tmp_path):
    from PIL import Image

    spec = tiny_resnet(tmp_path)
    src = region_source({"adapter": "hf_resnet", "config": spec.config, "random_init": True,
                         "site": "vision.stages.1", "options": {"image_size": 32}})
    images = [Image.new("RGB", (40, 30), (i * 80, 20, 200)) for i in range(2)]
    feats, boxes, mask = src(images)
    assert feats.shape == (2, 16, 16) and boxes.shape == (2, 16, 4) and mask.all()
    fmap = src.adapter.forward(src.adapter.prepare(images, "image"),
                               ["vision.stages.1"]).hidden["vision.stages.1"]
    assert torch.allclose(feats, grid_regions(fmap)[0])
    ident = src.identity()
    assert ident["source"] == "grid" and ident["site"] == "vision.stages.1"
    assert ident["model"]["adapter"] == "hf_resnet"
    pooled = region_source({"adapter": "hf_resnet", "config": spec.config, "random_init": True,
                            "site": "vision.pooled", "options": {"image_size": 32}})
    with pytest.raises(ConfigError, match=r"not a CNN feature map"):
        pooled(images)
    with pytest.raises(DataError, match="pair item 1: the grid region source needs a PIL"):
        src([images[0], "id-7"])

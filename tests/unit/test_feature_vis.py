"""V8 feature visualisation: a planted filter is recovered, the parts of the recipe behave,
CNN / ViT / dual-encoder towers work, bad input is a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vision_fakes import PlantedColorAdapter, PlantedFilterAdapter, VisionSource, stripe_filter

from tiny_models import tiny_spec
from vlprobe.analyses.vision import featvis as fv
from vlprobe.analyses.vision.feature_vis import FeatureVis
from vlprobe.errors import ConfigError
from vlprobe.models import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_planted_filter_is_recovered():
    """Channel 0 of the planted one-layer model is a known stripe filter: its visualisation
    (Fourier image, decorrelated colour, Adam; transformations off because they move the
    receptive field of an image the filter's size) correlates with the filter."""
    adapter = PlantedFilterAdapter()
    res = fv.visualize(adapter, [fv.Objective("channel", "vision.blocks.0", unit=0)], (9, 9),
                       steps=256, seed=0, transforms=False)
    assert _corr(res.images[0], stripe_filter().numpy()) > 0.9
    assert res.final[0] > 0.9 > res.initial[0]


def test_transformation_robust_visualisation_raises_its_objective():
    adapter = PlantedFilterAdapter()
    objs = [fv.Objective("channel", "vision.blocks.0", unit=c) for c in range(3)]
    res = fv.visualize(adapter, objs, (24, 24), steps=64, seed=1)
    assert (res.final > res.initial + 0.05).all()
    assert res.images.shape == (3, 3, 24, 24)
    assert res.images.min() >= 0 and res.images.max() <= 1


def test_same_seed_same_image():
    adapter = PlantedFilterAdapter()
    objs = [fv.Objective("neuron", "vision.blocks.0", unit=1)]
    a = fv.visualize(adapter, objs, (16, 16), steps=8, seed=4)
    b = fv.visualize(adapter, objs, (16, 16), steps=8, seed=4)
    c = fv.visualize(adapter, objs, (16, 16), steps=8, seed=5)
    assert np.array_equal(a.images, b.images) and a.history == b.history
    assert not np.array_equal(a.images, c.images)


@pytest.mark.parametrize("fft", [True, False])
@pytest.mark.parametrize("decorrelate", [True, False])
def test_image_parameterisation_renders_images(fft, decorrelate):
    param = fv.ImageParam(2, 12, 9, fft=fft, decorrelate=decorrelate, seed=0)
    image = param()
    assert tuple(image.shape) == (2, 3, 12, 9)
    shown = image.detach()
    assert float(shown.min()) > 0 and float(shown.max()) < 1
    assert float((shown - 0.5).abs().max()) < 0.05  # a small random start around grey
    image.sum().backward()
    assert param.params[0].grad is not None


def test_colour_decorrelation_matrix_is_lucids_normalised():
    m = fv._color_matrix()
    assert np.isclose(np.linalg.norm(m, axis=0).max(), 1.0)
    assert np.allclose(m * np.linalg.norm(np.asarray(fv.COLOR_CORRELATION_SVD_SQRT), axis=0)
                       .max(), fv.COLOR_CORRELATION_SVD_SQRT)


def test_random_transform_keeps_size_and_range_and_is_seeded():
    x = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    a = fv.random_transform(x, torch.Generator().manual_seed(1))
    b = fv.random_transform(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.allclose(a, x)
    same = fv.random_transform(x, torch.Generator().manual_seed(1), jitter=0.0, scale=(1, 1),
                               degrees=0.0)
    assert torch.allclose(same, x, atol=1e-5)
    shifted = fv.random_transform(torch.ones(1, 3, 20, 20), torch.Generator().manual_seed(2),
                                  jitter=8.0, scale=(0.9, 0.9), degrees=0.0)
    assert float(shifted.min()) == pytest.approx(0.5, abs=1e-6)  # outside filled with grey


def test_objectives_on_every_activation_shape():
    cnn = torch.arange(2 * 3 * 3, dtype=torch.float32).view(2, 3, 3)  # [C, h, w]
    seq = torch.arange(5 * 4, dtype=torch.float32).view(5, 4)  # [T = 1 + 2x2, D]
    vec = torch.tensor([1.0, -2.0, 3.0])
    assert fv.evaluate(fv.Objective("channel", "s", unit=1), cnn) == cnn[1].mean()
    assert fv.evaluate(fv.Objective("neuron", "s", unit=1), cnn) == cnn[1, 1, 1]
    assert fv.evaluate(fv.Objective("channel", "s", unit=2), seq) == seq[:, 2].mean()
    assert fv.evaluate(fv.Objective("neuron", "s", unit=2), seq) == seq[1 + 1 * 2 + 1, 2]
    assert fv.evaluate(fv.Objective("channel", "s", unit=2), vec) == 3.0
    assert fv.evaluate(fv.Objective("layer", "s"), vec) == pytest.approx((1 + 4 + 9) / 3)
    v = torch.tensor([0.0, 1.0, 0.0])
    assert fv.evaluate(fv.Objective("direction", "s", vector=v), vec) == pytest.approx(
        -2 / np.sqrt(14))
    assert fv.n_units((2, 3, 3)) == 2 and fv.n_units((5, 4)) == 4 and fv.n_units((3,)) == 3


def test_diversity_penalty():
    same = torch.ones(3, 2, 4, 4)
    assert float(fv.diversity_penalty(same)) == pytest.approx(2.0)  # n - 1 for equal Grams
    rng = torch.Generator().manual_seed(0)
    different = torch.rand(3, 2, 4, 4, generator=rng)
    assert float(fv.diversity_penalty(different)) < 2.0
    assert float(fv.diversity_penalty(same[:1])) == 0.0
    with pytest.raises(ConfigError, match="spatial"):
        fv.diversity_penalty(torch.ones(3, 5))


def test_diverse_images_of_one_unit_differ():
    adapter = PlantedFilterAdapter()
    obj = [fv.Objective("channel", "vision.blocks.0", unit=2)]
    res = fv.visualize(adapter, obj, (16, 16), steps=16, seed=0, n_diverse=2, diversity=1.0)
    assert res.images.shape[0] == 2
    assert not np.allclose(res.images[0], res.images[1], atol=1e-3)


@pytest.mark.parametrize("name,site", [("efficientnet_lite0", "vision.blocks.3"),
                                       ("hf_vit", "vision.blocks.1"),
                                       ("clip", "vision.blocks.1")])
def test_cnn_and_vit_towers(name, site, tmp_path):
    adapter = load_model(tiny_spec(name, tmp_path))
    size = tuple(adapter.image_pixels([_grey()]).shape[-2:])
    objs = [fv.Objective("channel", site, unit=1), fv.Objective("neuron", site, unit=2)]
    res = fv.visualize(adapter, objs, size, steps=12, seed=0, lr=0.1, transforms=False)
    assert (res.final > res.initial).all(), (res.initial, res.final)


def test_dual_encoder_text_direction(tmp_path):
    """An image is optimised towards a prompt's text embedding (tiny CLIP's vision.proj)."""
    adapter = load_model(tiny_spec("clip", tmp_path))
    src = VisionSource(split_names=("test",))
    src.adapters["clip"] = adapter
    analysis = FeatureVis(["clip"], "toy", {
        "targets": [{"objective": "direction", "prompts": ["a photo of a dog"]}],
        "steps": 12, "lr": 0.1, "batch_size": 2})
    result = analysis.run(src)
    t = result.table.set_index("metric")["value"]
    assert t["objective_final"] > t["objective_initial"]
    assert set(result.table["site"]) == {"vision.proj"}
    assert list(result.figures) == ["featvis_clip_0_direction"]


def test_class_images_are_classified_as_their_class():
    src = VisionSource(split_names=("test",))
    src.adapters["m"] = PlantedColorAdapter()
    result = FeatureVis(["m"], "toy", {
        "targets": [{"objective": "class", "units": [0, 1, 2]}], "steps": 16}).run(src)
    top1 = result.table[result.table["metric"] == "self_top1"]
    assert list(top1["unit"]) == [0, 1, 2] and (top1["value"] == 1.0).all()


def test_bad_input_is_a_clear_error(tmp_path):
    src = VisionSource(split_names=("test",))
    src.adapters["m"] = PlantedFilterAdapter()
    src.adapters["text"] = load_model(tiny_spec("minilm_l6", tmp_path))
    with pytest.raises(ConfigError, match=r"unit\(s\) \[4\] out of range.*has 4 channels"):
        FeatureVis(["m"], "toy", {"targets": [{"objective": "channel",
                                                "site": "vision.blocks.0",
                                                "units": [0, 4]}], "steps": 1}).run(src)
    with pytest.raises(ConfigError, match="no differentiable image path"):
        FeatureVis(["text"], "toy", {"steps": 1}).run(src)
    with pytest.raises(ConfigError, match="no differentiable image path"):
        src.adapters["text"].forward_differentiable(torch.zeros(1, 3, 8, 8), ["text.pooled"])
    with pytest.raises(ConfigError, match="has no site"):
        FeatureVis(["m"], "toy", {"targets": [{"objective": "layer", "site": "vision.blok.0"}],
                                  "steps": 1}).run(src)
    with pytest.raises(ConfigError, match="no text tower"):
        FeatureVis(["m"], "toy", {"targets": [{"objective": "direction", "site": "embedding",
                                                "prompts": ["a dog"]}]}).run(src)
    with pytest.raises(ConfigError, match="objective must be one of"):
        FeatureVis(["m"], "toy", {"targets": [{"objective": "pixel", "units": [0]}]})
    with pytest.raises(ConfigError, match="needs units"):
        FeatureVis(["m"], "toy", {"targets": [{"objective": "neuron"}]})
    with pytest.raises(ConfigError, match="unit indices must be >= 0"):
        FeatureVis(["m"], "toy", {"targets": [{"objective": "channel", "units": [-1]}]})
    with pytest.raises(ConfigError, match="lr"):
        FeatureVis(["m"], "toy", {"lr": 0})
    src.adapters["vit"] = load_model(tiny_spec("hf_vit", tmp_path))
    with pytest.raises(ConfigError, match="cannot run on 48 x 48 px images"):
        FeatureVis(["vit"], "toy", {"size": 48, "steps": 1}).run(src)


def _grey():
    from PIL import Image

    return Image.new("RGB", (40, 40), (128, 128, 128))

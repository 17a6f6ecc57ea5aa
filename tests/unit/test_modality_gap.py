"""M6 modality gap: centroid distance, separability, Liang's shift, both modes, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from dual_fakes import PlantedDualSource, caption_split, planted_pairs, planted_zero_shot

from vlprobe.analyses import ANALYSES
from vlprobe.analyses.multimodal.modality_gap import ModalityGap, gap_vector, separability, shift
from vlprobe.analyses.multimodal.zeroshot import ZeroShot
from vlprobe.errors import AnalysisError, ConfigError, DataError

TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}."]


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _gapped_pairs(offset, n_images=40, per_image=2, dim=12, seed=0):
    """Paired embeddings with a planted gap: images = v + offset * e0, captions = v + noise
    - offset * e0 (before normalisation)."""
    rng = np.random.default_rng(seed)
    vec = rng.normal(size=(n_images, dim))
    e0 = np.eye(dim)[0]
    captions = [[f"c{j}.{k}" for k in range(per_image)] for j in range(n_images)]
    split = caption_split("test", captions)
    cap_vec = {c: vec[j] + 0.2 * rng.normal(size=dim) - offset * e0
               for j, cs in enumerate(captions) for c in cs}
    index = {f"img{j}": j for j in range(n_images)}
    return PlantedDualSource(
        {"test": split},
        image_fn=lambda s: vec[[index[i] for i in s.descriptors["image_id"]]] + offset * e0,
        text_fn=lambda s: np.stack([cap_vec[t] for t in s.texts]))


def test_registered_as_m6():
    assert ANALYSES.get("M6") is ModalityGap and ANALYSES.canonical("M6") == "modality_gap"


def test_shift_is_liangs_procedure():
    rng = np.random.default_rng(0)
    img, txt = _unit(rng.normal(size=(20, 5)) + 2), _unit(rng.normal(size=(30, 5)) - 2)
    delta = gap_vector(img, txt)
    assert np.allclose(delta, img.mean(0) - txt.mean(0))
    im, tx = shift(img, txt, delta, 0.7)
    assert np.allclose(im, _unit(img - 0.35 * delta), atol=1e-6)
    assert np.allclose(tx, _unit(txt + 0.35 * delta), atol=1e-6)
    im0, tx0 = shift(img, txt, delta, 0.0)
    assert np.allclose(im0, img, atol=1e-6) and np.allclose(tx0, txt, atol=1e-6)
    im1, tx1 = shift(img, txt, delta, 1.0)  # the centroids meet before renormalising
    assert np.linalg.norm(gap_vector(im1, tx1)) < 0.2 * np.linalg.norm(delta)


def test_a_planted_gap_is_measured_separable_and_closed():
    res = ModalityGap(["m"], "toy", {"lambdas": [0.5]}).run(_gapped_pairs(offset=3.0))
    t = res.table.set_index("metric")["value"]
    assert t["gap_distance"] > 0.8
    assert t["modality_separability"] == 1.0
    assert t["gap_distance_gap_closed"] < 0.2 * t["gap_distance"]
    sweep = res.extra_tables["shift_sweep"]
    assert list(sweep["lambda"]) == [0.0, 0.5, 1.0]  # 0 and 1 are always swept
    assert sweep["gap_distance"].is_monotonic_decreasing
    # the change when closed is the difference of the two recorded scores
    for m in ("image_to_text_recall@1", "text_to_image_recall@1"):
        assert t[f"{m}_change_gap_closed"] == pytest.approx(t[f"{m}_gap_closed"] - t[m])
        assert 0.0 <= t[m] <= 1.0
    assert set(res.figures) == {"gap_view", "gap_shift"}
    assert res.table["mode"].eq("pairs").all()


def test_no_gap_is_not_separable():
    res = ModalityGap(["m"], "toy", {"probe_fraction": 0.5}).run(
        _gapped_pairs(offset=0.0, n_images=150, per_image=1))
    t = res.table.set_index("metric")["value"]
    assert t["gap_distance"] < 0.25
    assert abs(t["modality_separability"] - 0.5) < 0.2  # chance, within the noise of 150


def test_separability_is_balanced_and_seeded():
    rng = np.random.default_rng(0)
    img, txt = _unit(rng.normal(size=(10, 4)) + 3), _unit(rng.normal(size=(50, 4)) - 3)
    a = separability(img, txt, 0.3, seed=1)
    assert a == separability(img, txt, 0.3, seed=1)
    assert a["n_held"] == 2 * 3 and a["n_fit"] == 2 * 7 and a["accuracy"] == 1.0


def test_class_prompt_mode_matches_zero_shot():
    src, _ = planted_zero_shot(n_classes=5, noise=2.0, splits=("test",))
    gap = ModalityGap(["m"], "toy", {"templates": TEMPLATES}).run(src)
    zs = ZeroShot(["m"], "toy", {"templates": TEMPLATES}).run(src)
    g = gap.table.set_index("metric")["value"]
    z = zs.table.set_index("metric")["value"]
    assert gap.table["mode"].eq("class_prompts").all()
    assert g["zero_shot_top1_accuracy"] == pytest.approx(z["top1_accuracy"])
    assert gap.table["n_texts"].iloc[0] == 5 * 2  # every prompt is a point of the text cloud
    prompts = next(c for c in src.calls if c.view == "class_prompts")
    assert prompts.templates == tuple(TEMPLATES)


def test_two_d_view_uses_at_most_max_points():
    src, _ = planted_pairs(n_images=30, per_image=3)
    res = ModalityGap(["m"], "toy", {"max_points": 10}).run(src)
    ax = res.figures["gap_view"].axes[0]
    sizes = [len(c.get_offsets()) for c in ax.collections]
    assert sizes[:2] == [10, 10]


def test_bad_input():
    with pytest.raises(ConfigError, match="mode must be"):
        ModalityGap(["m"], "toy", {"mode": "both"})
    with pytest.raises(ConfigError, match="lambdas must be numbers"):
        ModalityGap(["m"], "toy", {"lambdas": ["x"]})
    with pytest.raises(ConfigError, match="probe_fraction"):
        ModalityGap(["m"], "toy", {"probe_fraction": 1.0})
    with pytest.raises(ConfigError, match="must contain the class-name slot"):
        ModalityGap(["m"], "toy", {"templates": ["no slot"], "mode": "pairs"})
    src, _ = planted_pairs(n_images=3, per_image=2)
    src.modalities["vit"] = ("image",)
    with pytest.raises(AnalysisError, match="has no text tower"):
        ModalityGap(["vit"], "toy").run(src)
    labelled, _ = planted_zero_shot(splits=("test",))
    with pytest.raises(AnalysisError, match="has no captions"):
        ModalityGap(["m"], "toy", {"mode": "pairs"}).run(labelled)
    labelled.splits_["test"].labels = None
    labelled.splits_["test"].label_names = None
    with pytest.raises(DataError, match="has no class names"):
        ModalityGap(["m"], "toy", {"templates": TEMPLATES}).run(labelled)

"""classifier_head: top-1 / top-k of a model's own head from a logits site (sanity check)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import top_k_accuracy_score
from test_analysis_fakes import FakeSource

from vlprobe.analyses import ANALYSES
from vlprobe.analyses.base import LayerFeatures
from vlprobe.analyses.vision.classifier_head import ClassifierHead
from vlprobe.errors import AnalysisError, ConfigError


def _logits_feats(y, n_classes, correct_rate, seed=0, site="vision.logits", split="sample"):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(y), n_classes)).astype(np.float32)
    hit = rng.random(len(y)) < correct_rate
    logits[np.flatnonzero(hit), np.asarray(y)[hit]] += 10.0
    ids = [f"{split}/{i}" for i in range(len(y))]
    return LayerFeatures({site: logits}, {site: None}, np.asarray(y, np.int64), ids)


def test_registered_without_catalogue_id():
    assert ANALYSES.get("classifier_head") is ClassifierHead
    assert ClassifierHead.catalogue == ()
    assert "sanity check" in ClassifierHead.summary.lower()


def test_top1_top5_match_sklearn():
    y = np.random.default_rng(1).integers(0, 20, size=200)
    feats = _logits_feats(y, 20, 0.6)
    src = FakeSource(split_names=("sample",))
    src.add("m", "sample", feats)
    res = ClassifierHead(["m"], "toy").run(src)
    t = res.table
    vals = dict(zip(t["metric"], t["value"]))
    logits = feats.features["vision.logits"]
    assert vals["top1_accuracy"] == pytest.approx(float((logits.argmax(1) == y).mean()))
    assert vals["top5_accuracy"] == pytest.approx(
        top_k_accuracy_score(y, logits, k=5, labels=np.arange(20)))
    assert 0.5 < vals["top1_accuracy"] < 0.75
    assert set(t["split"]) == {"sample"} and (t["n"] == 200).all()
    assert (t["n_classes_head"] == 20).all()
    assert t.loc[t["metric"] == "top1_accuracy", "chance"].item() == pytest.approx(1 / 20)
    # only the logits site was requested, from the image tower
    (req,) = ClassifierHead(["m"], "toy").requests(src)
    assert req.sites == ("vision.logits",) and req.modality == "image"


def test_label_out_of_head_range_is_an_error():
    y = np.array([0, 1, 2, 12])
    src = FakeSource(split_names=("sample",))
    src.add("m", "sample", _logits_feats(y, 10, 0.0))
    with pytest.raises(AnalysisError, match="has 10 classes"):
        ClassifierHead(["m"], "toy").run(src)


def test_missing_site_and_bad_params():
    src = FakeSource(split_names=("sample",))
    src.add("m", "sample", _logits_feats([0, 1], 3, 1.0, site="other.logits"))
    with pytest.raises(AnalysisError, match=r"no site 'vision\.logits'"):
        ClassifierHead(["m"], "toy").run(src)
    res = ClassifierHead(["m"], "toy", {"site": "other.logits"}).run(src)
    assert "top5_accuracy" not in set(res.table["metric"])  # 3 classes <= 5
    assert any("top-5 accuracy skipped" in n for n in res.notes)
    with pytest.raises(ConfigError):
        ClassifierHead(["m"], "toy", {"top_k": 0})
    with pytest.raises(ConfigError, match="unknown parameter"):
        ClassifierHead(["m"], "toy", {"sites": "x"})
    with pytest.raises(AnalysisError, match="no split"):
        ClassifierHead(["m"], "toy", {"splits": "train"}).requests(src)


def test_every_split_and_text_only_model_skipped():
    src = FakeSource(split_names=("train", "test"))
    src.add("m", "train", _logits_feats([0, 1, 2, 3], 4, 1.0, split="train"))
    src.add("m", "test", _logits_feats([3, 2, 1, 0], 4, 1.0, split="test"))
    src.modalities["bert"] = ("text",)
    res = ClassifierHead(["m", "bert"], "toy", {"top_k": 2}).run(src)
    t = res.table
    assert set(t["split"]) == {"train", "test"} and set(t["model"]) == {"m"}
    assert np.allclose(t.loc[t["metric"] == "top1_accuracy", "value"], 1.0)
    assert any("'bert' cannot read" in n for n in res.notes)

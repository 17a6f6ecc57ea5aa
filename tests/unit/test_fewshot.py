"""V3 few_shot: prototype and 1-NN classifiers on planted clusters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_analysis_fakes import FakeSource, balanced_labels, planted_layers

from vlprobe.analyses import ANALYSES
from vlprobe.analyses.vision.fewshot import FewShot, draw_support, few_shot_predict
from vlprobe.errors import AnalysisError, ConfigError


def _source(signal=(0.0, 5.0), n_train=12, n_test=10, k=4, dim=16, shuffle=False,
            models=("m",)):
    src = FakeSource()
    for j, m in enumerate(models):
        ytr = balanced_labels(n_train, k, seed=1)
        yte = balanced_labels(n_test, k, seed=2)
        ftr = planted_layers(ytr, len(signal), dim, list(signal), seed=10 + j, split="train")
        fte = planted_layers(yte, len(signal), dim, list(signal), seed=20 + j, split="test")
        if shuffle:
            fte.labels = np.random.default_rng(7).permutation(fte.labels)
        src.add(m, "train", ftr)
        src.add(m, "test", fte)
    return src


def test_registered():
    assert ANALYSES.get("V3") is FewShot


def test_separable_clusters_give_perfect_accuracy():
    src = _source()
    a = FewShot(["m"], "toy", {"shots": [5], "trials": 3})
    reqs = a.requests(src)
    res = a.run(src)
    assert {(c.model, c.split) for c in src.calls} <= {(r.model, r.split) for r in reqs}
    t = res.table
    assert set(t["classifier"]) == {"prototype", "1nn"}
    assert (t["site"] == "vision.blocks.1").all()  # default layer = last
    assert np.allclose(t["value"], 1.0)
    for col in ("se", "ci_low", "ci_high", "n_trials", "shots", "metric"):
        assert col in t.columns
    assert (t["n_trials"] == 3).all()
    fig = res.figures["few_shot"]
    assert len(fig.axes) == 1
    assert len(fig.axes[0].patches) == 2  # one N x (1 model x 2 classifiers)


def test_shuffled_test_labels_give_chance():
    src = _source(n_test=100, shuffle=True)
    t = FewShot(["m"], "toy", {"shots": [5], "trials": 5}).run(src).table
    se = np.sqrt(0.25 * 0.75 / 400)
    assert (t["value"].sub(0.25).abs() < 4 * se).all()


def test_support_never_in_queries():
    src = _source()
    ftr = src.data[("m", "train", "items")]
    fte = src.data[("m", "test", "items")]
    fte.ids = list(fte.ids)
    fte.ids[0] = ftr.ids[5]  # a train item leaked into the test split
    with pytest.raises(AnalysisError, match="support"):
        FewShot(["m"], "toy", {"shots": [12], "trials": 1}).run(src)


def test_draw_support_seeded_and_disjoint_from_queries():
    y = balanced_labels(10, 3)
    sup = draw_support(y, np.arange(3), 4, np.random.default_rng([0, 4, 1]))
    assert len(set(sup.tolist())) == 12
    assert np.bincount(y[sup]).tolist() == [4, 4, 4]
    again = draw_support(y, np.arange(3), 4, np.random.default_rng([0, 4, 1]))
    assert sup.tolist() == again.tolist()


def test_prototype_and_1nn_hand_example():
    s = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    ys = np.array([0, 0, 1])
    q = np.array([[0.6, 0.4], [0.1, 1.0]])
    assert few_shot_predict(s, ys, q, "prototype").tolist() == [0, 1]
    assert few_shot_predict(s, ys, q, "1nn").tolist() == [0, 1]


def test_too_many_shots_is_an_error_or_skipped():
    src = _source(n_train=6)
    with pytest.raises(AnalysisError, match=r"10-shot.*'class0' \(6\)"):
        FewShot(["m"], "toy", {"shots": [1, 10]}).run(src)
    res = FewShot(["m"], "toy", {"shots": [1, 10], "trials": 2, "skip_infeasible": True}).run(src)
    assert set(res.table["shots"]) == {1}
    assert any("N=10 skipped" in n for n in res.notes)


def test_single_class_is_an_error():
    src = _source()
    for split in ("train", "test"):
        f = src.data[("m", split, "items")]
        f.labels = np.zeros_like(f.labels)
    with pytest.raises(AnalysisError, match="single class"):
        FewShot(["m"], "toy").run(src)


def test_all_layers_seeded_and_nan():
    src = _source(models=("a", "b"))
    p = {"shots": [1, 2], "trials": 3, "layers": "all"}
    t1 = FewShot(["a", "b"], "toy", p, seed=4).run(src).table
    t2 = FewShot(["a", "b"], "toy", p, seed=4).run(src).table
    pd.testing.assert_frame_equal(t1, t2)
    assert set(t1["layer"]) == {0, 1} and len(t1) == 2 * 2 * 2 * 2
    src.data[("a", "test", "items")].features["vision.blocks.1"][0, 0] = np.nan
    with pytest.raises(AnalysisError, match=r"'a'.*vision\.blocks\.1"):
        FewShot(["a"], "toy").run(src)


def test_bad_params():
    with pytest.raises(ConfigError):
        FewShot(["m"], "toy", {"shots": [0]})
    with pytest.raises(ConfigError):
        FewShot(["m"], "toy", {"classifiers": ["knn"]})

"""V2 transfer: CLIP coarse-to-fine C sweep, sklearn cross-check, metrics, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score
from test_analysis_fakes import FakeSource, balanced_labels, planted_layers

from vlprobe.analyses import ANALYSES
from vlprobe.analyses._common import fit_standardizer
from vlprobe.analyses.base import FeatureRequest
from vlprobe.analyses.vision.transfer import Transfer
from vlprobe.errors import AnalysisError, ConfigError
from vlprobe.estimators.logistic.clip_protocol import COARSE_CS, clip_linear_probe, topk_scores

FAST = {"max_iter": 50, "refine_rounds": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blobs(n_per_class, k, dim, signal, seed):
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(size=(k, dim))
    y = np.repeat(np.arange(k), n_per_class)
    return rng.normal(size=(len(y), dim)) + signal * means[y], y


def test_registered_with_alias():
    assert ANALYSES.get("V2") is Transfer
    assert ANALYSES.canonical("V2") == "transfer"
    assert COARSE_CS[0] == pytest.approx(1e-6) and COARSE_CS[-1] == pytest.approx(1e6)


def test_topk_and_mean_per_class_recall_match_sklearn():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 7))
    classes = np.arange(7)
    y = rng.integers(0, 7, 50)
    s = topk_scores(logits, classes, y, top_k=3)
    assert s["top1_accuracy"] == pytest.approx((logits.argmax(1) == y).mean())
    assert s["top3_accuracy"] == pytest.approx(top_k_accuracy_score(y, logits, k=3,
                                                                    labels=classes))
    assert s["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(y,
                                                                               logits.argmax(1)))
    # binary logits [N, 1]; top-k with <= k classes is not reported
    b = topk_scores(np.array([[2.0], [-1.0], [0.5]]), np.array([3, 8]), np.array([8, 3, 3]), 5)
    assert b["top1_accuracy"] == pytest.approx(2 / 3) and "top5_accuracy" not in b
    assert b["mean_per_class_recall"] == pytest.approx((1.0 + 0.5) / 2)


def _selected(s):
    """Reference selection: max val accuracy, ties -> min val log-loss, then min C."""
    top = s[s["val_accuracy"] == s["val_accuracy"].max()]
    return top.sort_values(["val_log_loss", "C"])["C"].iloc[0]


def test_accuracy_ties_are_broken_by_validation_log_loss():
    xtr, ytr = _blobs(20, 3, 6, 6.0, seed=1)  # separable: every C has val accuracy 1
    xva, yva = _blobs(8, 3, 6, 6.0, seed=2)
    out = clip_linear_probe(([xtr], ytr), ([xva], yva), ([xva], yva), refine_rounds=0,
                            max_iter=60)
    s = pd.DataFrame(out.sweep)
    assert (s["val_accuracy"] == 1.0).all()
    assert out.best_C[0] > 1e-2  # not the smallest C of the sweep
    assert out.best_C[0] == _selected(s)


def test_coarse_to_fine_sweep_structure():
    xtr, ytr = _blobs(20, 3, 6, 0.7, seed=1)
    xva, yva = _blobs(8, 3, 6, 0.7, seed=2)
    xte, yte = _blobs(10, 3, 6, 0.7, seed=3)
    out = clip_linear_probe(([xtr, xtr[:, :3]], ytr), ([xva, xva[:, :3]], yva),
                            ([xte, xte[:, :3]], yte), fine_points=5, refine_rounds=2,
                            max_iter=60)
    sweep = pd.DataFrame(out.sweep)
    for li in (0, 1):
        s = sweep[sweep["layer_index"] == li]
        coarse = s[s["stage"] == 0]
        assert np.allclose(np.sort(coarse["C"]), np.logspace(-6, 6, 7))
        # each stage spans +- the previous step around the best C so far: steps 2 -> 1 -> 0.5
        for stage, step in ((1, 1.0), (2, 0.5)):
            prev = s[s["stage"] < stage]
            centre = _selected(prev)
            grid = np.clip(centre * 10.0 ** (step * np.arange(-2, 3)), 1e-6, 1e6)
            evaluated = s[s["stage"] <= stage]["C"].to_numpy()
            assert all(np.isclose(evaluated, g, rtol=1e-9).any() for g in grid)
        assert s["C"].between(1e-6, 1e6).all() and not s["C"].duplicated().any()
        best = _selected(s)
        assert out.best_C[li] == best
        assert s.loc[s["chosen"], "C"].tolist() == [best]
        assert out.val_accuracy[li] == s["val_accuracy"].max()
    assert set(out.scores) == {"top1_accuracy", "mean_per_class_recall"}
    assert out.predictions.shape == (2, len(yte))


@pytest.mark.parametrize(("k", "standardize"), [(2, False), (6, False), (6, True)])
def test_same_C_gives_the_same_predictions_as_sklearn_lbfgs(k, standardize):
    """By default the CLIP protocol fits the RAW features, as CLIP's sklearn probe does;
    ``standardize=True`` equals sklearn on z-scored features. The columns' scales span a
    decade, so the two problems differ (their coefficients by > 50%)."""
    col_scale = np.logspace(-0.5, 0.5, 8)
    (xtr, ytr), (xva, yva), (xte, yte) = (
        (x * col_scale, y)
        for x, y in (_blobs(25, k, 8, 0.6, seed=4), _blobs(10, k, 8, 0.6, seed=5),
                     _blobs(30, k, 8, 0.6, seed=6)))
    kw = {} if not standardize else {"standardize": True}
    out = clip_linear_probe(([xtr], ytr), ([xva], yva), ([xte], yte), refine_rounds=1,
                            dtype="float64", tol=1e-6, max_iter=3000, **kw)
    assert out.refit.standardized is standardize
    C = float(out.best_C[0])
    x_all, y_all = np.concatenate([xtr, xva]), np.concatenate([ytr, yva])
    mean, scale = fit_standardizer(x_all) if standardize else (0.0, 1.0)
    ref = LogisticRegression(C=C, solver="lbfgs", tol=1e-10, max_iter=10000)
    ref.fit((x_all - mean) / scale, y_all)
    pred = ref.predict((xte - mean) / scale)
    assert (pred == out.predictions[0]).mean() >= 0.98
    assert out.scores["top1_accuracy"][0] == pytest.approx((pred == yte).mean(), abs=0.02)
    coef, _ = out.refit.coef_original(0, 0)
    assert np.allclose(coef * scale, ref.coef_, atol=1e-3 * max(1.0, np.abs(ref.coef_).max()))
    if k > 5:
        assert "top5_accuracy" in out.scores


def _source(n_train=30, n_test=20, k=6, dim=10, signal=3.0, layer_signal=(0.0, 0.0)):
    src = FakeSource()
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        y = balanced_labels(n, k, seed=seed)
        f = planted_layers(y, len(layer_signal), dim, list(layer_signal), seed=10 + seed,
                           split=split)
        means = np.random.default_rng(7).normal(size=(k, dim))
        noise = np.random.default_rng(seed).normal(size=(len(y), dim))
        f.features["vision.pooled"] = (noise + signal * means[y]).astype(np.float32)
        src.add("m", split, f)
    return src


def test_embedding_transfer_on_planted_signal():
    src = _source()
    a = Transfer(["m"], "toy", FAST, seed=0)
    reqs = a.requests(src)
    res = a.run(src)
    assert {(r.model, r.split) for r in src.calls} <= {(r.model, r.split) for r in reqs}
    t = res.table
    for col in ("analysis", "model", "dataset", "layer", "site", "metric", "value", "C",
                "val_accuracy", "n_train", "n_val", "n_test", "chance"):
        assert col in t.columns
    assert set(t["site"]) == {"vision.pooled"}
    assert set(t["metric"]) == {"top1_accuracy", "top5_accuracy", "mean_per_class_recall"}
    v = t.set_index("metric")["value"]
    assert v["top1_accuracy"] > 0.9 and v["top5_accuracy"] >= v["top1_accuracy"]
    assert (t["n_train"] + t["n_val"] == 180).all() and (t["n_test"] == 120).all()
    assert set(res.figures) == {"transfer", "c_sweep"}
    sweep = res.extra_tables["c_sweep"]
    assert sweep["chosen"].sum() == 1 and set(sweep["stage"]) == {0, 1, 2}
    r2 = Transfer(["m"], "toy", FAST, seed=0).run(src)
    pd.testing.assert_frame_equal(t, r2.table)


def test_layer_selection_and_shuffled_labels():
    src = _source(k=3, layer_signal=(0.0, 3.0), signal=0.0)
    res = Transfer(["m"], "toy", {**FAST, "layer": "all"}).run(src)
    t = res.table
    top1 = t[t["metric"] == "top1_accuracy"].set_index("layer")["value"]
    assert list(top1.index) == [0, 1] and top1[1] > 0.9 and top1[0] < 0.6
    assert any("top-5 accuracy skipped" in n for n in res.notes)  # 3 classes <= 5


def test_leakage_is_refused():
    src = _source()
    src.data[("m", "test", "items")].ids[0] = "train:3"
    with pytest.raises(AnalysisError, match="share"):
        Transfer(["m"], "toy", FAST).run(src)


def test_bad_input():
    src = _source()
    src.data[("m", "train", "items")].labels[:] = 2
    with pytest.raises(AnalysisError, match="single class"):
        Transfer(["m"], "toy", FAST).run(src)
    src = _source()
    src.data[("m", "test", "items")].features["vision.pooled"][2, 0] = np.nan
    with pytest.raises(AnalysisError, match="NaN"):
        Transfer(["m"], "toy", FAST).run(src)
    src = _source()
    src.data[("m", "train", "items")].features["vision.pooled"][:, :4] = 1.0
    res = Transfer(["m"], "toy", FAST).run(src)
    assert any("4 of 10 feature(s) constant" in n for n in res.notes)
    assert np.isfinite(res.table["value"]).all()
    src = _source()
    for split in ("train", "test"):
        f = src.data[("m", split, "items")]
        del f.features["vision.pooled"], f.layers["vision.pooled"]
    res = Transfer(["m"], "toy", {**FAST, "refine_rounds": 0}).run(src)
    assert any("no embedding site" in n for n in res.notes)
    assert set(res.table["layer"]) == {1}
    for bad in ({"fine_points": 2}, {"coarse_Cs": [0.0, 1.0]}, {"layer": "first"},
                {"val_fraction": 1.0}, {"train_split": "test"}):
        with pytest.raises(ConfigError):
            Transfer(["m"], "toy", bad)


def test_raw_features_by_default_and_recorded():
    """V2 fits the raw features (CLIP's protocol) unless asked; the table and notes say so."""
    src = _source()
    res = Transfer(["m"], "toy", FAST).run(src)
    assert res.params["standardize"] is False
    assert (~res.table["standardized"]).all()
    assert any("raw features" in n for n in res.notes)
    assert any("transfer: model 'm': logistic solver peak memory estimate" in n
               for n in res.notes)
    std = Transfer(["m"], "toy", {**FAST, "standardize": True}).run(src)
    assert std.table["standardized"].all() and any("z-scored" in n for n in std.notes)


def test_unconverged_fits_are_counted_by_stop_reason():
    res = Transfer(["m"], "toy", {**FAST, "max_iter": 2, "refine_rounds": 0}).run(_source())
    note = next(n for n in res.notes if "did not reach" in n)
    assert "of 8 logistic probes" in note and "stopped at max_iter (2)" in note  # 7 + refit


def test_duplicate_train_ids_are_an_analysis_error():
    src = _source()
    f = src.data[("m", "train", "items")]
    # the items themselves (content, ids) stay distinct; only the features' ids repeat
    stimuli = {s: src.stimuli(FeatureRequest("m", "toy", s)) for s in ("train", "test")}
    src.stimuli = lambda request: stimuli[request.split]
    f.ids = ["same"] * len(f.ids)
    with pytest.raises(AnalysisError, match="validation split carved from it"):
        Transfer(["m"], "toy", FAST).run(src)

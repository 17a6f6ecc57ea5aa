"""Bad input for the vision-suite analyses (V1 V2 V3 V4 R1 R2 M7).

Each case must give either an :class:`AnalysisError` that names the model / dataset / split /
site or parameter and what was expected, or a documented fallback that is reported in the
result's notes. The cases (vision-suite issue):

(a) fewer train items per class than N (V3);
(b) a single class (V1 V2 V3 V4 R1 M7);
(c) k larger than the number of items (V4);
(d) NaN / Inf features (V1 V2 V3 V4 R1 R2 M7);
(e) a layer whose features are identical for every item (V1 V2 V3 V4 R1 R2);
(f) mismatched feature sets in the image+text concatenation (M7).

Small synthetic features from the in-memory sources of the analyses' own test modules.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_analysis_fakes import FakeSource, balanced_labels, planted_layers
from test_human_centric import DualSource, _dual_source, _lf

from vlprobe.analyses.base import LayerFeatures
from vlprobe.analyses.geometry.cka import CKA
from vlprobe.analyses.geometry.rsa import RSA, compare_rdms, mean_rdm
from vlprobe.analyses.multimodal.human_centric import HumanCentric
from vlprobe.analyses.vision.clustering import Clustering
from vlprobe.analyses.vision.fewshot import FewShot
from vlprobe.analyses.vision.probe import LayerProbe
from vlprobe.analyses.vision.transfer import Transfer
from vlprobe.errors import AnalysisError, ConfigError

torch.set_num_threads(1)  # tiny solves: extra threads only contend on shared cores

LIN = {"Cs": [0.1, 10.0], "max_iter": 100}
TRANSFER = {"max_iter": 50, "refine_rounds": 0, "coarse_Cs": [1e-2, 1.0, 1e2]}


def _split_source(models=("m",), n_train=8, n_test=6, k=3, dim=6, signal=(0.0, 4.0)):
    """train + test splits (V1 V2 V3): layer 1 carries the classes, layer 0 does not."""
    src = FakeSource()
    for j, m in enumerate(models):
        ytr = balanced_labels(n_train, k, seed=1)
        yte = balanced_labels(n_test, k, seed=2)
        src.add(m, "train", planted_layers(ytr, len(signal), dim, list(signal), seed=10 + j,
                                           split="train"))
        src.add(m, "test", planted_layers(yte, len(signal), dim, list(signal), seed=20 + j,
                                          split="test"))
    return src


def _test_source(models=("m", "b"), n_per_class=6, k=3, dim=6):
    """test split only (V4 R1 R2); every model sees the same items."""
    src = FakeSource()
    y = balanced_labels(n_per_class, k, seed=3)
    for j, m in enumerate(models):
        src.add(m, "test", planted_layers(y, 2, dim, [0.5, 4.0], seed=j, split="test",
                                          means_seed=100 + j))
    return src


def _features(src, model=None, split=None) -> list[LayerFeatures]:
    store = src.tower if isinstance(src, DualSource) else src.data
    return [f for key, f in store.items()
            if (model is None or key[0] == model) and (split is None or key[1] == split)]


# analysis id -> (analysis, source, model, split that is fitted / clustered, checked site)
CASES = {
    "V1": lambda: (LayerProbe(["m"], "toy", LIN), _split_source(), "m", "train",
                   "vision.blocks.1"),
    "V2": lambda: (Transfer(["m"], "toy", TRANSFER), _split_source(), "m", "train",
                   "vision.pooled"),
    "V3": lambda: (FewShot(["m"], "toy", {"shots": [1], "trials": 2}), _split_source(), "m",
                   "train", "vision.blocks.1"),
    "V4": lambda: (Clustering(["m"], "toy", {"n_init": 2}), _test_source(("m",)), "m", "test",
                   "vision.blocks.1"),
    "R1": lambda: (RSA(["m", "b"], "toy"), _test_source(), "m", "test", "vision.blocks.1"),
    "R2": lambda: (CKA(["m", "b"], "toy", {"kernels": ["linear"]}), _test_source(), "m", "test",
                   "vision.blocks.1"),
    "M7": lambda: (HumanCentric(["clip"], "toy", LIN), _dual_source(n_train=32, n_test=16),
                   "clip", "train", "vision.proj"),
}


# ---------------------------------------------------------------------------------------------
# (b) a single class
# ---------------------------------------------------------------------------------------------

SINGLE_CLASS = {
    "V1": "layer_probe: model 'm': split 'train' of dataset 'toy' has a single class; a probe "
          "needs at least 2",
    "V2": "transfer: model 'm': split 'train' of dataset 'toy' has a single class",
    "V3": "few_shot: model 'm': split 'train' of dataset 'toy' has a single class",
    "V4": "clustering: model 'm': split 'test' of dataset 'toy' has a single class",
    "R1": "rsa: the models share only 1 class(es) in split 'test' of dataset 'toy' (classes per "
          "model: 'm': 1, 'b': 3); an RDM comparison needs at least 3 classes",
    "M7": "human_centric: image features of model 'clip' (split 'train') of dataset 'toy': "
          "split 'train' has a single class",
}


@pytest.mark.parametrize("aid", sorted(SINGLE_CLASS))
def test_single_class_is_a_clear_error(aid):
    analysis, src, model, split, _ = CASES[aid]()
    for f in _features(src, model, split):  # every tower of the model: labels stay consistent
        f.labels = np.zeros_like(f.labels)
    with pytest.raises(AnalysisError) as err:
        analysis.run(src)
    assert SINGLE_CLASS[aid] in str(err.value)


def test_layer_probe_without_a_validation_carve_is_a_clear_error():
    src = _split_source(n_train=1)  # one train item per class: nothing to carve
    with pytest.raises(AnalysisError) as err:
        LayerProbe(["m"], "toy", LIN).run(src)
    msg = str(err.value)
    assert "model 'm'" in msg and "split 'train' of dataset 'toy'" in msg
    assert "(3 items, every class has < 2)" in msg and "needs >= 2 train items" in msg


# ---------------------------------------------------------------------------------------------
# (d) NaN / Inf features
# ---------------------------------------------------------------------------------------------

# analysis id -> (split holding the bad value, where-text of the message, id of item row 2)
NON_FINITE = {
    "V1": ("train", "dataset 'toy' split 'train'", "train:2"),
    "V2": ("test", "dataset 'toy' split 'test'", "test:2"),
    "V3": ("test", "dataset 'toy' split 'test'", "test:2"),
    "V4": ("test", "dataset 'toy' split 'test'", "test:2"),
    "R1": ("test", "dataset 'toy' split 'test' view 'items'", "test:2"),
    "R2": ("test", "dataset 'toy' split 'test'", "test:2"),
    "M7": ("train", "image tower, dataset 'toy' split 'train'", "train/2"),
}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("aid", sorted(NON_FINITE))
def test_non_finite_features_name_model_site_split_and_item(aid, bad):
    analysis, src, model, _, site = CASES[aid]()
    split, where, item = NON_FINITE[aid]
    feats = _features(src, model, split)
    feats = [f for f in feats if site in f.features]
    assert len(feats) == 1
    feats[0].features[site][2, 1] = bad
    with pytest.raises(AnalysisError) as err:
        analysis.run(src)
    counts = "1 NaN and 0 Inf" if np.isnan(bad) else "0 NaN and 1 Inf"
    n = len(feats[0].ids)
    assert (f"model {model!r} site {site!r} ({where}): features contain {counts} values in 1 "
            f"of {n} item(s) (first: item {item!r}") in str(err.value)
    assert "expected finite features" in str(err.value)


# ---------------------------------------------------------------------------------------------
# (e) a layer whose features are identical for every item
# ---------------------------------------------------------------------------------------------


def _make_constant(src, site, value=3.0, model=None):
    for f in _features(src, model):
        if site in f.features:
            f.features[site][:] = value


@pytest.mark.parametrize("probe", ["linear", "mlp"])
def test_layer_probe_constant_layer_predicts_the_prior_with_a_note(probe):
    src = _split_source()
    _make_constant(src, "vision.blocks.0")
    params = {**LIN, "probe": probe, "mlp_hidden": [16], "mlp_weight_decay": [0.0],
              "mlp_max_epochs": 5}
    res = LayerProbe(["m"], "toy", params).run(src)
    value = res.table.set_index("layer")["value"]
    assert np.isfinite(value).all()
    assert value[0] == pytest.approx(1 / 3)  # one class for every (balanced) test item
    if probe == "linear":
        assert value[1] > 0.8  # the informative layer is unaffected
    assert any("site 'vision.blocks.0': features are constant over the training items" in n
               and "std 0 is not divided by" in n for n in res.notes)
    assert not any("vision.blocks.1" in n for n in res.notes)


def test_transfer_constant_layer_predicts_the_prior_with_a_note():
    src = _split_source()
    _make_constant(src, "vision.pooled")
    res = Transfer(["m"], "toy", TRANSFER).run(src)
    v = res.table.set_index("metric")["value"]
    assert v["top1_accuracy"] == pytest.approx(1 / 3)
    assert v["mean_per_class_recall"] == pytest.approx(1 / 3)
    assert any("6 of 6 feature(s) constant on train" in n and "whole layer is constant" in n
               for n in res.notes)


@pytest.mark.parametrize("value", [3.0, 0.0], ids=["constant", "all-zero"])
def test_few_shot_constant_layer_ties_to_the_first_class_with_a_note(value):
    src = _split_source()
    _make_constant(src, "vision.blocks.1", value)
    res = FewShot(["m"], "toy", {"shots": [1, 2], "trials": 2, "layers": "all"}).run(src)
    t = res.table
    share0 = float((src.data[("m", "test", "items")].labels == 0).mean())
    assert np.allclose(t[t["layer"] == 1]["value"], share0)
    assert t[t["layer"] == 0]["value"].notna().all()
    assert any("site 'vision.blocks.1': features are identical for every item" in n
               for n in res.notes)


def test_clustering_all_zero_layer_is_nan_with_a_note():
    src = _test_source(("m",))
    _make_constant(src, "vision.blocks.1", 0.0)  # cosine affinity of zero vectors
    res = Clustering(["m"], "toy", {"n_init": 2}).run(src)
    t = res.table
    assert t[t["layer"] == 1]["value"].isna().all() and t[t["layer"] == 0]["value"].notna().all()
    assert any("site 'vision.blocks.1': features are constant over the items; metrics = NaN"
               in n for n in res.notes)


@pytest.mark.parametrize("distance", ["welch_t", "cosine", "correlation", "euclidean"])
def test_rsa_constant_layer_gives_nan_correlations_with_a_note(distance):
    src = _test_source(("m", "b", "c"))
    _make_constant(src, "vision.blocks.1", 2.0, model="m")
    res = RSA(["m", "b", "c"], "toy", {"distance": distance}).run(src)
    t = res.table
    with_m = (t["model"] == "m") | (t["model_b"] == "m")
    assert t[with_m]["value"].isna().all()
    assert np.isfinite(t[~with_m]["value"]).all()
    notes = [n for n in res.notes if "model 'm' site 'vision.blocks.1'" in n]
    assert len(notes) == 1 and "correlations are NaN" in notes[0]
    if distance == "correlation":  # every class mean (2, 2, ..., 2) has no spread
        assert "correlation distance is undefined for class(es) ['class0', 'class1', " in notes[0]
    else:  # identical classes: exactly 0 apart, not rounding noise
        assert f"all 3 class-pair {distance} distances are equal (0;" in notes[0]
    if distance == "welch_t":
        assert any("denominators were 0 and floored at epsilon" in n for n in res.notes)
    assert set(res.figures) >= {"rdms", "dendrogram", "mds"}


def test_rsa_correlation_distance_of_a_constant_class_is_nan_not_one():
    src = _test_source(("m", "b", "c"))
    f = src.data[("m", "test", "items")]
    f.features["vision.blocks.1"][f.labels == 1] = 0.7  # class 1: rows constant over dims
    res = RSA(["m", "b", "c"], "toy", {"distance": "correlation"}).run(src)
    assert any("undefined for class(es) ['class1']" in n for n in res.notes)
    rdm = res.extra_tables["rdm"]
    rdm = rdm[(rdm["model"] == "m") & (rdm["class_i"] != rdm["class_j"])]
    involves1 = (rdm["class_i"] == "class1") | (rdm["class_j"] == "class1")
    assert rdm[involves1]["distance"].isna().all()
    assert np.isfinite(rdm[~involves1]["distance"]).all()


def test_mean_rdm_undefined_distances_and_comparison():
    y = np.array([0, 0, 1, 1, 2, 2])
    x = np.array([[0.0, 0], [0, 0], [1, 2], [1, 2], [3, -1], [3, -1]])
    classes = np.arange(3)
    cos = mean_rdm(x, y, classes, "cosine")  # class 0: zero mean -> undefined
    assert np.isnan(cos[0, 1:]).all() and np.isnan(cos[1:, 0]).all() and cos[0, 0] == 0
    assert np.isfinite(cos[1:, 1:]).all()
    assert np.isfinite(mean_rdm(x, y, classes, "euclidean")).all()
    ok = mean_rdm(x, y, classes, "euclidean")
    assert np.isnan(compare_rdms(cos, ok, "pearson"))
    assert np.isnan(compare_rdms(ok, np.ones((3, 3)) - np.eye(3), "spearman"))  # constant
    assert compare_rdms(ok, ok, "spearman") == pytest.approx(1.0)


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_cka_zero_variance_gram_is_nan_with_a_note(estimator):
    src = _test_source()
    _make_constant(src, "vision.blocks.0", 0.0, model="m")
    res = CKA(["m", "b"], "toy", {"estimator": estimator}).run(src)
    t = res.table
    bad = (((t["model"] == "m") & (t["site"] == "vision.blocks.0"))
           | ((t["model_b"] == "m") & (t["site_b"] == "vision.blocks.0")))
    assert t[bad]["value"].isna().all() and np.isfinite(t[~bad]["value"]).all()
    assert bad.sum() == 2 * (3 + 2)  # per kernel: m x m 3 of 4 rows, m x b 2 of 4
    for kernel in ("linear", "rbf"):
        assert any(f"model 'm' site 'vision.blocks.0': features are constant over the items "
                   f"({kernel} Gram degenerate); CKA = NaN" in n for n in res.notes)


# ---------------------------------------------------------------------------------------------
# (a) few-shot: fewer train items per class than N
# ---------------------------------------------------------------------------------------------


def test_few_shot_too_few_items_per_class():
    src = _split_source(n_train=4)
    f = src.data[("m", "train", "items")]
    f.labels[np.flatnonzero(f.labels == 2)[:2]] = 0  # class0: 6, class1: 4, class2: 2
    with pytest.raises(AnalysisError) as err:
        FewShot(["m"], "toy", {"shots": [1, 3], "trials": 2}).run(src)
    assert ("few_shot: model 'm': 3-shot needs 3 train items per class but split 'train' of "
            "dataset 'toy' has fewer for class(es) 'class2' (2); lower `shots` or set "
            "skip_infeasible: true") in str(err.value)
    # documented fallback: skip that N, say so in the notes
    res = FewShot(["m"], "toy", {"shots": [1, 3], "trials": 2, "skip_infeasible": True}).run(src)
    assert set(res.table["shots"]) == {1}
    assert any("3-shot" in n and "'class2' (2)" in n and "N=3 skipped for model 'm'" in n
               for n in res.notes)
    # nothing left at all: an error, not an empty table
    with pytest.raises(AnalysisError, match=r"no N of shots=\[3, 5\] is feasible.*'class2'"):
        FewShot(["m"], "toy", {"shots": [3, 5], "skip_infeasible": True}).run(src)


# ---------------------------------------------------------------------------------------------
# (c) clustering: k larger than the number of items
# ---------------------------------------------------------------------------------------------


def test_clustering_k_larger_than_the_items():
    src = _test_source(("m",))  # 18 items, 3 classes
    with pytest.raises(AnalysisError) as err:
        Clustering(["m"], "toy", {"k": 19}).run(src)
    msg = str(err.value)
    assert ("clustering: model 'm': k=19 clusters (parameter `k`) but only 18 items to cluster "
            "in split 'test' of dataset 'toy'; k must be <= the number of items") in msg
    # k from the number of classes, items capped by max_items
    with pytest.raises(AnalysisError) as err:
        Clustering(["m"], "toy", {"max_items": 2}).run(src)
    msg = str(err.value)
    assert "k=3 clusters (the number of classes in split 'test') but only 2 items" in msg
    assert "(after the max_items=2 subsample of 18)" in msg and "raise `max_items`" in msg
    with pytest.raises(ConfigError, match="clustering: n_init must be a positive integer, got 0"):
        Clustering(["m"], "toy", {"n_init": 0})
    # k = n is allowed (each item may be its own cluster); sklearn's warnings become notes
    src = _test_source(("m",), n_per_class=2)
    res = Clustering(["m"], "toy", {"k": 6, "n_init": 2}).run(src)
    assert (res.table["k"] == 6).all() and np.isfinite(res.table["value"]).all()


# ---------------------------------------------------------------------------------------------
# (f) mismatched feature sets in the image+text concatenation
# ---------------------------------------------------------------------------------------------


def _replace_text(src, split, x=None, ids=None, labels=None):
    f = src.tower[("clip", split, "text")]
    src.tower[("clip", split, "text")] = _lf(
        "text.proj", f.features["text.proj"] if x is None else x,
        f.labels if labels is None else labels, f.ids if ids is None else ids)


def test_concatenation_of_different_items_names_both_feature_sets():
    src = _dual_source(n_train=32, n_test=16)
    f = src.tower[("clip", "test", "text")]
    _replace_text(src, "test", f.features["text.proj"][:-1], f.ids[:-1], f.labels[:-1])
    with pytest.raises(AnalysisError) as err:
        HumanCentric(["clip"], "toy", LIN).run(src)
    msg = str(err.value)
    assert ("cannot concatenate text features of model 'clip' (split 'test') (15 items) with "
            "image features of model 'clip' (split 'test') (16 items): the item ids differ "
            "(only in the first: [], only in the second: ['test/15'])") in msg


def test_concatenation_with_duplicate_ids_is_a_clear_error():
    src = _dual_source(n_train=32, n_test=16)
    f = src.tower[("clip", "train", "text")]
    ids = list(f.ids)[::-1]
    ids[1] = ids[0]
    _replace_text(src, "train", ids=ids)
    with pytest.raises(AnalysisError) as err:
        HumanCentric(["clip"], "toy", LIN).run(src)
    assert ("text features of model 'clip' (split 'train') has duplicate item ids (e.g. "
            "['train/31'])") in str(err.value)


def test_feature_rows_not_matching_the_ids_is_a_clear_error():
    src = _dual_source(n_train=32, n_test=16)
    f = src.tower[("clip", "train", "text")]
    _replace_text(src, "train", x=f.features["text.proj"][:-1])
    with pytest.raises(AnalysisError) as err:
        HumanCentric(["clip"], "toy", LIN).run(src)
    assert ("model 'clip' site 'text.proj': features of shape (31, 5) for 32 items"
            in str(err.value))

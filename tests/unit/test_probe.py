"""V1 layer_probe on planted features (in-memory FeatureSource)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_analysis_fakes import FakeSource, balanced_labels, planted_layers

from vlprobe.analyses import ANALYSES
from vlprobe.analyses.base import FeatureRequest
from vlprobe.analyses.vision.probe import LayerProbe
from vlprobe.errors import AnalysisError, ConfigError

FAST = {"Cs": [0.01, 1.0, 100.0], "max_iter": 300}


def _source(signal, n_train=40, n_test=30, k=4, dim=12, shuffle=False, models=("m",)):
    src = FakeSource()
    for j, m in enumerate(models):
        ytr = balanced_labels(n_train, k, seed=1)
        yte = balanced_labels(n_test, k, seed=2)
        ftr = planted_layers(ytr, len(signal), dim, signal, seed=10 + j, split="train")
        fte = planted_layers(yte, len(signal), dim, signal, seed=20 + j, split="test")
        if shuffle:  # labels independent of the features in both splits
            ftr.labels = np.random.default_rng(5).permutation(ftr.labels)
            fte.labels = np.random.default_rng(6).permutation(fte.labels)
        src.add(m, "train", ftr)
        src.add(m, "test", fte)
    return src


def test_registered_with_alias():
    assert ANALYSES.get("V1") is LayerProbe
    assert ANALYSES.canonical("V1") == "layer_probe"


def test_accuracy_peaks_at_planted_layer():
    signal = [0.0, 0.2, 3.0, 0.2, 0.0]
    src = _source(signal)
    a = LayerProbe(["m"], "toy", FAST, seed=0)
    reqs = a.requests(src)
    res = a.run(src)
    # every get was announced by requests()
    assert {(r.model, r.split, r.view) for r in src.calls} <= {
        (r.model, r.split, r.view) for r in reqs
    }
    t = res.table
    assert isinstance(t, pd.DataFrame)
    for col in ("analysis", "model", "dataset", "layer", "site", "metric", "value", "probe", "C",
                "n_train", "n_val", "n_test", "chance"):
        assert col in t.columns
    assert list(t["layer"]) == [0, 1, 2, 3, 4]
    assert int(t.loc[t["value"].idxmax(), "layer"]) == 2
    assert t["value"].max() > 0.9
    assert (t["n_val"] + t["n_train"] == 160).all() and (t["n_test"] == 120).all()
    assert t["chance"].iloc[0] == pytest.approx(0.25)
    fig = res.figures["accuracy_vs_layer"]
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 2  # model line + chance


def test_shuffled_labels_give_chance():
    signal = [3.0, 3.0]
    src = _source(signal, n_train=60, n_test=100, k=4, shuffle=True)
    res = LayerProbe(["m"], "toy", FAST, seed=0).run(src)
    n_test, chance = 400, 0.25
    se = np.sqrt(chance * (1 - chance) / n_test)
    assert (res.table["value"].sub(chance).abs() < 4 * se).all()


def test_same_seed_same_numbers_and_two_models():
    src = _source([0.5, 2.0], models=("a", "b"))
    r1 = LayerProbe(["a", "b"], "toy", FAST, seed=3).run(src)
    r2 = LayerProbe(["a", "b"], "toy", FAST, seed=3).run(src)
    pd.testing.assert_frame_equal(r1.table, r2.table)
    assert set(r1.table["model"]) == {"a", "b"}
    assert len(r1.figures["accuracy_vs_layer"].axes[0].lines) == 3


def test_mlp_and_both():
    src = _source([0.0, 2.0], n_train=30, k=3)
    params = {**FAST, "probe": "both", "mlp_hidden": [16], "mlp_weight_decay": [0.0],
              "mlp_max_epochs": 20, "layers": [1]}
    t = LayerProbe(["m"], "toy", params).run(src).table
    assert sorted(t["probe"]) == ["linear", "mlp"]
    assert (t["layer"] == 1).all()
    assert t.loc[t["probe"] == "mlp", "value"].iloc[0] > 0.6


def test_validation_never_intersects_test():
    src = _source([1.0])
    # an item of the test split also in train: the carved val split would see it -> error
    ftr = src.data[("m", "train", "items")]
    fte = src.data[("m", "test", "items")]
    fte.ids = list(fte.ids)
    fte.ids[:len(ftr.ids)] = ftr.ids[:len(fte.ids)]
    with pytest.raises(AnalysisError, match="share"):
        LayerProbe(["m"], "toy", FAST).run(src)


def test_carved_validation_is_stratified_and_disjoint():
    from vlprobe.analyses._common import stratified_split

    y = balanced_labels(10, 3)
    keep, val = stratified_split(y, 0.2, seed=0)
    assert not set(keep) & set(val) and len(keep) + len(val) == len(y)
    assert np.bincount(y[val]).tolist() == [2, 2, 2]
    assert stratified_split(y, 0.2, seed=0)[1].tolist() == val.tolist()


def test_bad_inputs():
    src = _source([1.0, 1.0])
    src.data[("m", "train", "items")].features["vision.blocks.1"][3, 2] = np.inf
    with pytest.raises(AnalysisError, match=r"'m'.*vision\.blocks\.1"):
        LayerProbe(["m"], "toy", FAST).run(src)
    with pytest.raises(ConfigError, match="probe"):
        LayerProbe(["m"], "toy", {"probe": "svm"})
    with pytest.raises(ConfigError, match="unknown parameter"):
        LayerProbe(["m"], "toy", {"cs": [1.0]})
    src = _source([1.0])
    src.split_names = ("train",)
    with pytest.raises(AnalysisError, match="no split 'test'"):
        LayerProbe(["m"], "toy").requests(src)


def test_text_model_on_text_dataset_and_unreadable_model_skipped():
    src = _source([0.1, 3.0])
    src.data_modalities = ("text",)
    src.modalities["m"] = ("text",)
    ytr = balanced_labels(20, 4, seed=1)
    src.add("img", "train", planted_layers(ytr, 2, 8, [1, 1]), modalities=("image",))
    src.modalities["m"] = ("text",)
    res = LayerProbe(["m", "img"], "toy", FAST).run(src)
    assert set(res.table["model"]) == {"m"}
    assert any("img" in n and "skipped" in n for n in res.notes)
    assert {r.modality for r in src.calls} == {"text"}


def test_constant_features_are_handled():
    src = _source([2.0])
    for split in ("train", "test"):
        src.data[("m", split, "items")].features["vision.blocks.0"][:, :3] = 1.5
    t = LayerProbe(["m"], "toy", FAST).run(src).table
    assert np.isfinite(t["value"]).all() and t["value"].iloc[0] > 0.8


def test_relative_depth_axis():
    src = _source([0.5, 1.0, 2.0])
    res = LayerProbe(["m"], "toy", {**FAST, "x_axis": "relative"}).run(src)
    xs = res.figures["accuracy_vs_layer"].axes[0].lines[0].get_xdata()
    assert xs[0] == 0 and xs[-1] == 1


def test_duplicate_train_ids_are_an_analysis_error():
    """Train items sharing ids end up on both sides of the validation carve: a real error
    (it used to be an ``assert``, which ``python -O`` strips)."""
    src = _source([1.0])
    ftr = src.data[("m", "train", "items")]
    # the items themselves (content, ids) stay distinct; only the features' ids repeat
    stimuli = {s: src.stimuli(FeatureRequest("m", "toy", s)) for s in ("train", "test")}
    src.stimuli = lambda request: stimuli[request.split]
    ftr.ids = ["same"] * len(ftr.ids)
    with pytest.raises(AnalysisError, match="validation split carved from it"):
        LayerProbe(["m"], "toy", FAST).run(src)


def test_notes_count_unconverged_probes_by_reason_and_give_the_memory_estimate():
    src = _source([1.0, 2.0])
    res = LayerProbe(["m"], "toy", {**FAST, "max_iter": 2, "solver_memory_gb": 0.5}).run(src)
    note = next(n for n in res.notes if "did not reach" in n)
    assert note.startswith("layer_probe: model 'm': ") and "stopped at max_iter (2)" in note
    assert any("peak memory estimate" in n and "budget 0.50 GiB" in n for n in res.notes)
    with pytest.raises(ConfigError, match="solver_memory_gb"):
        LayerProbe(["m"], "toy", {"solver_memory_gb": 0})

"""One helper of each kind, shared by the analyses: site selection, validation carve, device."""

from __future__ import annotations

import numpy as np
import pytest
from test_analysis_fakes import FakeSource, balanced_labels, planted_layers

from vlprobe.analyses import _common
from vlprobe.analyses._common import (
    carve_validation,
    check_layer_spec,
    embedding_site,
    run_device,
    select_layer_sites,
)
from vlprobe.analyses.base import LayerFeatures
from vlprobe.data import DatasetSpec
from vlprobe.data.splits import apply_split_spec, train_val_split
from vlprobe.data.stimuli import Stimuli
from vlprobe.errors import AnalysisError, ConfigError


def _feats(n_layers=4, embedding=True):
    layers = {f"v.{k}": k for k in range(n_layers)}
    if embedding:
        layers = {"v.proj": None, "v.pre": None, **layers}
    x = np.zeros((2, 3), np.float32)
    return LayerFeatures({s: x for s in layers}, layers, None, ["a", "b"])


# -- site selection ------------------------------------------------------------------------


def test_layer_specs():
    f = _feats()
    assert select_layer_sites(f, "all", "m") == ["v.0", "v.1", "v.2", "v.3"]
    assert select_layer_sites(f, "last", "m") == ["v.3"]
    assert select_layer_sites(f, None, "m", default="last") == ["v.3"]
    assert select_layer_sites(f, 2, "m") == ["v.2"]
    assert select_layer_sites(f, np.int64(-1), "m") == ["v.3"]
    assert select_layer_sites(f, [3, 1, -1], "m") == ["v.3", "v.1"]  # repeats count once
    assert select_layer_sites(f, "embedding", "m") == ["v.proj"]  # *.proj preferred
    # a mapping site -> layer index works before extraction (V5 chooses sites from names)
    assert select_layer_sites({"a": 0, "b": 1, "c": 2}, [0, -1], "m") == ["a", "c"]
    assert embedding_site(_feats(embedding=False)) is None
    assert embedding_site({"x.pooled": None, "x.0": 0}) == "x.pooled"


def test_layer_spec_errors():
    f = _feats()
    with pytest.raises(ConfigError, match=r"model 'm' has no layer 9; available layers: "):
        select_layer_sites(f, [1, 9], "m")
    with pytest.raises(ConfigError, match="an int or a list of ints; got True"):
        select_layer_sites(f, [True], "m")
    with pytest.raises(ConfigError, match="got 'first'"):
        select_layer_sites(f, "first", "m")
    with pytest.raises(AnalysisError, match="V9: model 'm' has no embedding site"):
        select_layer_sites(_feats(embedding=False), "embedding", "m", analysis="V9")
    with pytest.raises(AnalysisError, match="has no layer sites"):
        select_layer_sites({"e": None}, "last", "m")


def test_embedding_fallback_is_noted():
    notes = []
    sites = select_layer_sites(_feats(embedding=False), "embedding", "m", fallback="last",
                               notes=notes, analysis="transfer")
    assert sites == ["v.3"]
    assert notes == ["transfer: model 'm' has no embedding site; used 'last' instead"]


def test_check_layer_spec_at_config_time():
    check_layer_spec("a", "layers", [0, -1], ("all", "last"))
    check_layer_spec("a", "layers", None, ("all",), allow_none=True)
    for bad, kw in (("embedding", {}), ([1, "x"], {}), ([], {}), (True, {}), (None, {}),
                    ([1, 2], {"many": False})):
        with pytest.raises(ConfigError, match="a: layers must be"):
            check_layer_spec("a", "layers", bad, ("all", "last"), **kw)


@pytest.mark.parametrize("name, params", [
    ("layer_probe", {"layers": "embedding"}),
    ("few_shot", {"layers": ["x"]}),
    ("clustering", {"layers": True}),
    ("downstream", {"layers": "first"}),
    ("transfer", {"layer": [1.5]}),
    ("human_centric", {"layer": [1, 2]}),
    ("grounded_word_embeddings", {"layer": "all"}),
    ("reconstruction_probe", {"layers": "embedding"}),
])
def test_every_analysis_checks_its_layer_parameter_when_built(name, params):
    from vlprobe.analyses import ANALYSES

    with pytest.raises(ConfigError, match="must be"):
        ANALYSES.get(name)(["m"], "toy", params)


def test_analyses_select_through_the_one_helper(monkeypatch):
    """LayerProbe, FewShot, Transfer, Downstream all choose their sites here."""
    from vlprobe.analyses import ANALYSES

    seen = []
    real = _common.select_layer_sites

    def spy(*args, **kwargs):
        seen.append(args[1])
        return real(*args, **kwargs)

    src = FakeSource()
    for split, seed in (("train", 0), ("test", 1)):
        src.add("m", split, planted_layers(balanced_labels(6, 2, seed), 3, 4, [1, 1, 1],
                                           seed=seed, split=split))
    fast = {"Cs": [1.0], "max_iter": 30}
    for name, params, module in (
            ("layer_probe", {**fast, "layers": [1]}, "vision.probe"),
            ("few_shot", {"shots": [1], "trials": 1, "layers": [2]}, "vision.fewshot"),
            ("transfer", {"coarse_Cs": [1.0], "refine_rounds": 0, "layer": "last"},
             "vision.transfer")):
        monkeypatch.setattr(f"vlprobe.analyses.{module}.select_layer_sites", spy)
        t = ANALYSES.get(name)(["m"], "toy", params).run(src).table
        assert set(t["site"]) == set(real(src.data[("m", "train", "items")],
                                          params.get("layers", params.get("layer")), "m"))
    assert seen == [[1], [2], "last"]


# -- the one stratified carve ----------------------------------------------------------------


def test_dataset_carve_unchanged_for_the_same_seed():
    """Pinned from the code before the merge (vlprobe.data.splits.train_val_split was, and
    still is, what test_fraction uses)."""
    y = np.repeat(np.arange(3), [7, 5, 4])
    assert train_val_split(y, 0.25, 3)[1].tolist() == [0, 6, 7, 15]
    assert train_val_split(y, 0.25, (3, 12345))[1].tolist() == [0, 4, 7, 13]
    stim = Stimuli("toy", "train", [f"train/{i}" for i in range(16)],
                   texts=[f"t{i}" for i in range(16)], labels=y)
    out = apply_split_spec({"train": stim}, DatasetSpec(loader="toy", test_fraction=0.25,
                                                        seed=3))
    assert out["test"].ids == ["train/0", "train/1", "train/11", "train/13"]


def test_analyses_carve_validation_with_the_dataset_carve(monkeypatch):
    """One stratified carve: every analysis' validation split is train_val_split's, so the
    same seed gives the same split as the dataset-level carve of the same labels."""
    y = np.repeat(np.arange(3), [7, 5, 4])
    fit, val = carve_validation(y, 0.25, 3, "x")
    assert val.tolist() == [0, 6, 7, 15] and fit.tolist() == sorted(set(range(16)) - set(val))
    assert _common.stratified_split is train_val_split  # the old name, kept as an alias
    with pytest.raises(AnalysisError, match=r"V1: model 'm': no validation items could be "
                                            r"carved \(3 items, every class has < 2\)"):
        carve_validation(np.arange(3), 0.2, 0, "V1: model 'm'")

    from vlprobe.analyses.vision.probe import LayerProbe

    calls = []
    monkeypatch.setattr("vlprobe.analyses.vision.probe.carve_validation",
                        lambda *a: calls.append(a) or carve_validation(*a))
    src = FakeSource()
    ytr = balanced_labels(9, 2, seed=0)
    for split, labels in (("train", ytr), ("test", balanced_labels(4, 2, seed=1))):
        src.add("m", split, planted_layers(labels, 2, 4, [1, 1], seed=1, split=split))
    t = LayerProbe(["m"], "toy", {"Cs": [1.0], "max_iter": 30, "val_fraction": 0.3},
                   seed=7).run(src).table
    fit, val = train_val_split(ytr, 0.3, 7)
    assert (t["n_val"] == len(val)).all() and (t["n_train"] == len(fit)).all()
    assert len(calls) == 1 and np.array_equal(calls[0][0], ytr) and calls[0][1:3] == (0.3, 7)


# -- the run's device ------------------------------------------------------------------------


def test_run_device_comes_from_the_source():
    assert run_device(FakeSource(device="cuda:1")) == "cuda:1"
    assert run_device(object()) == "cpu"


def test_runner_source_exposes_the_configured_device():
    from vlprobe.config import parse_config
    from vlprobe.feature_source import RunFeatureSource

    raw = {"name": "d", "device": "cpu", "models": {"m": {"adapter": "hf_vit"}},
           "datasets": {"d": {"loader": "image_folder", "path": "x"}},
           "analyses": [{"analysis": "V1", "models": ["m"], "dataset": "d"}]}
    assert RunFeatureSource(parse_config(raw, check_registries=False)).device == "cpu"
    raw["device"] = "auto"
    import torch

    expect = "cuda" if torch.cuda.is_available() else "cpu"
    assert RunFeatureSource(parse_config(raw, check_registries=False)).device == expect


def _spy(monkeypatch, target):
    """Record the ``device`` keyword of ``target`` (module:function) and run it on the CPU."""
    import importlib

    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    real = getattr(module, attr)
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("device"))
        return real(*args, **{**kwargs, "device": "cpu"})

    monkeypatch.setattr(module, attr, spy)
    return seen


def test_torch_analyses_train_on_the_run_device(monkeypatch):
    from vlprobe.analyses.multimodal.human_centric import HumanCentric
    from vlprobe.analyses.text.downstream import Downstream
    from vlprobe.analyses.vision.probe import LayerProbe

    mlp = {"mlp_hidden": [8], "mlp_weight_decay": [0.0], "mlp_max_epochs": 2,
           "mlp_patience": 1, "Cs": [1.0], "max_iter": 30}
    src = FakeSource(device="cuda:3")
    for split, seed in (("train", 0), ("test", 1)):
        src.add("m", split, planted_layers(balanced_labels(6, 2, seed), 2, 4, [1, 1],
                                           seed=seed, split=split))
    seen = _spy(monkeypatch, "vlprobe.analyses.vision.probe:fit_mlp_probes")
    LayerProbe(["m"], "toy", {**mlp, "probe": "mlp"}).run(src)
    assert seen == ["cuda:3"]

    seen = _spy(monkeypatch, "vlprobe.analyses.multimodal.human_centric_parts:fit_mlp_probes")
    HumanCentric(["m"], "toy", {**mlp, "probe": "mlp", "feature_sets": ["image"],
                                "layer": "last"}).run(src)
    assert seen == ["cuda:3"]

    from test_human_centric import _dual_source

    dual = _dual_source()
    dual.device = "cuda:3"
    seen = _spy(monkeypatch,
                "vlprobe.analyses.multimodal.human_centric_parts:fit_mlp_multilabel_probes")
    HumanCentric(["clip"], "toy", {**mlp, "probe": "mlp", "multi_label": "genres"}).run(dual)
    assert seen == ["cuda:3"]

    text = FakeSource(dataset="boolq", data_modalities=("text",),
                      split_names=("train", "validation"), device="cuda:3")
    for split, seed in (("train", 0), ("validation", 1)):
        text.add("m", split, planted_layers(balanced_labels(6, 2, seed), 2, 4, [1, 1],
                                            seed=seed, split=split), modalities=("text",))
    seen = _spy(monkeypatch, "vlprobe.analyses.text.downstream:fit_mlp_probes")
    Downstream(["m"], "boolq", {**mlp, "head": "mlp"}).run(text)
    assert seen == ["cuda:3"]

    from vlprobe.analyses.text.sentence_probing import SentenceProbing

    senteval = FakeSource(dataset="ptb_sentlen", data_modalities=("text",),
                          split_names=("train", "validation", "test"), device="cuda:3")
    for split, seed in (("train", 0), ("validation", 1), ("test", 2)):
        senteval.add("m", split, planted_layers(balanced_labels(8, 2, seed), 2, 4, [1, 1],
                                                seed=seed, split=split), modalities=("text",))
    seen = _spy(monkeypatch, "vlprobe.analyses.text.sentence_probing:fit_mlp_probes")
    SentenceProbing(["m"], "ptb_sentlen", {**mlp, "probe": "mlp"}).run(senteval)
    assert seen == ["cuda:3"]


def test_reconstruction_trains_on_the_run_device(monkeypatch):
    from test_analysis_conformance import _reconstruction

    from vlprobe.analyses.vision.reconstruction import ReconstructionProbe

    models, dataset, params, src = _reconstruction(None)
    src.device = "cuda:2"
    seen = _spy(monkeypatch, "vlprobe.analyses.vision.reconstruction:fit_decoder")
    ReconstructionProbe(models, dataset, params).run(src)
    assert seen == ["cuda:2", "cuda:2"]  # one decoder per layer

"""T1 sentence_probing on planted features (in-memory FeatureSource test double)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_analysis_fakes import FakeSource, balanced_labels, planted_layers

from vlprobe.analyses import ANALYSES
from vlprobe.analyses.base import LayerFeatures
from vlprobe.analyses.text.plots import plot_sentence_probing
from vlprobe.analyses.text.sentence_probing import (
    CATEGORIES,
    SentenceProbing,
    canonical_task,
)
from vlprobe.data.probing_tasks import SENTLEN_BINS, TASKS
from vlprobe.errors import AnalysisError, ConfigError

FAST_MLP = {"mlp_hidden": [32], "mlp_weight_decay": [0.0], "mlp_max_epochs": 30,
            "mlp_patience": 5}
FAST_LIN = {"Cs": [0.01, 1.0, 100.0], "max_iter": 300}


def _bin(length):
    return next(k for k, (lo, hi) in enumerate(SENTLEN_BINS) if lo <= length <= hi)


def _length_features(n, signal, split, seed, dim=16):
    """Layer k holds a population code of sentence length scaled by ``signal[k]`` (units
    tuned to lengths 4, 6, ..., 30), plus unit noise."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 29, size=n)
    labels = np.array([_bin(x) for x in lengths], dtype=np.int64)
    centers = np.linspace(4, 30, dim)
    code = np.exp(-0.5 * ((lengths[:, None] - centers[None]) / 1.5) ** 2)
    feats, layers = {}, {}
    for k, s in enumerate(signal):
        x = rng.normal(size=(n, dim)) + s * code
        feats[f"text.blocks.{k}"] = x.astype(np.float32)
        layers[f"text.blocks.{k}"] = k
    feats["text.stem"] = rng.normal(size=(n, dim)).astype(np.float32)
    layers["text.stem"] = None
    ids = [f"{split}/{i}" for i in range(n)]
    return LayerFeatures(feats, layers, labels, ids, [str(c) for c in range(6)])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sentlen_source(signal, models=("m",), splits=("train", "validation", "test")):
    src = FakeSource(dataset="ptb_sentlen", data_modalities=("text",), split_names=splits)
    sizes = {"train": 400, "validation": 100, "test": 100}
    for j, m in enumerate(models):
        for i, split in enumerate(splits):
            src.add(m, split, _length_features(sizes[split], signal, split, 10 * j + i),
                    modalities=("text",))
    return src


def test_registered_with_alias_and_categories():
    assert ANALYSES.get("T1") is SentenceProbing
    assert ANALYSES.canonical("T1") == "sentence_probing"
    assert set(CATEGORIES) == set(TASKS)
    assert all(CATEGORIES[name] == info.category for name, info in TASKS.items())


def test_canonical_task_from_names():
    assert canonical_task("ptb_sentlen") == "SentLen"
    assert canonical_task("senteval-bigram_shift") == "BShift"
    assert canonical_task("past_present") == "Tense"
    assert canonical_task("wc_ud") == "WC"
    assert canonical_task("cifar10") is None


def test_sentlen_accuracy_peaks_at_the_layer_that_encodes_length():
    signal = [0.0, 4.0, 1.0]  # layer 1 encodes length best
    src = _sentlen_source(signal)
    an = SentenceProbing(["m"], "ptb_sentlen", FAST_MLP, seed=0)
    reqs = an.requests(src)
    assert {r.split for r in reqs} == {"train", "validation", "test"}
    assert {r.pooling for r in reqs} == {"mean"} and {r.modality for r in reqs} == {"text"}
    res = an.run(src)
    assert {(r.model, r.split, r.view) for r in src.calls} <= {
        (r.model, r.split, r.view) for r in reqs}
    t = res.table
    assert isinstance(t, pd.DataFrame)
    for col in ("analysis", "model", "dataset", "layer", "site", "metric", "value", "task",
                "category", "probe", "pooling", "n_train", "n_val", "n_test", "chance"):
        assert col in t.columns
    assert set(t["task"]) == {"SentLen"} and set(t["category"]) == {"surface"}
    assert set(t["probe"]) == {"mlp"} and set(t["pooling"]) == {"mean"}
    # the task's own validation split is the dev split (nothing carved from train)
    assert (t["n_train"] == 400).all() and (t["n_val"] == 100).all()
    assert set(t["dev_split"]) == {"validation"}
    g = t.set_index("layer")["value"]
    assert list(g.index) == [0, 1, 2]
    assert int(g.idxmax()) == 1, g.to_dict()
    assert g[1] > 0.7 and g[0] < 0.4
    assert res.params["task"] == "SentLen" and res.params["probes"] == ["mlp"]


def test_one_line_per_model_and_linear_probe_peak():
    src = _sentlen_source([0.0, 4.0, 1.0], models=("a", "b"))
    res = SentenceProbing(["a", "b"], "ptb_sentlen", {**FAST_LIN, "probe": "linear"}).run(src)
    t = res.table
    for _, g in t.groupby("model"):
        assert int(g.set_index("layer")["value"].idxmax()) == 1
    fig = res.figures["accuracy_vs_layer"]
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 1
    assert len(visible[0].lines) == 3  # one line per model + chance
    assert visible[0].get_title() == "SentLen (surface)"


def test_wc_uses_logistic_regression_only():
    ytr, yva, yte = (balanced_labels(n, 5, seed=s) for n, s in ((30, 1), (6, 2), (6, 3)))
    signal = [0.0, 3.0]
    src = FakeSource(dataset="wc", data_modalities=("text",),
                     split_names=("train", "validation", "test"))
    for split, y, seed in (("train", ytr, 1), ("validation", yva, 2), ("test", yte, 3)):
        src.add("m", split, planted_layers(y, 2, 8, signal, seed=seed, prefix="text.blocks",
                                           split=split), modalities=("text",))
    an = SentenceProbing(["m"], "wc", {**FAST_LIN, "probe": "mlp"})
    res = an.run(src)
    assert set(res.table["probe"]) == {"linear"}
    assert set(res.table["task"]) == {"WC"}
    assert any("logistic regression only" in n for n in res.notes)
    g = res.table.set_index("layer")["value"]
    assert g[1] > 0.9 and g[1] > g[0]


def test_dev_split_carved_when_the_dataset_has_none():
    src = _sentlen_source([0.0, 3.0], splits=("train", "test"))
    an = SentenceProbing(["m"], "ptb_sentlen", {**FAST_LIN, "probe": "linear"}, seed=1)
    assert {r.split for r in an.requests(src)} == {"train", "test"}
    res = an.run(src)
    t = res.table
    assert (t["n_train"] + t["n_val"] == 400).all() and (t["n_val"] == 40).all()
    assert any("dev carved from train" in n for n in res.notes)


def test_task_param_and_errors():
    src = _sentlen_source([0.0, 3.0], models=("m",))
    src.dataset = "mydata"
    an = SentenceProbing(["m"], "mydata", {**FAST_LIN, "probe": "both", "task": "tree_depth"})
    assert an.task == "TreeDepth" and an.probes() == ["linear", "mlp"]
    unknown = SentenceProbing(["m"], "mydata", {**FAST_LIN, "probe": "linear"})
    res = unknown.run(src)
    assert set(res.table["task"]) == {"unknown"}
    assert any("task not given" in n for n in res.notes)
    with pytest.raises(ConfigError, match="unknown task"):
        SentenceProbing(["m"], "x", {"task": "nope"})
    with pytest.raises(ConfigError, match=r"no SentEval task recognised.*'mydata'"):
        SentenceProbing(["m"], "ptb_sentlen", {"datasets": ["mydata"]})
    with pytest.raises(ConfigError, match=r"params\.task names one task"):
        SentenceProbing(["m"], "ptb_sentlen", {"datasets": ["ud_tense"], "task": "SentLen"})
    with pytest.raises(ConfigError, match="list of dataset keys"):
        SentenceProbing(["m"], "ptb_sentlen", {"datasets": "ud_tense"})
    with pytest.raises(ConfigError, match="probe"):
        SentenceProbing(["m"], "x", {"probe": "svm"})
    with pytest.raises(ConfigError, match="pooling"):
        SentenceProbing(["m"], "x", {"pooling": "max"})
    with pytest.raises(ConfigError, match="unknown parameter"):
        SentenceProbing(["m"], "x", {"val_frac": 0.2})
    src2 = _sentlen_source([0.0, 3.0], splits=("train",))
    with pytest.raises(AnalysisError, match="no split 'test'"):
        SentenceProbing(["m"], "ptb_sentlen", FAST_LIN).requests(src2)


def test_plot_several_tasks_one_panel_each():
    rows = []
    for task in ("SentLen", "BShift", "Tense"):
        for model in ("clip", "bert"):
            for layer in range(3):
                rows.append({"task": task, "category": CATEGORIES[task], "model": model,
                             "probe": "mlp", "layer": layer, "value": 0.5 + 0.1 * layer,
                             "chance": 0.5})
    fig = plot_sentence_probing(pd.DataFrame(rows))
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3
    assert all(len(ax.lines) == 3 for ax in visible)
    assert visible[1].get_title() == "BShift (syntactic)"


def test_end_to_end_generated_task_through_the_runner(tmp_path):
    """Config -> probing_task loader (synthetic treebank) -> tiny text model -> T1 table."""
    from test_probing_tasks import _ptb_text
    from test_runner import spec_dict

    from vlprobe.config import parse_config
    from vlprobe.results.records import read_result_table, read_run
    from vlprobe.runner import run

    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "a.mrg").write_text(_ptb_text(200, seed=1))
    cfg = {
        "name": "t1", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "models": {"bert": spec_dict("hf_text", tmp_path)},
        "datasets": {
            f"ptb_{task.lower()}": {"loader": "probing_task", "path": str(tmp_path / "tb"),
                                    "options": {"task": task, "max_per_class": 40}}
            for task in ("BShift", "SentLen", "TreeDepth")
        },
        "analyses": [
            {"analysis": "T1", "models": ["bert"], "dataset": "ptb_bshift",
             "params": {"mlp_hidden": [8], "mlp_weight_decay": [0.0], "mlp_max_epochs": 5}},
            {"analysis": "T1", "models": ["bert"], "dataset": "ptb_bshift", "name": "all_tasks",
             "params": {"mlp_hidden": [8], "mlp_weight_decay": [0.0], "mlp_max_epochs": 5,
                        "datasets": ["ptb_sentlen", "ptb_treedepth"]}},
        ],
    }
    run_dir = run(parse_config(cfg), progress=False)
    record = read_run(run_dir)
    assert record["analyses"]["T1_ptb_bshift"]["status"] == "ok"
    table = read_result_table(run_dir, "T1_ptb_bshift")
    assert set(table["task"]) == {"BShift"} and set(table["category"]) == {"syntactic"}
    assert (table["n_train"] == 64).all() and (table["n_val"] == 8).all()
    assert (table["n_test"] == 8).all() and len(table) >= 2
    # several tasks in one analysis: every task, the category figure and the best-layer table
    info = record["analyses"]["all_tasks"]
    assert info["status"] == "ok", info.get("error")
    both = read_result_table(run_dir, "all_tasks")
    assert set(both["task"]) == {"BShift", "SentLen", "TreeDepth"}
    bshift = both[both["task"] == "BShift"].sort_values("layer")["value"].to_numpy()
    np.testing.assert_allclose(bshift, table.sort_values("layer")["value"].to_numpy())
    assert {"accuracy_vs_layer", "category_accuracy"} <= set(info["figures"])
    best = pd.read_parquet(run_dir / info["extra_tables"]["best_layer"])
    assert list(best["task"]) == ["SentLen", "TreeDepth", "BShift"]  # SentEval order
    for _, row in best.iterrows():  # layer chosen on dev, test accuracy reported there
        t = both[(both["task"] == row["task"])].sort_values("layer")
        chosen = t.loc[t["val_accuracy"].idxmax()]
        assert row["bert layer"] == chosen["layer"]
        assert row["bert"] == pytest.approx(chosen["value"])
        assert row["bert dev"] == pytest.approx(t["val_accuracy"].max())
    html = (run_dir / "report.html").read_text()
    assert "<details open><summary>Table best_layer (3 rows)</summary>" in html


def test_category_means_and_best_layer_use_each_tasks_main_probe():
    from vlprobe.analyses.text.plots import plot_category_accuracy
    from vlprobe.analyses.text.sentence_probing import (
        best_layer_table,
        category_means,
    )

    rows = []
    acc = {("SentLen", "mlp"): [0.5, 0.9, 0.7], ("SentLen", "linear"): [0.99, 0.99, 0.99],
           ("WC", "linear"): [0.1, 0.3, 0.3], ("BShift", "mlp"): [0.5, 0.6, 0.8]}
    # dev accuracy of the selected probe: its best layer is NOT the best test layer for
    # SentLen (dev: 2, test: 1) and BShift (dev: 0, test: 2)
    dev = {("SentLen", "mlp"): [0.6, 0.7, 0.8], ("SentLen", "linear"): [0.99, 0.99, 0.99],
           ("WC", "linear"): [0.2, 0.4, 0.4], ("BShift", "mlp"): [0.9, 0.6, 0.7]}
    for (task, probe), values in acc.items():
        for layer, v in enumerate(values):
            rows.append({"model": "m", "task": task, "category": CATEGORIES[task],
                         "probe": probe, "layer": layer, "value": v, "chance": 0.2,
                         "val_accuracy": dev[task, probe][layer]})
    table = pd.DataFrame(rows)
    means = category_means(table)
    surface = means[means["category"] == "surface"].sort_values("layer")
    # SentLen's MLP (not its linear rows) averaged with WC's logistic probe
    np.testing.assert_allclose(surface["value"], [0.3, 0.6, 0.5])
    assert set(surface["n_tasks"]) == {2}
    best = best_layer_table(table)
    assert list(best["task"]) == ["SentLen", "WC", "BShift"]
    # the layer is chosen on dev; the table reports TEST accuracy at that layer
    assert list(best["m layer"]) == [2, 1, 0]  # WC ties on dev at layers 1 and 2: the first
    assert list(best["m"]) == [0.7, 0.3, 0.5]
    assert list(best["m dev"]) == [0.8, 0.4, 0.9]
    assert list(best["m probe"]) == ["mlp", "linear", "mlp"]
    with pytest.raises(AnalysisError, match="val_accuracy"):
        best_layer_table(table.drop(columns="val_accuracy"))
    fig = plot_category_accuracy(table)
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["surface", "syntactic"]


def test_logistic_notes_count_stop_reasons_and_give_the_memory_estimate():
    """T1 uses the solver's options and notes like V1/V2: ``max_iter`` reaches the solver,
    unconverged probes are counted by stop reason, the memory estimate names the budget."""
    src = _sentlen_source([0.0, 3.0])
    res = SentenceProbing(["m"], "ptb_sentlen", {**FAST_LIN, "probe": "linear", "max_iter": 2,
                                                  "solver_memory_gb": 0.5}).run(src)
    note = next(n for n in res.notes if "did not reach" in n)
    assert note.startswith("sentence_probing: ptb_sentlen: model 'm': ")
    assert "stopped at max_iter (2)" in note
    assert any("peak memory estimate" in n and "budget 0.50 GiB" in n for n in res.notes)
    with pytest.raises(ConfigError, match="solver_memory_gb"):
        SentenceProbing(["m"], "ptb_sentlen", {"solver_memory_gb": 0})
    with pytest.raises(ConfigError, match="standardize"):
        SentenceProbing(["m"], "ptb_sentlen", {"standardize": "yes"})


def test_standardize_reaches_the_solver_and_is_recorded():
    """``standardize: false`` fits the raw features (the solver's own answer on them), and
    the ``standardized`` column says which was used."""
    from vlprobe.estimators.logistic import select_and_evaluate

    src = _sentlen_source([0.0, 3.0])
    for split in ("train", "validation", "test"):  # layer 1 on a scale z-scoring undoes
        f = src.data[("m", split, "items")]
        f.features["text.blocks.1"] = f.features["text.blocks.1"] * np.float32(50.0)
    params = {**FAST_LIN, "probe": "linear", "Cs": [1e-4, 1e-2, 1.0], "layers": [1]}
    raw = SentenceProbing(["m"], "ptb_sentlen", {**params, "standardize": False}).run(src)
    std = SentenceProbing(["m"], "ptb_sentlen", params).run(src)
    assert raw.table["standardized"].tolist() == [False]
    assert std.table["standardized"].tolist() == [True]
    data = [src.data[("m", s, "items")] for s in ("train", "validation", "test")]
    for standardize, res in ((False, raw), (True, std)):
        sel = select_and_evaluate(*[([f.features["text.blocks.1"]], f.labels) for f in data],
                                  params["Cs"], max_iter=300, standardize=standardize)
        assert res.table["C"].iloc[0] == sel.best_C[0]
        assert res.table["value"].iloc[0] == pytest.approx(sel.test_accuracy[0])
    assert raw.table["C"].iloc[0] != std.table["C"].iloc[0]

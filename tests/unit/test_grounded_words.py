"""T4 grounded_word_embeddings on an in-memory FeatureSource with planted class features."""

from __future__ import annotations

import numpy as np
import pytest
from test_analysis_fakes import FakeSource

from vlprobe.analyses import ANALYSES
from vlprobe.analyses.base import LayerFeatures
from vlprobe.analyses.text.grounded_words import (
    GroundedWords,
    class_word,
    mean_se,
    pca_project,
    prototype_accuracy,
)
from vlprobe.errors import AnalysisError, ConfigError

NAMES = ["dog", "cat", "car", "Great_White_Shark", "tiger shark, Galeocerdo", "zzzunknown"]


def _features(names=NAMES, n_per=6, dim=12, seed=0, label_names=True):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(names)), n_per)
    means = rng.normal(size=(len(names), dim)) * 3
    x = (means[y] + rng.normal(size=(len(y), dim))).astype(np.float32)
    feats = {"vision.blocks.0": rng.normal(size=x.shape).astype(np.float32),
             "vision.pooled": x}
    layers = {"vision.blocks.0": 0, "vision.pooled": None}
    return LayerFeatures(feats, layers, y, [f"i{i}" for i in range(len(y))],
                         list(names) if label_names else None)


def _corpus(tmp_path, n=300, seed=0):
    rng = np.random.default_rng(seed)
    vocab = ["dog", "cat", "car", "shark", "man", "woman", "king", "queen", "big", "bigger",
             "love", "sex", "tiger"] + [f"f{i}" for i in range(30)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(vocab, size=10)) for _ in range(n)) + "\n")
    return path


def _source(feats):
    src = FakeSource()
    src.add("vis", "train", feats)
    src.add("txt", "train", feats, modalities=("text",))
    return src


def _params(tmp_path, **kw):
    return {"corpus": str(_corpus(tmp_path)), "pca_dim": 8, "epochs": 1, "min_count": 1,
            "window": 2, "n_runs": 2, "pair_sets": ["wordsim353"], **kw}


def test_class_word_rules():
    vocab = {"dog", "shark", "white"}
    assert class_word("Dog", vocab) == ("dog", "word")
    assert class_word("great_white_shark", vocab) == ("shark", "last_word")
    assert class_word("great white shark", vocab, "skip") == (None, "multiword")
    assert class_word("tiger shark, dog", vocab, "skip") == ("dog", "word")
    assert class_word("zebra", vocab) == (None, "absent")


def test_pca_project_and_mean_se():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 5))
    proj, kept = pca_project(x, x[:3], 2)
    assert proj.shape == (3, 2) and 0 < kept < 1
    full, kept_all = pca_project(x, x, 5)
    np.testing.assert_allclose(np.linalg.norm(full, axis=1),
                               np.linalg.norm(x - x.mean(0), axis=1), rtol=1e-10)
    assert kept_all == pytest.approx(1.0)
    assert mean_se([1.0, 3.0]) == (2.0, 1.0)
    m, se = mean_se([2.0])
    assert m == 2.0 and np.isnan(se)


def test_prototype_accuracy_hand_case():
    protos = np.array([[1.0, 0.0], [0.0, 1.0]])
    x = np.array([[2.0, 0.1], [0.1, 3.0], [1.0, 0.2]])
    assert prototype_accuracy(x, np.array([0, 1, 1]), protos) == pytest.approx(2 / 3)


def test_registered_as_T4():
    assert ANALYSES.get("T4") is GroundedWords


def test_run_returns_both_variants(tmp_path):
    src = _source(_features())
    a = GroundedWords(["vis", "txt"], "toy", _params(tmp_path), seed=5)
    reqs = a.requests(src)
    assert [(r.model, r.split, r.modality) for r in reqs] == [("vis", "train", "image")]
    res = a.run(src)
    t = res.table
    assert set(t["variant"]) == {"grounded", "baseline", "visual"}
    vis = t[t["variant"] == "visual"].iloc[0]
    assert vis["metric"] == "prototype_accuracy" and vis["chance"] == 0.25
    assert vis["value"] > 0.5 and vis["n_covered"] == 30  # planted means; 5 of 6 classes mapped
    assert set(t["model"]) == {"vis"}
    assert {"analogy_semantic", "analogy_syntactic", "wordsim353_pearson",
            "wordsim353_spearman"} <= set(t["metric"])
    w2v = t[t["variant"] != "visual"]
    assert (w2v["n_runs"] == 2).all() and (t["dim"] == 8).all()
    assert (t["site"] == "vision.pooled").all() and t["layer"].isna().all()
    # dog, cat, car, shark (2 classes merged); zzzunknown skipped
    assert (t["n_visual_words"] == 4).all()
    notes = "\n".join(res.notes)
    assert "1 class(es) with no word" in notes and "zzzunknown" in notes
    assert "'shark': [3, 4]" in notes
    assert "'txt' has no image tower" in notes
    assert "corpus = user corpus" in notes
    ws = t[(t["metric"] == "wordsim353_spearman") & (t["variant"] == "baseline")].iloc[0]
    assert ws["n_items"] == 353 and 0 < ws["coverage"] < 1
    runs = res.extra_tables["runs"]
    assert sorted(runs["seed"].unique()) == [5, 6]
    vw = res.extra_tables["visual_words"]
    assert vw.set_index("class_name").loc["Great_White_Shark", "word"] == "shark"
    assert "grounded_vs_baseline" in res.figures
    # grounded and baseline differ; runs are reproducible
    assert len(t[(t["variant"] == "baseline")]) == len(t[(t["variant"] == "grounded")])
    g = t[t["variant"] == "grounded"].set_index("metric")["value"]
    res2 = GroundedWords(["vis"], "toy", _params(tmp_path), seed=5).run(src)
    g2 = res2.table[res2.table["variant"] == "grounded"].set_index("metric")["value"]
    np.testing.assert_array_equal(g.to_numpy(), g2.to_numpy())


def test_small_pca_dimension_noted(tmp_path):
    src = _source(_features(n_per=1))  # 6 items -> at most 5 components
    res = GroundedWords(["vis"], "toy", _params(tmp_path, n_runs=1, scale="init"),
                        seed=0).run(src)
    assert (res.table["dim"] == 5).all()
    assert any("PCA dimension 5 < requested 8" in n for n in res.notes)
    assert res.table["se"].isna().all()


@pytest.mark.parametrize("scale", ["baseline", "none"])
def test_scale_options_run(tmp_path, scale):
    src = _source(_features())
    res = GroundedWords(["vis"], "toy", _params(tmp_path, n_runs=1, scale=scale,
                                                vector_size=4)).run(src)
    assert (res.table["dim"] == 4).all()


def test_errors(tmp_path):
    src = _source(_features(names=["zebra", "okapi"]))
    with pytest.raises(AnalysisError, match="occurs in the corpus"):
        GroundedWords(["vis"], "toy", _params(tmp_path)).run(src)
    src = _source(_features(label_names=False))
    with pytest.raises(AnalysisError, match="no class names"):
        GroundedWords(["vis"], "toy", _params(tmp_path)).run(src)
    with pytest.raises(AnalysisError, match="none of the models"):
        GroundedWords(["txt"], "toy", _params(tmp_path)).requests(_source(_features()))
    with pytest.raises(AnalysisError, match="no split"):
        GroundedWords(["vis"], "toy", _params(tmp_path, split="val")).requests(
            _source(_features()))
    with pytest.raises(ConfigError, match="scale"):
        GroundedWords(["vis"], "toy", {"scale": "big"})
    with pytest.raises(ConfigError, match="pair_sets"):
        GroundedWords(["vis"], "toy", {"pair_sets": ["toefl"]})
    with pytest.raises(ConfigError, match="n_runs"):
        GroundedWords(["vis"], "toy", {"n_runs": 0})
    with pytest.raises(ConfigError, match="unknown parameter"):
        GroundedWords(["vis"], "toy", {"epoch": 3})


def test_scale_factor_rules():
    from types import SimpleNamespace

    Base = SimpleNamespace(wv={"a": np.array([3.0, 4.0]), "b": np.array([0.0, 1.0])})  # norm 3

    proj = np.array([[1.0, 0.0], [0.0, 2.0]])  # mean norm 1.5
    f = {s: GroundedWords(["m"], "d", {"scale": s})._scale_factor(proj, Base, ["a", "b"], 2)
         for s in ("baseline", "init", "none")}
    assert f["baseline"] == pytest.approx(2.0)
    assert f["init"] == pytest.approx(1 / np.sqrt(6) / 1.5)
    assert f["none"] == 1.0


def test_plot_grounded_bars_panels():
    import pandas as pd

    from vlprobe.analyses.text.plots import plot_grounded_bars

    rows = [{"model": m, "variant": v, "metric": k, "value": 0.3, "se": np.nan}
            for m in ("a", "b") for v in ("grounded", "baseline")
            for k in ("analogy_semantic", "wordsim353_spearman")]
    fig = plot_grounded_bars(pd.DataFrame(rows), title="t")
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["baseline", "a", "b"]

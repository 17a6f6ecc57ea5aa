"""R1 rsa: Welch-t RDMs, RDM comparisons, cross-checks against rsatoolbox / scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform
from scipy.stats import pearsonr, spearmanr
from test_analysis_fakes import FakeSource, balanced_labels, planted_layers

from vlprobe.analyses import ANALYSES
from vlprobe.analyses.base import LayerFeatures
from vlprobe.analyses.geometry.rsa import RSA, compare_rdms, mean_rdm, upper, welch_t_rdm
from vlprobe.errors import AnalysisError, ConfigError


def _feats(n_per_class=6, k=5, dim=10, seed=0, signal=2.0):
    y = balanced_labels(n_per_class, k, seed=seed)
    return planted_layers(y, 2, dim, [0.5, signal], seed=seed, split="test",
                          means_seed=100 + seed)


def _source(models=("a", "b", "c")):
    src = FakeSource()
    for j, m in enumerate(models):
        src.add(m, "test", _feats(seed=j))
    return src


def test_registered():
    assert ANALYSES.get("R1") is RSA


def test_welch_t_matches_hand_computation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(11, 3))
    y = np.array([0] * 4 + [1] * 3 + [2] * 4)
    rdm, n_floor = welch_t_rdm(x, y, np.arange(3))
    assert n_floor == 0
    for i in range(3):
        for j in range(3):
            xi, xj = x[y == i], x[y == j]
            t = []
            for d in range(3):
                mi, mj = sum(xi[:, d]) / len(xi), sum(xj[:, d]) / len(xj)
                vi = sum((v - mi) ** 2 for v in xi[:, d]) / (len(xi) - 1)
                vj = sum((v - mj) ** 2 for v in xj[:, d]) / (len(xj) - 1)
                t.append((mi - mj) / np.sqrt(vi / len(xi) + vj / len(xj)))
            assert rdm[i, j] == pytest.approx(np.sqrt(sum(v * v for v in t)), abs=1e-12)


def test_welch_t_zero_variance_is_floored():
    x = np.array([[0.0, 1.0], [0.0, 2.0], [1.0, 3.0], [1.0, 5.0], [2.0, 0.0], [2.0, 1.0]])
    y = np.array([0, 0, 1, 1, 2, 2])
    rdm, n_floor = welch_t_rdm(x, y, np.arange(3))
    assert n_floor == 3 and np.all(np.isfinite(rdm))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # raised inside rsatoolbox
def test_mean_rdms_match_rsatoolbox_and_scipy():
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import calc_rdm

    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(6), 4)
    x = rng.normal(size=(24, 7)) + rng.normal(size=(6, 7))[y]
    classes = np.arange(6)
    mu = np.stack([x[y == c].mean(0) for c in classes])
    ds = Dataset(x, obs_descriptors={"cls": y})
    ref_corr = calc_rdm(ds, method="correlation", descriptor="cls").get_matrices()[0]
    np.testing.assert_allclose(mean_rdm(x, y, classes, "correlation"), ref_corr, atol=1e-6)
    # rsatoolbox "euclidean" = squared euclidean / n_channels
    ref_euc = calc_rdm(ds, method="euclidean", descriptor="cls").get_matrices()[0]
    ours = mean_rdm(x, y, classes, "euclidean")
    np.testing.assert_allclose(ours**2 / x.shape[1], ref_euc, atol=1e-6)
    np.testing.assert_allclose(ours, squareform(pdist(mu)), atol=1e-12)
    np.testing.assert_allclose(mean_rdm(x, y, classes, "cosine"),
                               squareform(pdist(mu, "cosine")), atol=1e-12)


def test_comparison_matches_rsatoolbox_and_scipy():
    from rsatoolbox.rdm import RDMs, compare

    rng = np.random.default_rng(2)
    a = squareform(rng.random(28))  # 8 x 8, tie-free
    b = squareform(rng.random(28) + 0.3 * squareform(a, checks=False))
    r_a, r_b = RDMs(squareform(a, checks=False)[None]), RDMs(squareform(b, checks=False)[None])
    assert compare_rdms(a, b, "pearson") == pytest.approx(
        float(compare(r_a, r_b, method="corr")[0, 0]), abs=1e-6)
    assert compare_rdms(a, b, "spearman") == pytest.approx(
        float(compare(r_a, r_b, method="spearman")[0, 0]), abs=1e-6)
    assert compare_rdms(a, b, "pearson") == pytest.approx(pearsonr(upper(a), upper(b))[0])
    assert compare_rdms(a, b, "spearman") == pytest.approx(spearmanr(upper(a), upper(b))[0])


def test_run_table_figures_and_identical_models():
    src = _source(("a", "b", "c"))
    src.add("a_copy", "test", src.data[("a", "test", "items")])
    a = RSA(["a", "b", "c", "a_copy"], "toy")
    reqs = a.requests(src)
    res = a.run(src)
    assert {(c.model, c.view) for c in src.calls} <= {(r.model, r.view) for r in reqs}
    t = res.table
    assert set(t["metric"]) == {"spearman"}  # the default comparison
    assert len(t) == 4 * 4
    same = t[(t["model"] == "a") & (t["model_b"] == "a_copy")]
    assert np.allclose(same["value"], 1.0)
    diag = t[t["model"] == t["model_b"]]
    assert np.allclose(diag["value"], 1.0)
    assert (t["site"] == "vision.blocks.1").all()
    rdm = res.extra_tables["rdm"]
    assert len(rdm) == 4 * 5 * 5 and set(rdm.columns) >= {"model", "class_i", "class_j",
                                                          "distance"}
    assert set(res.figures) == {"rdm_correlation", "rdms", "dendrogram", "mds"}
    assert len(res.figures["rdm_correlation"].axes) == 2  # heatmap + colorbar
    assert len(res.figures["rdms"].axes) == 8  # 4 heatmaps + 4 colorbars
    assert len(res.figures["mds"].axes) == 1 and len(res.figures["dendrogram"].axes) == 1


def _permuted(feats: LayerFeatures, perm: np.ndarray) -> LayerFeatures:
    inv_names = [None] * len(perm)
    for old, new in enumerate(perm):
        inv_names[new] = feats.label_names[old]
    return LayerFeatures(feats.features, feats.layers, perm[feats.labels], feats.ids, inv_names)


@pytest.mark.parametrize("distance", ["welch_t", "cosine", "correlation", "euclidean"])
def test_invariant_to_joint_class_permutation(distance):
    src = _source()
    base = RSA(["a", "b", "c"], "toy", {"distance": distance}).run(src).table
    perm = np.random.default_rng(3).permutation(5)
    src2 = FakeSource()
    for m in ("a", "b", "c"):
        src2.add(m, "test", _permuted(src.data[(m, "test", "items")], perm))
    other = RSA(["a", "b", "c"], "toy", {"distance": distance}).run(src2).table
    np.testing.assert_allclose(base["value"], other["value"], atol=1e-10)


def _prompt_feats(n_templates, n_classes=5, dim=6, seed=4):
    """Class-prompt features of a text model: ``n_templates`` vectors per class, class-major."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_templates)
    means = 2.0 * rng.normal(size=(n_classes, dim))
    return LayerFeatures(
        {"text.blocks.0": (means[y] + rng.normal(size=(len(y), dim))).astype(np.float32),
         "text.pooled": rng.normal(size=(len(y), dim)).astype(np.float32)},
        {"text.blocks.0": 0, "text.pooled": None}, y,
        [f"class:{c}:template:{t}" for c in range(n_classes) for t in range(n_templates)],
        [f"class{c}" for c in range(n_classes)],
    )


def _text_source(n_templates):
    src = _source(("a",))
    src.add("bert", "test", _prompt_feats(n_templates), modalities=("text",),
            view="class_prompts")
    return src


def test_text_models_get_the_clip_template_ensemble_and_welch_t_rdms():
    from vlprobe.data.prompts import load_template_set

    templates = load_template_set("imagenet")
    assert len(templates) == 80 and len(set(templates)) == 80
    a = RSA(["a", "bert"], "toy")
    src = _text_source(len(templates))
    reqs = {r.model: r for r in a.requests(src)}
    assert reqs["bert"].view == "class_prompts" and reqs["bert"].modality == "text"
    assert reqs["bert"].templates == tuple(templates)
    assert reqs["a"].view == "items"
    res = a.run(src)
    assert set(res.table["distance"]) == set(res.table["distance_b"]) == {"welch_t"}
    feats = src.data[("bert", "test", "class_prompts")]
    expect, _ = welch_t_rdm(feats.features["text.blocks.0"], feats.labels, np.arange(5))
    rdm = res.extra_tables["rdm"]
    ours = rdm[rdm["model"] == "bert"]["distance"].to_numpy().reshape(5, 5)
    np.testing.assert_allclose(ours, expect, rtol=1e-12)
    assert res.params["templates"] == "imagenet"  # the record keeps what the user wrote
    assert any("'imagenet' template set: 80 sentence(s) per class" in n for n in res.notes)
    assert any("welch_t for every model" in n for n in res.notes)
    assert "distance: welch_t (all models)" in res.figures["rdm_correlation"]._suptitle.get_text()
    emb = RSA(["a", "bert"], "toy", {"layer": "embedding"}).run(src).table
    assert set(emb["site"]) == {"vision.pooled", "text.pooled"}
    # a dual encoder can enter through its text tower on request
    src.modalities["bert"] = ("image", "text")
    reqs = {r.model: r for r in RSA(["a", "bert"], "toy", {"prompt_models": ["bert"]})
            .requests(src)}
    assert reqs["bert"].view == "class_prompts" and reqs["a"].view == "items"


def test_one_template_and_welch_t_stops_instead_of_mixing_distances():
    one = {"templates": ["a photo of a {}."]}
    src = _text_source(1)
    with pytest.raises(ConfigError, match=r"'bert'.*1 template.*distances: \{bert: cosine\}"):
        RSA(["a", "bert"], "toy", one).requests(src)
    with pytest.raises(ConfigError, match="'bert'"):
        RSA(["a", "bert"], "toy", one).run(src)
    # one distance for every model works with one template
    res = RSA(["a", "bert"], "toy", {**one, "distance": "cosine"}).run(src)
    assert set(res.table["distance"]) == {"cosine"}
    assert not any("different distances" in n for n in res.notes)
    # an image model with a single item of a class cannot use welch_t either
    src = _source(("a", "b"))
    f = src.data[("b", "test", "items")]
    keep = [*np.flatnonzero(f.labels != 2), np.flatnonzero(f.labels == 2)[0]]
    src.data[("b", "test", "items")] = LayerFeatures(
        {k: v[keep] for k, v in f.features.items()}, f.layers, f.labels[keep],
        [f.ids[i] for i in keep], f.label_names)
    with pytest.raises(ConfigError, match=r"'b' has a single sample for class\(es\) \['class2'\]"):
        RSA(["a", "b"], "toy").run(src)


def test_explicit_per_model_distances_are_stated_in_notes_and_figures():
    src = _text_source(1)
    res = RSA(["a", "bert"], "toy", {"templates": "a photo of a {}.",
                                     "distances": {"bert": "cosine"}}).run(src)
    t = res.table
    assert set(t[t["model"] == "bert"]["distance"]) == {"cosine"}
    assert set(t[t["model"] == "a"]["distance"]) == {"welch_t"}
    note = next(n for n in res.notes if "different distances" in n)
    assert "a: welch_t" in note and "bert: cosine" in note
    for name in ("rdm_correlation", "rdms", "dendrogram"):
        fig = res.figures[name]
        titles = [fig._suptitle.get_text() if fig._suptitle else ""]
        titles += [ax.get_title() for ax in fig.axes]
        assert any("MIXED distances: a=welch_t, bert=cosine" in x for x in titles), name
    bert_rdm = res.extra_tables["rdm"]
    bert_rdm = bert_rdm[bert_rdm["model"] == "bert"]["distance"].to_numpy().reshape(5, 5)
    feats = src.data[("bert", "test", "class_prompts")]
    np.testing.assert_allclose(
        bert_rdm, mean_rdm(feats.features["text.blocks.0"], feats.labels, np.arange(5), "cosine"))


def test_distance_params_are_checked():
    with pytest.raises(ConfigError, match="removed"):
        RSA(["a"], "toy", {"fallback_distance": "cosine"})
    with pytest.raises(ConfigError, match="removed"):
        RSA(["a"], "toy", {"strict": True})
    with pytest.raises(ConfigError, match="'zzz' is not one of"):
        RSA(["a"], "toy", {"distances": {"zzz": "cosine"}})
    with pytest.raises(ConfigError, match="distance must be one of"):
        RSA(["a"], "toy", {"distances": {"a": "manhattan"}})
    with pytest.raises(ConfigError, match="template set"):
        RSA(["a"], "toy", {"templates": "no_such_set"})
    with pytest.raises(ConfigError, match="duplicate"):
        RSA(["a"], "toy", {"templates": ["a {}.", "a {}."]})


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # raised inside rsatoolbox
def test_default_comparison_is_spearman_and_matches_rsatoolbox_end_to_end():
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import calc_rdm, compare

    src = _source(("a", "b", "c"))
    res = RSA(["a", "b", "c"], "toy", {"distance": "correlation"}).run(src)
    assert set(res.table["metric"]) == {"spearman"}
    assert "spearman" in res.figures["rdm_correlation"]._suptitle.get_text()
    ref = {}
    for m in ("a", "b", "c"):
        f = src.data[(m, "test", "items")]
        ds = Dataset(f.features["vision.blocks.1"].astype(np.float64),
                     obs_descriptors={"cls": f.labels})
        ref[m] = calc_rdm(ds, method="correlation", descriptor="cls")
    for row in res.table.itertuples():
        expect = float(compare(ref[row.model], ref[row.model_b], method="spearman")[0, 0])
        assert row.value == pytest.approx(expect, abs=1e-6)
    both = RSA(["a", "b", "c"], "toy", {"comparison": ["pearson", "spearman"]}).run(src)
    assert set(both.table["metric"]) == {"pearson", "spearman"}
    assert "pearson" in both.figures["rdm_correlation"]._suptitle.get_text()


def test_bad_inputs():
    src = _source(("a", "b"))
    src.data[("b", "test", "items")].features["vision.blocks.1"][0, 0] = np.inf
    with pytest.raises(AnalysisError, match=r"'b'.*vision\.blocks\.1"):
        RSA(["a", "b"], "toy").run(src)
    with pytest.raises(ConfigError):
        RSA(["a"], "toy", {"distance": "manhattan"})
    with pytest.raises(ConfigError):
        RSA(["a"], "toy", {"comparison": ["kendall"]})


def test_constant_features():
    src = _source(("a", "b"))
    src.data[("a", "test", "items")].features["vision.blocks.1"][:, :4] = 2.0
    res = RSA(["a", "b"], "toy").run(src)
    assert np.isfinite(res.table["value"]).all()
    assert any("floored" in n for n in res.notes)


def test_packaged_templates_are_clips_80_imagenet_templates(reference_dir):
    import json

    from vlprobe.data.prompts import load_template_set

    kit = json.loads((reference_dir / "prompts/openai_clip_imagenet_classes_templates.json")
                     .read_text())
    assert load_template_set("imagenet") == kit["imagenet_templates"]


def test_template_ensemble_end_to_end_on_tiny_models(tmp_path):
    """Through the real feature source: class prompts from the 80 templates give the tiny
    text model 80 vectors per class, so its RDM is a Welch-t RDM like the image model's."""
    from test_runner import spec_dict, write_image_folder

    from vlprobe.config import parse_config
    from vlprobe.feature_source import RunFeatureSource

    cfg = parse_config({
        "name": "tiny_rsa", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "models": {"vit": spec_dict("hf_vit", tmp_path), "bert": spec_dict("hf_text", tmp_path)},
        "datasets": {"colours": {"loader": "image_folder",
                                 "path": str(write_image_folder(tmp_path / "images", 2, 3))}},
        "analyses": [{"analysis": "R1", "models": ["vit", "bert"], "dataset": "colours"}],
    })
    source = RunFeatureSource(cfg, progress=False)
    analysis = RSA(["vit", "bert"], "colours")
    req = next(r for r in analysis.requests(source) if r.model == "bert")
    stimuli = source.stimuli(req)
    assert len(stimuli) == 3 * 80 and np.bincount(stimuli.labels).tolist() == [80] * 3
    first = stimuli.label_names[0]
    assert stimuli.texts[:2] == [f"a bad photo of a {first}.", f"a photo of many {first}."]
    res = analysis.run(source)
    assert set(res.table["distance"]) == {"welch_t"}
    assert res.table["value"].notna().all()

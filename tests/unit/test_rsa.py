"""R1 rsa: Welch-t RDMs, RDM comparisons, cross-checks against rsatoolbox / scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform
from scipy.stats import pearsonr, spearmanr
from test_analysis_fakes import FakeSource, balanced_labels, planted_layers

from vlprobe.analyses import ANALYSES
from vlprobe.analyses.base import LayerFeatures
from vlprobe.analyses.rsa import RSA, compare_rdms, mean_rdm, upper, welch_t_rdm
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
    assert set(t["metric"]) == {"pearson", "spearman"}
    assert len(t) == 4 * 4 * 2
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


def test_text_model_uses_class_prompts_and_falls_back():
    src = _source(("a",))
    rng = np.random.default_rng(4)
    prompts = LayerFeatures(
        {"text.blocks.0": rng.normal(size=(5, 6)).astype(np.float32),
         "text.pooled": rng.normal(size=(5, 6)).astype(np.float32)},
        {"text.blocks.0": 0, "text.pooled": None}, np.arange(5),
        [f"class:{c}:template:0" for c in range(5)], [f"class{c}" for c in range(5)],
    )
    src.add("bert", "test", prompts, modalities=("text",), view="class_prompts")
    a = RSA(["a", "bert"], "toy")
    reqs = {r.model: r for r in a.requests(src)}
    assert reqs["bert"].view == "class_prompts" and reqs["bert"].modality == "text"
    assert reqs["bert"].templates == ("a photo of a {}.",)
    assert reqs["a"].view == "items"
    res = a.run(src)
    assert any("bert" in n and "'cosine'" in n for n in res.notes)
    row = res.table[(res.table["model"] == "bert") & (res.table["metric"] == "pearson")]
    assert set(row["distance"]) == {"cosine"}
    with pytest.raises(AnalysisError, match="welch_t needs >= 2"):
        RSA(["a", "bert"], "toy", {"strict": True}).run(src)
    emb = RSA(["a", "bert"], "toy", {"layer": "embedding"}).run(src).table
    assert set(emb["site"]) == {"vision.pooled", "text.pooled"}
    # a dual encoder can enter through its text tower on request
    src.modalities["bert"] = ("image", "text")
    reqs = {r.model: r for r in RSA(["a", "bert"], "toy", {"prompt_models": ["bert"]})
            .requests(src)}
    assert reqs["bert"].view == "class_prompts" and reqs["a"].view == "items"


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

"""R2 cka: estimator maths against references, invariances, and the analysis on fakes."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ortho_group
from test_analysis_fakes import FakeSource, balanced_labels, planted_layers

from vlprobe.analyses import ANALYSES
from vlprobe.analyses.base import LayerFeatures
from vlprobe.analyses.geometry.cka import (
    CKA,
    center_gram,
    cka,
    gram_linear,
    gram_rbf,
    hsic,
    linear_hsic,
    linear_terms,
)
from vlprobe.errors import AnalysisError, ConfigError


def _xy(n=30, dx=8, dy=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx))
    y = x[:, :dy] @ rng.normal(size=(dy, dy)) + 0.5 * rng.normal(size=(n, dy))
    return x, y


def _song_hsic(k, l_):
    """Song et al. (2012) eq. 5, written out."""
    n = len(k)
    kt, lt = k.copy(), l_.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    return (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ kt @ lt @ one) / (n * (n - 3))


def _u_statistic_hsic(k, l_):
    """HSIC as the U-statistic over ordered distinct 4-tuples (definition, tiny n only)."""
    vals = [k[i, j] * l_[i, j] + k[i, j] * l_[q, r] - 2 * k[i, j] * l_[i, q]
            for i, j, q, r in itertools.permutations(range(len(k)), 4)]
    return float(np.mean(vals))


def _gram_reference_cka(x, y, estimator):
    """Linear CKA the straightforward way: [n, n] Grams of the centred features, HSIC by
    Song et al. eq. 5 (unbiased) or tr(K H L H) / (n-1)^2 (biased)."""
    grams = []
    for z in (x, y):
        zc = z - z.mean(0)
        grams.append(zc @ zc.T)
    n = len(x)
    h = np.eye(n) - 1.0 / n

    def hsic_ref(k, l_):
        if estimator == "unbiased":
            return _song_hsic(k, l_)
        return np.trace(k @ h @ l_ @ h) / (n - 1) ** 2

    k, l_ = grams
    return hsic_ref(k, l_) / np.sqrt(hsic_ref(k, k) * hsic_ref(l_, l_)), hsic_ref(k, l_)


def test_registered_with_alias():
    assert ANALYSES.get("R2") is CKA
    assert ANALYSES.canonical("R2") == "cka"


def test_unbiased_hsic_matches_song_formula_and_u_statistic():
    x, y = _xy(n=6, dx=3, dy=2, seed=1)
    for k, l_ in ((gram_linear(x), gram_linear(y)), (gram_rbf(x), gram_rbf(y))):
        expected = _u_statistic_hsic(k, l_)
        assert _song_hsic(k, l_) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert hsic(k, l_, "unbiased") == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
@pytest.mark.parametrize(("n", "dx", "dy"), [(300, 40, 25), (60, 200, 150), (50, 8, 400)])
def test_feature_space_linear_cka_equals_the_gram_reference(estimator, n, dx, dy):
    # tall (feature products), wide (Gram products) and mixed shapes; correlated features
    rng = np.random.default_rng(n + dx)
    x = rng.normal(size=(n, dx)) + 3.0
    y = np.tanh(x[:, :1] * rng.normal(size=(1, dy))) + 0.3 * rng.normal(size=(n, dy))
    ref_cka, ref_hsic = _gram_reference_cka(x, y, estimator)
    a, b = linear_terms(x, estimator), linear_terms(y, estimator)
    assert linear_hsic(a, b) == pytest.approx(ref_hsic, rel=1e-9)
    assert cka(x, y, "linear", estimator) == pytest.approx(ref_cka, abs=1e-9)
    assert cka(x, x, "linear", estimator) == pytest.approx(1.0, abs=1e-12)


def test_linear_cka_never_builds_the_n_by_n_gram(monkeypatch):
    import vlprobe.analyses.geometry.cka as cka_module

    x, y = _xy()
    expect = cka(x, y, "linear")

    def forbidden(*_args, **_kw):
        raise AssertionError("linear CKA built an [n, n] Gram")

    monkeypatch.setattr(cka_module, "gram_linear", forbidden)
    assert cka(x, y, "linear") == pytest.approx(expect, abs=1e-12)
    res = CKA(["a", "b"], "toy", {"kernels": ["linear"], "max_items": None}).run(_source())
    assert res.table["value"].notna().all()


def test_biased_linear_cka_matches_feature_space_formula():
    x, y = _xy()
    xc, yc = x - x.mean(0), y - y.mean(0)
    ref = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert cka(x, y, "linear", "biased") == pytest.approx(ref, rel=1e-10)
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k, l_ = gram_linear(x), gram_linear(y)
    assert hsic(k, l_, "biased") == pytest.approx(np.trace(k @ h @ l_ @ h) / (n - 1) ** 2)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_self_similarity_is_one_and_symmetric(kernel, estimator):
    x, y = _xy()
    assert cka(x, x, kernel, estimator) == pytest.approx(1.0, abs=1e-12)
    assert cka(x, y, kernel, estimator) == pytest.approx(cka(y, x, kernel, estimator), abs=1e-12)
    assert 0.0 < cka(x, y, kernel, estimator) < 1.0


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_linear_cka_invariant_to_orthogonal_transform_scaling_and_shift(estimator):
    x, y = _xy()
    q = ortho_group.rvs(x.shape[1], random_state=3)
    base = cka(x, y, "linear", estimator)
    assert cka(x @ q, y, "linear", estimator) == pytest.approx(base, abs=1e-10)
    assert cka(7.5 * x, 0.01 * y, "linear", estimator) == pytest.approx(base, abs=1e-10)
    assert cka(x + 3.0, y - 1.0, "linear", estimator) == pytest.approx(base, abs=1e-10)
    # but not to an arbitrary (non-isotropic) linear map
    assert abs(cka(x * np.arange(1, 9), y, "linear", estimator) - base) > 1e-3


def test_rbf_median_heuristic_makes_it_invariant_to_isotropic_scaling_and_rotation():
    x, y = _xy()
    q = ortho_group.rvs(x.shape[1], random_state=4)
    base = cka(x, y, "rbf")
    assert cka(5.0 * x @ q, y, "rbf") == pytest.approx(base, abs=1e-10)
    assert cka(x, y, "rbf", rbf_sigma=0.5) != pytest.approx(base, abs=1e-4)


def test_unbiased_removes_the_high_dimension_bias_for_independent_features():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 400)), rng.normal(size=(40, 400))
    assert cka(x, y, "linear", "biased") > 0.5  # the known small-n / large-D bias
    assert abs(cka(x, y, "linear", "unbiased")) < 0.1


def test_degenerate_inputs():
    x = np.ones((10, 3))
    assert np.isnan(cka(x, np.random.default_rng(0).normal(size=(10, 3))))
    assert gram_rbf(x) is None
    with pytest.raises(AnalysisError, match="n >= 4"):
        center_gram(np.eye(3))
    with pytest.raises(AnalysisError, match="items"):
        cka(np.zeros((5, 2)), np.zeros((6, 2)))


# --------------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------------


def _source(models=("a", "b"), n=24, n_layers=3, dim=6):
    src = FakeSource()
    y = balanced_labels(n // 3, 3, seed=1)
    for j, m in enumerate(models):
        src.add(m, "test", planted_layers(y, n_layers, dim, [1.0] * n_layers, seed=j,
                                          split="test"))
    return src


def test_analysis_tables_and_heatmaps():
    src = _source()
    a = CKA(["a", "b"], "toy", {"max_items": None}, seed=0)
    reqs = a.requests(src)
    res = a.run(src)
    assert {(r.model, r.split) for r in src.calls} <= {(r.model, r.split) for r in reqs}
    t = res.table
    for col in ("analysis", "model", "dataset", "layer", "site", "model_b", "layer_b", "metric",
                "value"):
        assert col in t.columns
    # pairs (a, a), (a, b), (b, b) x 2 kernels x 3 x 3 layers
    assert len(t) == 3 * 2 * 9
    assert set(t["metric"]) == {"cka_linear", "cka_rbf"}
    assert set(res.figures) == {f"cka_{k}_{p}" for k in ("linear", "rbf")
                                for p in ("a_vs_a", "a_vs_b", "b_vs_b")}
    self_ab = t[(t["model"] == "a") & (t["model_b"] == "a") & (t["metric"] == "cka_linear")]
    mat = self_ab.pivot(index="layer", columns="layer_b", values="value").to_numpy()
    assert np.allclose(np.diag(mat), 1.0) and np.allclose(mat, mat.T)
    # the table value equals the function on the same features
    fa, fb = src.data[("a", "test", "items")], src.data[("b", "test", "items")]
    row = t[(t["model"] == "a") & (t["model_b"] == "b") & (t["layer"] == 1) & (t["layer_b"] == 2)
            & (t["metric"] == "cka_rbf")]
    expect = cka(fa.features["vision.blocks.1"], fb.features["vision.blocks.2"], "rbf")
    assert float(row["value"].iloc[0]) == pytest.approx(expect, abs=1e-12)
    row = t[(t["model"] == "a") & (t["model_b"] == "b") & (t["layer"] == 2) & (t["layer_b"] == 0)
            & (t["metric"] == "cka_linear")]
    expect, _ = _gram_reference_cka(fa.features["vision.blocks.2"].astype(np.float64),
                                    fb.features["vision.blocks.0"].astype(np.float64), "unbiased")
    assert float(row["value"].iloc[0]) == pytest.approx(expect, abs=1e-9)
    r2 = CKA(["a", "b"], "toy", {"max_items": None}, seed=0).run(src)
    pd.testing.assert_frame_equal(t, r2.table)


def test_single_model_gives_its_layer_by_layer_matrix():
    res = CKA(["a"], "toy", {"kernels": "linear", "self_pairs": False}).run(_source(("a",)))
    assert set(res.figures) == {"cka_linear_a_vs_a"} and len(res.table) == 9


def test_include_embedding_adds_the_embedding_site():
    res = CKA(["a"], "toy", {"kernels": "linear", "include_embedding": True}).run(_source(("a",)))
    t = res.table
    assert len(t) == 16 and "vision.pooled" in set(t["site"]) and t["layer"].isna().sum() == 4
    emb = t[(t["site"] == "vision.pooled") & (t["site_b"] == "vision.pooled")]
    assert float(emb["value"].iloc[0]) == pytest.approx(1.0)


def test_different_items_raise_and_reordered_items_are_aligned():
    src = _source()
    fb = src.data[("b", "test", "items")]
    src.data[("b", "test", "items")] = LayerFeatures(
        {s: v[:-1] for s, v in fb.features.items()}, fb.layers, fb.labels[:-1], fb.ids[:-1]
    )
    with pytest.raises(AnalysisError, match="different items"):
        CKA(["a", "b"], "toy", {"kernels": "linear"}).run(src)

    src = _source()
    ref = CKA(["a", "b"], "toy", {"kernels": "linear"}).run(src).table
    fb = src.data[("b", "test", "items")]
    perm = np.random.default_rng(0).permutation(len(fb.ids))
    src.data[("b", "test", "items")] = LayerFeatures(
        {s: v[perm] for s, v in fb.features.items()}, fb.layers, fb.labels[perm],
        [fb.ids[i] for i in perm]
    )
    res = CKA(["a", "b"], "toy", {"kernels": "linear"}).run(src)
    assert any("reordered" in n for n in res.notes)
    assert np.allclose(res.table["value"], ref["value"])


def test_nan_features_raise_and_constant_features_give_nan_with_note():
    src = _source()
    src.data[("a", "test", "items")].features["vision.blocks.0"][3, 1] = np.nan
    with pytest.raises(AnalysisError, match="NaN"):
        CKA(["a", "b"], "toy").run(src)
    src = _source()
    src.data[("a", "test", "items")].features["vision.blocks.0"][:] = 2.0
    res = CKA(["a", "b"], "toy").run(src)
    t = res.table
    bad = t[(t["model"] == "a") & (t["site"] == "vision.blocks.0")]
    assert bad["value"].isna().all() and t.drop(bad.index)["value"].notna().any()
    assert any("constant" in n for n in res.notes)


def test_subsample_and_bad_params():
    res = CKA(["a", "b"], "toy", {"max_items": 12, "kernels": ["linear"]}).run(_source())
    assert (res.table["n"] == 12).all() and any("12 of 24" in n for n in res.notes)
    with pytest.raises(ConfigError):
        CKA(["a"], "toy", {"kernels": ["poly"]})
    with pytest.raises(ConfigError):
        CKA(["a"], "toy", {"estimator": "debiased!"})
    with pytest.raises(ConfigError):
        CKA(["a"], "toy", {"pairs": [["a", "zzz"]]})
    src = _source()
    for m in ("a", "b"):
        f = src.data[(m, "test", "items")]
        src.data[(m, "test", "items")] = LayerFeatures(
            {s: v[:3] for s, v in f.features.items()}, f.layers, f.labels[:3], f.ids[:3])
    with pytest.raises(AnalysisError, match=">= 4"):
        CKA(["a", "b"], "toy").run(src)


@settings(max_examples=25, deadline=None)
@given(st.integers(5, 25), st.integers(1, 6), st.integers(1, 6), st.integers(0, 10_000),
       st.floats(0.01, 100.0))
def test_linear_cka_properties(n, dx, dy, seed, scale):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, dx)), rng.normal(size=(n, dy))
    q = ortho_group.rvs(dx, random_state=seed) if dx > 1 else np.array([[-1.0]])
    for est in ("unbiased", "biased"):
        v = cka(x, y, "linear", est)
        assert v == pytest.approx(cka(y, x, "linear", est), abs=1e-9)
        assert v == pytest.approx(cka(scale * x @ q, y, "linear", est), abs=1e-8)
        assert cka(x, x, "linear", est) == pytest.approx(1.0, abs=1e-9)
        assert -1.0 - 1e-9 <= v <= 1.0 + 1e-9
    assert cka(x, y, "linear", "biased") >= -1e-12

"""V4 clustering: greedy assignment, metrics vs sklearn, planted clusters, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from test_analysis_fakes import FakeSource, balanced_labels, planted_layers

from vlprobe.analyses import ANALYSES
from vlprobe.analyses.vision.clustering import (
    Clustering,
    clustering_metrics,
    contingency,
    cosine_affinity,
    greedy_accuracy,
    greedy_assignment,
    hungarian_accuracy,
)
from vlprobe.errors import AnalysisError, ConfigError


def test_registered_with_alias():
    assert ANALYSES.get("V4") is Clustering
    assert ANALYSES.canonical("V4") == "clustering"


def test_greedy_assignment_on_a_hand_made_table():
    # rows: clusters, columns: classes. Greedy takes 9 (0 -> 0) first, then the largest of what
    # is left, 5 (1 -> 2), then 1 (2 -> 1): 15 of 31. The optimum is 8 + 5 + 8 = 21
    # (0 -> 1, 1 -> 2, 2 -> 0), so greedy and Hungarian differ here.
    table = np.array([
        [9, 8, 0],
        [0, 0, 5],
        [8, 1, 0],
    ])
    assert greedy_assignment(table) == [(0, 0), (1, 2), (2, 1)]
    # ties -> lowest (row, column); a surplus row stays unassigned
    assert greedy_assignment(np.array([[3, 3], [3, 3], [1, 0]])) == [(0, 0), (1, 1)]
    clusters = np.repeat([0, 0, 0, 1, 1, 2, 2], [9, 8, 0, 5, 0, 8, 1])
    labels = np.repeat([0, 1, 2, 2, 0, 0, 1], [9, 8, 0, 5, 0, 8, 1])
    t, _, _ = contingency(clusters, labels)
    assert t.tolist() == table.tolist()
    assert greedy_accuracy(clusters, labels) == pytest.approx(15 / 31)
    assert hungarian_accuracy(clusters, labels) == pytest.approx(21 / 31)


def test_metrics_equal_sklearn_and_are_label_permutation_invariant():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 60)
    clusters = np.where(rng.random(60) < 0.7, (labels + 1) % 4, rng.integers(0, 4, 60))
    m = clustering_metrics(clusters, labels)
    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(labels, clusters))
    assert m["ari"] == pytest.approx(adjusted_rand_score(labels, clusters))
    renamed = np.array([3, 0, 2, 1])[clusters]
    assert clustering_metrics(renamed, labels) == pytest.approx(m)
    assert m["accuracy"] <= m["accuracy_hungarian"] + 1e-12
    assert clustering_metrics(labels, labels)["accuracy"] == 1.0


def test_cosine_affinity_negative_handling():
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]])
    clip = cosine_affinity(x, "clip")
    assert clip[0, 1] == 0.0 and clip[0, 2] == 0.0 and np.all(np.diag(clip) == 1.0)
    assert cosine_affinity(x, "abs")[0, 1] == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        cosine_affinity(x, "shift")


def _source(signal=5.0, n=20, k=4, dim=16, shuffle=False, n_layers=2):
    src = FakeSource()
    y = balanced_labels(n, k, seed=2)
    f = planted_layers(y, n_layers, dim, [0.0] + [signal] * (n_layers - 1), seed=3, split="test")
    if shuffle:
        f.labels = np.random.default_rng(1).permutation(f.labels)
    src.add("m", "test", f)
    return src


def test_planted_separable_clusters_are_recovered():
    src = _source(signal=8.0)
    a = Clustering(["m"], "toy", seed=0)
    reqs = a.requests(src)
    res = a.run(src)
    assert [r.split for r in src.calls] == ["test"] and src.calls[0] in reqs
    t = res.table
    for col in ("analysis", "model", "dataset", "layer", "site", "metric", "value", "negative",
                "k", "chance"):
        assert col in t.columns
    planted = t[t["layer"] == 1].set_index("metric")["value"]
    assert planted["accuracy"] == 1.0 and planted["nmi"] == pytest.approx(1.0)
    assert planted["ari"] == pytest.approx(1.0)
    noise = t[t["layer"] == 0].set_index("metric")["value"]
    assert noise["ari"] < 0.2
    assert (t["negative"] == "clip").all() and any("clipped to 0" in n for n in res.notes)
    assert set(res.figures) == {"clustering_vs_layer"}
    pd.testing.assert_frame_equal(t, Clustering(["m"], "toy", seed=0).run(src).table)


def test_shuffled_labels_give_near_chance():
    res = Clustering(["m"], "toy", {"layers": "last", "negative": "abs"}).run(
        _source(signal=8.0, n=40, shuffle=True))
    v = res.table.set_index("metric")["value"]
    assert abs(v["ari"]) < 0.05 and v["nmi"] < 0.1
    assert v["accuracy"] < 0.25 + 0.15
    assert any("|cos|" in n for n in res.notes)


def test_bad_input():
    src = _source()
    src.data[("m", "test", "items")].labels[:] = 0
    with pytest.raises(AnalysisError, match="single class"):
        Clustering(["m"], "toy").run(src)
    with pytest.raises(AnalysisError, match="k=500"):
        Clustering(["m"], "toy", {"k": 500}).run(_source())
    src = _source()
    src.data[("m", "test", "items")].features["vision.blocks.1"][0, 0] = np.inf
    with pytest.raises(AnalysisError, match="Inf"):
        Clustering(["m"], "toy").run(src)
    src = _source()
    src.data[("m", "test", "items")].features["vision.blocks.0"][:] = 1.5
    res = Clustering(["m"], "toy").run(src)
    t = res.table
    assert t[t["layer"] == 0]["value"].isna().all() and t[t["layer"] == 1]["value"].notna().all()
    assert any("constant" in n for n in res.notes)
    src = _source(signal=8.0)
    src.data[("m", "test", "items")].features["vision.blocks.1"][:2] = 0.0
    res = Clustering(["m"], "toy", {"layers": "last"}).run(src)
    assert any("2 item(s) with all-zero features" in n for n in res.notes)
    assert res.table["value"].notna().all()
    with pytest.raises(ConfigError):
        Clustering(["m"], "toy", {"negative": "zero"})
    with pytest.raises(ConfigError):
        Clustering(["m"], "toy", {"k": 1})


def test_subsample_and_explicit_k():
    res = Clustering(["m"], "toy", {"max_items": 40, "k": 2, "layers": [1]}).run(_source())
    t = res.table
    assert (t["n"] == 40).all() and (t["k"] == 2).all()
    assert any("40 of 80" in n for n in res.notes)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(2, 6), st.integers(0, 10_000))
def test_greedy_assignment_properties(n_rows, n_cols, seed):
    table = np.random.default_rng(seed).integers(0, 6, size=(n_rows, n_cols))
    pairs = greedy_assignment(table)
    rows, cols = zip(*pairs)
    assert len(pairs) == min(n_rows, n_cols)
    assert len(set(rows)) == len(rows) and len(set(cols)) == len(cols)
    assert table[pairs[0]] == table.max()
    # every pick is the largest entry left among unassigned rows and columns
    for i, (r, c) in enumerate(pairs):
        left = table[np.ix_([x for x in range(n_rows) if x not in rows[:i]],
                            [y for y in range(n_cols) if y not in cols[:i]])]
        assert table[r, c] == left.max()
    clusters = np.repeat(np.repeat(np.arange(n_rows), n_cols), table.ravel())
    labels = np.repeat(np.tile(np.arange(n_cols), n_rows), table.ravel())
    if len(labels):
        assert greedy_accuracy(clusters, labels) <= hungarian_accuracy(clusters, labels) + 1e-12

"""Memory of the logistic-probe solver: the peak estimate, the chunking it chooses, and that a
chunked solve is the same fit as one batched solve."""

from __future__ import annotations

import numpy as np
import pytest

from vlprobe.estimators.logistic import (
    fit_logistic_path,
    plan_solves,
    select_and_evaluate,
    solve_bytes,
)
from vlprobe.estimators.logistic import path as path_module

GB = 1e9


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n=120, k=4, dims=(6, 6, 6, 9), seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return [rng.normal(size=(n, d)) + (0.4 + 0.3 * j) * rng.normal(size=(k, d))[y]
            for j, d in enumerate(dims)], y


def test_wordcontent_size_fits_8gb_only_with_chunking():
    """SentEval WordContent: 10k items, 1,000 classes, width 768, the default 8-value C grid."""
    for n_layers in (4, 13):
        plan = plan_solves(10_000, [768] * n_layers, 8, 1000)
        assert plan.unchunked_bytes > 8 * GB  # one batched solve would not fit
        assert plan.chunked and plan.peak_bytes < 8 * GB
        assert plan.peak_bytes <= plan.budget
        assert plan.n_solves > 1
    assert "chunked into" in plan.describe() and "GiB" in plan.describe()


def test_estimate_grows_with_every_dimension_and_counts_the_logits():
    base = {"n_layers": 2, "n_cs": 4, "n_items": 500, "width": 64, "n_classes": 50}
    b0 = solve_bytes(**base)
    for key in base:
        assert solve_bytes(**{**base, key: base[key] * 2}) > b0, key
    # float32 logits of the batch: [L, N, P*K] -- at least two copies are alive at once
    assert b0 > 2 * 2 * 500 * 4 * 50 * 4
    assert solve_bytes(**base, dtype_bytes=8) > b0
    with pytest.raises(ValueError, match="mode"):
        solve_bytes(**base, mode="sideways")


def test_plan_chunks_layers_first_then_c_values():
    one_layer = solve_bytes(1, 8, 1000, 64, 100)
    plan = plan_solves(1000, [64] * 6, 8, 100, budget=3 * one_layer)
    (g,) = plan.groups
    assert g.c_chunk == 8 and 1 < g.layer_chunk < 6  # whole layers per solve
    assert sum(len(c) for c in g.layer_chunks()) == 6
    tight = plan_solves(1000, [64] * 6, 8, 100, budget=one_layer // 2)
    (g,) = tight.groups
    assert g.layer_chunk == 1 and g.c_chunk < 8  # a layer alone is too big: split its Cs
    assert tight.n_solves == 6 * len(g.c_chunks(8))
    floor = plan_solves(1000, [64] * 2, 8, 100, budget=1)
    assert floor.groups[0].layer_chunk == floor.groups[0].c_chunk == 1
    assert "over budget" in floor.describe()
    wide = plan_solves(1000, [64, 32, 64], 8, 100)  # one group per width
    assert sorted(g.layers for g in wide.groups) == [[0, 2], [1]]


@pytest.mark.parametrize("k", [2, 4])
def test_chunked_solve_equals_one_batched_solve(k):
    """Forced to one probe per solve (layers of two widths, C split too), the fit is the one
    batched solve's: probes are independent problems."""
    xs, y = _data(k=k)
    Cs = [0.01, 0.3, 10.0]
    kw = {"dtype": "float64", "tol": 1e-7, "max_iter": 500}
    whole = fit_logistic_path(xs, y, Cs, **kw)
    split = fit_logistic_path(xs, y, Cs, memory_budget=1, **kw)
    assert not whole.plan.chunked and whole.plan.n_solves == 2
    assert split.plan.chunked and split.plan.n_solves == 4 * 3
    assert split.extra["memory"]["n_solves"] == 12
    for a, b in zip(whole.coef, split.coef):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    for a, b in zip(whole.intercept, split.intercept):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(whole.n_iter, split.n_iter)
    np.testing.assert_array_equal(whole.stop_reason, split.stop_reason)


def test_chunked_row_space_solve_and_warm_started_refit():
    """Wide layers (row-space preconditioned solve) and a warm-started refit, chunked."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 90)
    xs = [rng.normal(size=(90, 120)) + rng.normal(size=(3, 120))[y] for _ in range(2)]
    tr, va, te = np.arange(60), np.arange(60, 75), np.arange(75, 90)
    parts = [([x[i] for x in xs], y[i]) for i in (tr, va, te)]
    kw = {"dtype": "float64", "tol": 1e-6}
    whole = select_and_evaluate(*parts, [0.1, 10.0], **kw)
    split = select_and_evaluate(*parts, [0.1, 10.0], memory_budget=1, **kw)
    assert split.path.plan.n_solves == 4 and split.path.plan.groups[0].mode == "row_space"
    np.testing.assert_array_equal(whole.best_C, split.best_C)
    for a, b in zip(whole.refit.coef, split.refit.coef):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert "peak memory estimate" in split.memory_note("layer_probe: model 'm'")


def test_prediction_in_row_blocks_equals_the_full_logits(monkeypatch):
    xs, y = _data(k=4)
    path = fit_logistic_path(xs, y, [0.1, 1.0])
    full = np.stack([z.argmax(-1) for z in path.decision_function(xs)])
    monkeypatch.setattr(path_module, "_SCORE_BLOCK", 8 * 4 * 2)  # blocks of 8 rows
    np.testing.assert_array_equal(path.predict(xs), path.classes[full])

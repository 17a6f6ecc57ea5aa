"""The batched logistic-probe solver agrees with sklearn's LogisticRegression(lbfgs)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from vlprobe.errors import AnalysisError
from vlprobe.estimators.logistic import fit_logistic_path, select_and_evaluate
from vlprobe.estimators.mlp import fit_mlp_probe


def _data(n=150, k=3, dims=(8, 8, 5), seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    xs = []
    for j, d in enumerate(dims):
        means = rng.normal(size=(k, d))
        xs.append(rng.normal(size=(n, d)) + (0.3 + 0.5 * j) * means[y] + 3.0)
    return xs, y


@pytest.mark.parametrize("k", [2, 4])
def test_matches_sklearn_coefficients_and_probabilities(k):
    xs, y = _data(k=k)
    Cs = [0.01, 0.3, 10.0]
    path = fit_logistic_path(xs, y, Cs, dtype="float64", tol=1e-9, max_iter=2000)
    # tol 1e-9 is below what the float64 objective resolves for some probes: they stop on
    # stagnation (not reported converged), at the optimum all the same
    assert set(path.stop_reason.ravel()) <= {"gradient_tol", "stagnation"}
    assert (path.converged == (path.stop_reason == "gradient_tol")).all()
    proba = path.predict_proba(xs)
    for layer, x in enumerate(xs):
        z = (x - path.means[layer]) / path.scales[layer]  # the solver's standardisation
        for p, C in enumerate(Cs):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(z, y)
            np.testing.assert_allclose(path.coef[layer][p], ref.coef_, atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(path.intercept[layer][p], ref.intercept_, atol=1e-4)
            assert np.abs(proba[layer][p] - ref.predict_proba(z)).max() < 1e-5
            # mapping back to raw features gives the same logits
            w, b = path.coef_original(layer, p)
            own = path.decision_function(xs)[layer][p]
            np.testing.assert_allclose(x @ w.T + b, own, atol=1e-8)


def test_float32_close_to_sklearn():
    xs, y = _data(k=3)
    path = fit_logistic_path(xs, y, [0.1, 1.0], dtype="float32")
    proba = path.predict_proba(xs)
    for layer, x in enumerate(xs):
        z = (x - path.means[layer]) / path.scales[layer]
        for p, C in enumerate([0.1, 1.0]):
            ref = LogisticRegression(C=C, tol=1e-8, max_iter=5000).fit(z, y)
            # sklearn at the same tol (1e-4, its default) as the yardstick of "close enough"
            same_tol = LogisticRegression(C=C, max_iter=5000).fit(z, y)
            err_sk = np.abs(same_tol.predict_proba(z) - ref.predict_proba(z)).max()
            err = np.abs(proba[layer][p] - ref.predict_proba(z)).max()
            assert err < max(2 * err_sk, 5e-4), (layer, C, err, err_sk)


def test_string_labels_and_predict():
    xs, y = _data(k=3)
    names = np.array(["cat", "dog", "eel"])[y]
    path = fit_logistic_path(xs, names, [1.0])
    assert set(path.predict(xs).ravel()) <= {"cat", "dog", "eel"}
    assert path.score(xs, names).shape == (3, 1)


def test_constant_feature_and_single_class():
    xs, y = _data(k=3)
    xs[0][:, 2] = 7.0  # constant feature: standardisation must not divide by zero
    path = fit_logistic_path(xs, y, [1.0], dtype="float64")
    assert np.all(np.isfinite(path.coef[0]))
    assert abs(path.coef[0][0][:, 2]).max() < 1e-8
    with pytest.raises(AnalysisError, match="at least 2 classes"):
        fit_logistic_path(xs, np.zeros(len(y), int), [1.0])
    bad = [x.copy() for x in xs]
    bad[1][0, 0] = np.nan
    with pytest.raises(AnalysisError, match="NaN"):
        fit_logistic_path(bad, y, [1.0])


def test_select_and_evaluate_picks_c_and_refits():
    xs, y = _data(n=300, k=3)
    tr, va, te = np.arange(0, 180), np.arange(180, 240), np.arange(240, 300)
    sel = select_and_evaluate(
        ([x[tr] for x in xs], y[tr]), ([x[va] for x in xs], y[va]),
        ([x[te] for x in xs], y[te]), [0.001, 0.1, 10.0],
    )
    assert sel.val_accuracy.shape == (3, 3)
    assert sel.best_C.shape == (3,) and set(sel.best_C) <= {0.001, 0.1, 10.0}
    for layer in range(3):
        row = sel.val_accuracy[layer]
        assert row[list(sel.Cs).index(sel.best_C[layer])] == row.max()
    # the most informative layer (largest planted signal) is probed best
    assert sel.test_accuracy[2] >= sel.test_accuracy[0]
    assert sel.refit.coef[0].shape[0] == 1


def test_mlp_probe_learns_nonlinear_and_is_seeded():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = (x[:, 0] * x[:, 1] > 0).astype(int)  # XOR: not linearly separable
    split = (x[:240], y[:240]), (x[240:320], y[240:320]), (x[320:], y[320:])
    kw = {"hidden_sizes": (32,), "weight_decays": (0.0,), "max_epochs": 15, "lr": 2e-2}
    a = fit_mlp_probe(*split, seed=3, **kw)
    b = fit_mlp_probe(*split, seed=3, **kw)
    assert a.test_accuracy == b.test_accuracy and a.val_accuracy == b.val_accuracy
    assert a.test_accuracy > 0.85
    lin = select_and_evaluate(*[([s[0]], s[1]) for s in split], [1.0])
    assert lin.test_accuracy[0] < 0.75


def test_warm_start_reaches_the_same_optimum():
    xs, y = _data(k=3)
    cold = fit_logistic_path(xs, y, [0.5], dtype="float64", tol=1e-9)
    init = [((c[0] + 0.3)[None], (i[0] - 0.2)[None]) for c, i in zip(cold.coef, cold.intercept)]
    warm = fit_logistic_path(xs, y, [0.5], dtype="float64", tol=1e-9, init=init)
    for a, b in zip(cold.coef, warm.coef):
        # both stop when the float64 objective stagnates (~1e-14 relative), ~1e-6 from the optimum
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("n", [40, 150])  # N < D (row-space basis) and N > D (eigenbasis)
def test_preconditioned_solve_is_the_same_problem(n):
    """Principal-axes rotation + diagonal scaling change the iterations, not the optimum; with
    N < D the solve runs in the N-dimensional row space of the features."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, n)
    mix = rng.normal(size=(60, 60)) * np.logspace(0, -2, 60)  # strongly correlated features
    x = rng.normal(size=(n, 60)) @ mix.T + np.eye(3)[y] @ rng.normal(size=(3, 60))
    kw = {"dtype": "float64", "tol": 1e-8, "max_iter": 5000}
    plain = fit_logistic_path([x], y, [0.05, 5.0], precondition=False, **kw)
    pre = fit_logistic_path([x], y, [0.05, 5.0], precondition=True, **kw)
    for path in (plain, pre):  # tol 1e-8: some stop where the float64 objective stagnates
        assert set(path.stop_reason.ravel()) <= {"gradient_tol", "stagnation"}
    np.testing.assert_allclose(pre.coef[0], plain.coef[0], atol=2e-4)
    np.testing.assert_allclose(pre.intercept[0], plain.intercept[0], atol=2e-4)


def test_preconditioning_needs_fewer_iterations_on_correlated_features():
    rng = np.random.default_rng(0)
    n, d = 600, 64
    y = rng.integers(0, 4, n)
    q = np.linalg.qr(rng.normal(size=(d, d)))[0] * np.sqrt(np.logspace(-1.5, 1.5, d))
    x = rng.normal(size=(n, d)) @ q.T + 1.5 * rng.normal(size=(4, d))[y] / np.sqrt(d)
    y = np.where(rng.random(n) < 0.1, rng.integers(0, 4, n), y)  # 10% label noise
    Cs = [0.01, 1.0, 100.0]
    plain = fit_logistic_path([x], y, Cs, precondition=False)
    pre = fit_logistic_path([x], y, Cs, precondition=True)
    assert pre.converged.all()
    assert pre.n_iter.sum() < 0.8 * plain.n_iter.sum(), (pre.n_iter, plain.n_iter)


def test_auto_preconditions_only_wide_layers():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 50)
    wide = [rng.normal(size=(50, 80)) + np.eye(3)[y] @ rng.normal(size=(3, 80))]
    tall = [w[:, :20] for w in wide]
    for xs, twin in ((wide, True), (tall, False)):
        auto = fit_logistic_path(xs, y, [0.1, 10.0], precondition="auto")
        same = fit_logistic_path(xs, y, [0.1, 10.0], precondition=twin)
        np.testing.assert_array_equal(auto.n_iter, same.n_iter)
    with pytest.raises(ValueError, match="precondition"):
        fit_logistic_path(tall, y, [1.0], precondition="yes")


def test_row_blocks_stand_for_their_concatenation():
    """A layer given as (train, val) row blocks is the same fit as the concatenated array."""
    from vlprobe.analyses._common import fit_standardizer

    xs, y = _data(k=3)
    blocks = [(x[:100], x[100:]) for x in xs]
    for x, (a, b) in zip(xs, blocks):
        for got, want in zip(fit_standardizer((a, b)), fit_standardizer(x)):
            np.testing.assert_allclose(got, want, rtol=1e-12)
    whole = fit_logistic_path(xs, y, [0.1, 3.0], dtype="float64")
    split = fit_logistic_path(blocks, y, [0.1, 3.0], dtype="float64")
    for a, b in zip(whole.coef, split.coef):
        np.testing.assert_allclose(a, b, atol=1e-9)
    with pytest.raises(ValueError, match="layer 0"):
        fit_logistic_path([(xs[0][:100], xs[0][100:, :3])], y, [1.0])


def test_masked_evaluation_equals_full_evaluation():
    """Evaluating only some probes of a layer gives those probes' full-batch values."""
    import torch

    from vlprobe.estimators.logistic import _loss_grad, _loss_grad_masked

    rng = np.random.default_rng(3)
    L, N, P, K, D = 3, 40, 4, 5, 7
    X = torch.as_tensor(rng.normal(size=(L, N, D)))
    y = torch.as_tensor(rng.integers(0, K, N))
    W = torch.as_tensor(rng.normal(size=(L, P, K, D)))
    b = torch.as_tensor(rng.normal(size=(L, P, K)))
    lam = torch.as_tensor(rng.uniform(0.01, 1, size=(L, P)))
    mask = torch.as_tensor(rng.random((L, P)) < 0.5)
    mask[0] = True  # one full layer, the others partial
    f, gW, gb = _loss_grad(X, y, W, b, lam, False)
    fm, gWm, gbm = _loss_grad_masked(X, y, W, b, lam, False, None, mask)
    torch.testing.assert_close(fm[mask], f[mask])
    torch.testing.assert_close(gWm[mask], gW[mask])
    torch.testing.assert_close(gbm[mask], gb[mask])
    assert not fm[~mask].any() and not gWm[~mask].any()


def test_wide_layers_are_solved_to_the_optimum():
    """N < D: the default call (float32, sklearn's tol) returns the exact optimum, which is
    what sklearn's lbfgs reaches when run to convergence, also for weak regularisation.
    (Stopped at tol=1e-4 instead, held-out probabilities were up to 0.44 off at C=100.)"""
    rng = np.random.default_rng(4)
    n, d = 60, 150
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, d)) * np.logspace(0, -1.5, d) + 0.3 * rng.normal(size=(3, d))[y]
    x_new = rng.normal(size=(300, d)) * np.logspace(0, -1.5, d)
    Cs = [0.1, 100.0]
    path = fit_logistic_path([x], y, Cs)
    assert path.converged.all()
    for p, C in enumerate(Cs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = LogisticRegression(C=C, tol=1e-10, max_iter=100000).fit(
                (x - path.means[0]) / path.scales[0], y)
        rel = np.linalg.norm(path.coef[0][p] - ref.coef_) / np.linalg.norm(ref.coef_)
        assert rel < 1e-2, (C, rel)
        np.testing.assert_allclose(
            path.predict_proba([x_new])[0][p],
            ref.predict_proba((x_new - path.means[0]) / path.scales[0]), atol=2e-3)


def test_converged_flag_uses_the_callers_tolerance():
    """The row-space solve iterates past the caller's tol; if max_iter stops it on the way,
    the probe still counts as converged when it met the caller's tol."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 40)
    x = rng.normal(size=(40, 90)) + rng.normal(size=(3, 90))[y]
    loose = fit_logistic_path([x], y, [1.0], tol=1e-2, max_iter=8)
    tight = fit_logistic_path([x], y, [1.0], tol=1e-2, max_iter=10000)
    assert loose.n_iter[0, 0] == 8 < tight.n_iter[0, 0]  # it kept going past tol=1e-2
    assert loose.converged.all() and tight.converged.all()
    never = fit_logistic_path([x], y, [1.0], tol=1e-9, max_iter=2)
    assert not never.converged.any()


def test_stagnation_is_not_reported_as_converged():
    """A gradient tolerance below what the objective can resolve: every probe stops because
    the objective stagnates, and none may count as converged (they used to)."""
    xs, y = _data(k=3)
    path = fit_logistic_path(xs, y, [0.01, 10.0], dtype="float64", tol=1e-30, max_iter=3000)
    assert (path.stop_reason == "stagnation").all()
    assert (path.n_iter < 3000).all()
    assert not path.converged.any()
    sel = select_and_evaluate((xs, y), (xs, y), (xs, y), [0.01, 10.0], dtype="float64",
                              tol=1e-30)
    assert not sel.converged
    assert sel.convergence_note("m", 1e-30, 1000) == (
        "m: 9 of 9 logistic probes did not reach max |grad| <= tol=1e-30: 9 stopped because "
        "the objective stagnated (no decrease at float precision)")


def test_stop_reasons_max_iter_and_gradient_tol():
    xs, y = _data(k=3)
    capped = fit_logistic_path(xs, y, [1.0], dtype="float64", tol=1e-12, max_iter=3)
    assert (capped.stop_reason == "max_iter").all() and not capped.converged.any()
    assert (capped.n_iter == 3).all()
    loose = fit_logistic_path(xs, y, [1.0], dtype="float64", tol=1e-3)
    assert (loose.stop_reason == "gradient_tol").all() and loose.converged.all()
    note = select_and_evaluate((xs, y), (xs, y), (xs, y), [1.0], dtype="float64", tol=1e-12,
                               max_iter=3).convergence_note("x", 1e-12, 3)
    assert note == ("x: 6 of 6 logistic probes did not reach max |grad| <= tol=1e-12: "
                    "6 stopped at max_iter (3)")


def test_line_search_failure_is_its_own_stop_reason():
    """With no backtracking allowed (max_ls=0) and badly scaled features the first unit step
    overshoots: the line search fails, the probe stops there, unconverged."""
    import torch

    from vlprobe.estimators.logistic import _batched_lbfgs

    rng = np.random.default_rng(6)
    X = torch.as_tensor(100.0 * rng.normal(size=(1, 60, 5)))
    y = torch.as_tensor(rng.integers(0, 3, 60))
    lam = torch.full((1, 2), 1e-3, dtype=torch.float64)
    out = _batched_lbfgs(X, y, lam, 3, False, max_ls=0, max_iter=50)
    assert (out.stop_reason == "line_search").all()
    assert not out.converged.any() and (out.n_iter == 0).all()  # no step was taken
    assert not out.W.any()

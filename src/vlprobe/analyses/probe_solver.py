"""Fast probes: many L2-regularised logistic regressions (all layers x a C sweep) at once.

Objective (identical to scikit-learn 1.9 ``LogisticRegression(C=C, fit_intercept=True)``
with ``solver="lbfgs"``; see ``sklearn/linear_model/_logistic.py``, where
``l2_reg_strength = 1 / (C * n_samples)`` is passed to ``LinearModelLoss``)::

    J(W, b) = (1/n) sum_i CE(y_i, x_i W^T + b) + 1/(2 C n) ||W||_F^2      (intercept not penalised)

i.e. sklearn's ``sum_i CE_i + 1/(2C) ||W||^2`` divided by n, so for the same C the minimiser is
the same. Multiclass (K >= 3) uses the symmetric multinomial parameterisation (K weight
vectors); binary (K = 2) uses ONE weight vector and the logistic loss, as sklearn does (a
2-class multinomial with the same C would be a different problem: its effective C is halved).

Solver: a *batched* L-BFGS. Every probe (layer l, regularisation C_p) has its own L-BFGS
history, step length (backtracking Armijo line search) and convergence test, but all probes
advance together so each iteration is two batched matrix products ``[L, N, D] x [L, D, P*K]``.
A probe stops when ``max |grad J| <= tol`` (scipy's ``gtol``, what sklearn passes as ``tol``);
finished layers / C columns are dropped from the batch (compaction), and once some probes of a
layer have finished, that layer's products run over its unfinished C columns only
(:func:`_loss_grad_masked`), so the slow probes do not make the finished ones cost anything.

Wide layers (N < D) are solved in their N-dimensional row space with a principal-axes
preconditioner, in float64 and to the optimum (see ``ROW_SPACE_TOL_FACTOR``); other layers
follow sklearn's plain L-BFGS path by default (see ``precondition`` of
:func:`fit_logistic_path` for why).

Layers of different widths are *grouped by width* (one batched solve per distinct width)
rather than zero-padded to the widest layer: padding would be exact (a zero column has zero
data gradient and the L2 term keeps its weight at 0) but wastes up to (D_max / D_l) x the
flops for models whose stages differ a lot in width (ResNets: 256 ... 2048).

Features are standardised per layer with the mean/std of the training rows only (constant
features keep std = 1). Coefficients are reported in the standardised space (``coef``) and
can be mapped back with :meth:`ProbePath.coef_original`.

Also: :func:`select_and_evaluate` (CLIP protocol: choose C per layer on a validation split,
refit on train + val, report test accuracy). The MLP probe is in
:mod:`vlprobe.analyses.mlp_probe`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlprobe.analyses._common import fit_standardizer
from vlprobe.errors import AnalysisError

DEFAULT_CS = tuple(float(c) for c in np.logspace(-3, 4, 8))


def _torch():
    import torch

    return torch


# --------------------------------------------------------------------------------------------
# batched L-BFGS core
# --------------------------------------------------------------------------------------------


# The logits product X W^T runs up to 1.7x faster on CPU (MKL) when W's row count is a
# multiple of 16 (10 classes x 1 probe: 2.9 ms at 10 rows vs 1.9 ms at 16, N=5000, D=768), so
# it is zero-padded to one; the gradient product shows no such effect and is left alone.
GEMM_ALIGN = 16


def _loss_grad(X, y, W, b, lam, binary: bool, scale=None):
    """Objective and gradient of every probe.

    X: [L, N, D]; y: [N] int64 (binary: 0/1); W: [L, P, Kf, D]; b: [L, P, Kf]; lam: [L, P]
    (= 1 / (C n), float64). Returns f [L, P] (float64), gW like W, gb like b.
    With ``scale`` ([L, P, 1, D]) the variables are V = W / scale (diagonal preconditioning):
    the objective is evaluated at W = V * scale and gW is the gradient with respect to V.
    Layout: W is [L, P, Kf, D] so that per-probe reductions run over contiguous memory; the
    matrix products use transposed views (no copies).
    """
    torch = _torch()
    if scale is not None:
        f, g_eff, gb = _loss_grad(X, y, W * scale, b, lam, binary)
        return f, g_eff.mul_(scale), gb
    L, N, D = X.shape
    P, Kf = W.shape[1], W.shape[2]
    PK = P * Kf
    pad = -PK % GEMM_ALIGN
    if pad:  # zero rows up to a multiple of GEMM_ALIGN: a faster MKL kernel (see GEMM_ALIGN)
        Wf = torch.cat([W.reshape(L, PK, D), W.new_zeros(L, pad, D)], 1)
        bf = torch.cat([b.reshape(L, 1, PK), b.new_zeros(L, 1, pad)], 2)
        Z = torch.baddbmm(bf, X, Wf.transpose(1, 2))[..., :PK].reshape(L, N, P, Kf)
    else:
        Wt = W.reshape(L, PK, D).transpose(1, 2)  # [L, D, P*Kf] view
        Z = torch.baddbmm(b.reshape(L, 1, PK), X, Wt).reshape(L, N, P, Kf)
    if binary:
        z = Z[..., 0]
        yb = y.to(Z.dtype).view(1, N, 1)
        ce = torch.nn.functional.softplus(z) - yb * z
        G = (torch.sigmoid(z) - yb).unsqueeze(-1)
    else:
        # the fused log_softmax kernel, then softmax = exp(log p) in place: two passes over
        # Z instead of five (amax, exp, sum, log, div), and stable for confident wrong logits
        idx = y.view(1, N, 1, 1).expand(L, N, P, 1)
        G = torch.log_softmax(Z, -1)
        ce = G.gather(-1, idx).squeeze(-1).neg_()
        G.exp_()
        G.scatter_add_(-1, idx, torch.full_like(ce.unsqueeze(-1), -1.0))
    pen = W.reshape(L, P, Kf * D).pow(2).sum(-1).double()
    f = ce.sum(1, dtype=torch.float64) / N + 0.5 * lam * pen
    gW = torch.bmm(G.reshape(L, N, P * Kf).transpose(1, 2), X).reshape(L, P, Kf, D)
    gW.div_(N).add_(W * lam.to(W.dtype).view(L, P, 1, 1))
    gb = G.sum(1) / N
    return f, gW, gb


def _loss_grad_masked(X, y, W, b, lam, binary: bool, scale, mask):
    """:func:`_loss_grad` for the probes where ``mask`` ([L, P] bool) is set; 0 elsewhere.

    Late in a solve most layers have only one or two unfinished C values while the batch
    still holds every C column that is unfinished in *some* layer; evaluating layer by layer
    with only its own unfinished columns skips that work (about a third of the products on
    the 13 x 8 benchmark). The products are then skinny and partly memory-bound, so a fully
    set mask keeps the single batched product.
    """
    torch = _torch()
    if bool(mask.all()):
        return _loss_grad(X, y, W, b, lam, binary, scale)
    L, P = mask.shape
    f = torch.zeros(L, P, dtype=torch.float64)
    gW = torch.zeros_like(W)
    gb = torch.zeros_like(b)
    for a in range(L):
        cols = mask[a].nonzero().squeeze(1)
        if cols.numel() == 0:
            continue
        at = slice(a, a + 1)  # keeps the layer dimension (size 1)
        fa, gWa, gba = _loss_grad(X[at], y, W[at, cols], b[at, cols], lam[at, cols], binary,
                                  None if scale is None else scale[at, cols])
        f[a, cols], gW[a, cols], gb[a, cols] = fa[0], gWa[0], gba[0]
    return f, gW, gb


def _pdot(aW, ab, bW, bb):
    """Per-probe inner product -> [L, P] (float64)."""
    L, P = aW.shape[:2]  # (torch.linalg.vecdot is ~20x slower than this on CPU)
    return ((aW * bW).reshape(L, P, -1).sum(-1) + (ab * bb).sum(-1)).double()


def _gmax(gW, gb):
    return _torch().maximum(gW.abs().amax((2, 3)), gb.abs().amax(-1)).double()


@dataclass
class _SolveOut:
    W: Any
    b: Any
    n_iter: Any
    converged: Any


def _batched_lbfgs(
    X,
    y,
    lam,
    n_free: int,
    binary: bool,
    *,
    max_iter: int = 1000,
    tol: float = 1e-4,
    history: int = 10,
    max_ls: int = 30,
    W0=None,
    b0=None,
    scale=None,
    rot=None,
    report_tol: float | None = None,
) -> _SolveOut:
    """Minimise every probe's objective with its own L-BFGS state (see module docstring).

    ``scale`` ([L, P, D]) and ``rot`` ([L, D_orig, D]) come from :func:`_preconditioner`:
    the solve runs in the preconditioned variables V (W_rot = V * scale, W_std = W_rot rot^T),
    ``W0`` is given and the result returned in V; the convergence test uses the gradient in
    the standardised coordinates, ``max |(gV / scale) rot^T| <= tol``, as without it.
    With ``report_tol`` (> tol) a probe iterates to ``tol`` but is reported converged once it
    has met ``max |grad| <= report_tol`` (the caller's tolerance), e.g. if max_iter stops it
    on the way to the tighter one.
    """
    torch = _torch()
    L_all, _, D = X.shape
    P_all = lam.shape[1]
    dtype = X.dtype
    eps = float(torch.finfo(dtype).eps)
    out_W = torch.zeros(L_all, P_all, n_free, D, dtype=dtype)
    out_b = torch.zeros(L_all, P_all, n_free, dtype=dtype)
    if W0 is not None:
        out_W.copy_(W0)
        out_b.copy_(b0)
    n_iter = np.zeros((L_all, P_all), dtype=np.int64)
    converged = np.zeros((L_all, P_all), dtype=bool)

    li = torch.arange(L_all)  # active rows (layers) and columns (C values)
    pi = torch.arange(P_all)
    Xa, lama = X, lam
    sa = None if scale is None else scale.to(dtype).unsqueeze(2)  # [L, P, 1, D]
    ra = rot

    def gmax(gW, gb):
        if sa is None:
            return _gmax(gW, gb)
        La, Pa, Kf_, Da = gW.shape  # gradient in the standardised coordinates
        g_std = torch.bmm((gW / sa).reshape(La, Pa * Kf_, Da), ra.transpose(1, 2))
        return _gmax(g_std.reshape(La, Pa, Kf_, -1), gb)

    W, b = out_W.clone(), out_b.clone()
    f, gW, gb = _loss_grad(Xa, y, W, b, lama, binary, sa)
    report_tol = tol if report_tol is None else report_tol
    gm = gmax(gW, gb)
    active = gm > tol
    conv_a = ~active
    reached_a = gm <= report_tol  # met the caller's tolerance at some iterate
    hist: list[list[Any]] = []  # [sW, sb, yW, yb, rho]
    gamma = torch.ones(L_all, P_all, dtype=torch.float64)
    fresh = torch.ones(L_all, P_all, dtype=torch.bool)  # no curvature pair yet

    def _evaluate(Wn, bn, which, fn, gWn, gbn):
        """Objective/gradient of the probes in ``which``; the others keep (fn, gWn, gbn)
        from the previous trial step (or 0 for finished probes, which no longer use them)."""
        f_, gW_, gb_ = _loss_grad_masked(Xa, y, Wn, bn, lama, binary, sa, which)
        if fn is None:
            return f_, gW_, gb_
        return (torch.where(which, f_, fn), torch.where(which[:, :, None, None], gW_, gWn),
                torch.where(which[..., None], gb_, gbn))

    def flush():
        for a, l_idx in enumerate(li.tolist()):
            out_W[l_idx][pi] = W[a]
            out_b[l_idx][pi] = b[a]
            converged[l_idx, pi.numpy()] = (conv_a[a] | reached_a[a]).numpy()

    for _ in range(max_iter):
        if not bool(active.any()):
            break
        # ---- two-loop recursion, per probe --------------------------------------------
        qW, qb = gW.clone(), gb.clone()
        alphas = []
        for sW, sb, yW, yb, rho in reversed(hist):
            a = rho * _pdot(sW, sb, qW, qb)
            ac = a.to(dtype)
            qW.addcmul_(yW, ac[:, :, None, None], value=-1)  # (one pass, no temporary)
            qb -= ac[..., None] * yb
            alphas.append(a)
        gc = gamma.to(dtype)
        qW *= gc[:, :, None, None]
        qb *= gc[..., None]
        for (sW, sb, yW, yb, rho), a in zip(hist, reversed(alphas)):
            beta = rho * _pdot(yW, yb, qW, qb)
            c = (a - beta).to(dtype)
            qW.addcmul_(sW, c[:, :, None, None])
            qb += c[..., None] * sb
        dW, db = -qW, -qb
        gd = _pdot(gW, gb, dW, db)
        bad_dir = gd >= 0  # not a descent direction: fall back to steepest descent
        if bool(bad_dir.any()):
            m = bad_dir.to(dtype)
            dW = dW * (1 - m)[:, :, None, None] - gW * m[:, :, None, None]
            db = db * (1 - m)[..., None] - gb * m[..., None]
            gd = _pdot(gW, gb, dW, db)
            fresh = fresh | bad_dir
        # first step of a probe without curvature information: ||step|| = 1 at most
        gnorm = _pdot(gW, gb, gW, gb).sqrt()
        t = torch.where(fresh, torch.clamp(1.0 / gnorm.clamp_min(1e-300), max=1.0), 1.0)
        t = torch.where(active, t, torch.zeros_like(t))
        # ---- backtracking Armijo line search (per probe) ---------------------------------
        slack = 10 * eps * f.abs().clamp_min(1.0)  # float32 cannot resolve tinier decreases
        pending = active.clone()
        fn = gWn = gbn = None
        for _ in range(max_ls + 1):
            tc = t.to(dtype)
            Wn = torch.addcmul(W, dW, tc[:, :, None, None])
            bn = b + tc[..., None] * db
            fn, gWn, gbn = _evaluate(Wn, bn, pending, fn, gWn, gbn)
            # Armijo (with float slack), or -- where the loss cannot resolve the decrease --
            # a clear drop of the directional derivative (gradients stay accurate in float32)
            gd_new = _pdot(gWn, gbn, dW, db)
            ok = (fn <= f + 1e-4 * t * gd + slack) | (
                (fn <= f + 100 * slack) & (gd_new.abs() <= 0.9 * gd.abs())
            )
            pending = pending & ~ok
            if not bool(pending.any()):
                break
            # quadratic interpolation of the step, safeguarded to [0.1 t, 0.5 t]
            denom = 2 * (fn - f - t * gd)
            t_q = torch.where(denom > 0, -gd * t * t / denom.clamp_min(1e-300), 0.5 * t)
            t_new = torch.minimum(torch.maximum(t_q, 0.1 * t), 0.5 * t)
            t = torch.where(pending, t_new, t)
        else:
            # line search failed for these probes: accept no step; they stop (as scipy does)
            t = torch.where(pending, torch.zeros_like(t), t)
            tc = t.to(dtype)
            Wn = torch.addcmul(W, dW, tc[:, :, None, None])
            bn = b + tc[..., None] * db
            fn, gWn, gbn = _evaluate(Wn, bn, pending, fn, gWn, gbn)
            active = active & ~pending
        # ---- curvature pair -------------------------------------------------------------
        tc = t.to(dtype)
        sW, sb = tc[:, :, None, None] * dW, tc[..., None] * db
        yW, yb = gWn - gW, gbn - gb
        sy = _pdot(sW, sb, yW, yb)
        yy = _pdot(yW, yb, yW, yb)
        valid = active & (sy > eps * yy) & (yy > 0)
        rho = torch.where(valid, 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy))
        gamma = torch.where(valid, sy / yy.clamp_min(1e-300), gamma)
        fresh = fresh & ~valid
        hist.append([sW, sb, yW, yb, rho])
        if len(hist) > history:
            hist.pop(0)
        f_old = f
        W, b, f, gW, gb = Wn, bn, fn, gWn, gbn
        ai = active.numpy()
        n_iter[np.ix_(li.numpy(), pi.numpy())] += ai
        # ---- convergence ----------------------------------------------------------------
        gm = gmax(gW, gb)
        done_g = gm <= tol
        done_f = (f_old - f).abs() <= 64 * float(np.finfo(np.float64).eps) * (
            torch.maximum(f_old.abs(), f.abs()).clamp_min(1.0)
        )
        # stagnation of the objective counts as converged (scipy's ftol test does the same)
        conv_a = conv_a | (active & (done_g | (done_f & (t > 0))))
        reached_a = reached_a | (active & (gm <= report_tol))
        active = active & ~done_g & ~(done_f & (t > 0))
        # ---- compaction: drop finished layers / C columns --------------------------------
        keep_l = active.any(1)
        keep_p = active.any(0)
        if (not bool(keep_l.all()) or not bool(keep_p.all())) and bool(active.any()):
            flush()
            all_l, all_p = bool(keep_l.all()), bool(keep_p.all())
            kl, kp = keep_l.nonzero().squeeze(1), keep_p.nonzero().squeeze(1)

            def take(x, pdim, kl=kl, kp=kp, all_l=all_l, all_p=all_p):
                x = x if all_l else x.index_select(0, kl)
                return x if all_p else x.index_select(pdim, kp)

            li, pi = li[kl], pi[kp]
            if not all_l:  # (never copy the feature tensor when only C columns finish)
                Xa = Xa.index_select(0, kl)
                ra = None if ra is None else ra.index_select(0, kl)
            lama = take(lama, 1)
            sa = None if sa is None else take(sa, 1)
            W, b, gW, gb = take(W, 1), take(b, 1), take(gW, 1), take(gb, 1)
            f, active, conv_a = take(f, 1), take(active, 1), take(conv_a, 1)
            reached_a = take(reached_a, 1)
            gamma, fresh = take(gamma, 1), take(fresh, 1)
            hist = [[take(h_, 1) for h_ in h] for h in hist]
    flush()
    return _SolveOut(out_W, out_b, n_iter, converged)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


@dataclass
class ProbePath:
    """Logistic probes for every (layer, C).

    Attributes:
        Cs: ``[P]`` inverse regularisation strengths (sklearn's C).
        classes: ``[K]`` the class labels (sorted unique training labels).
        coef: per layer, ``[P, K, D_l]`` weights in the *standardised* feature space
            (binary: ``[P, 1, D_l]``, like sklearn's ``coef_``).
        intercept: per layer, ``[P, K]`` (binary ``[P, 1]``).
        means, scales: per layer standardisation statistics (from the training rows).
        n_iter, converged: ``[L, P]`` solver diagnostics.
    """

    Cs: np.ndarray
    classes: np.ndarray
    coef: list[np.ndarray]
    intercept: list[np.ndarray]
    means: list[np.ndarray]
    scales: list[np.ndarray]
    n_iter: np.ndarray
    converged: np.ndarray
    standardized: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.coef)

    def _z(self, layer: int, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return (x - self.means[layer]) / self.scales[layer] if self.standardized else x

    def decision_function(self, X_layers: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per layer ``[P, N, K]`` logits (binary ``[P, N, 1]``)."""
        self._check_layers(X_layers)
        out = []
        for layer, x in enumerate(X_layers):
            z = self._z(layer, x)
            P, K, D = self.coef[layer].shape
            # one BLAS product (np.einsum without optimize loops in C: ~20x slower here)
            logits = (z @ self.coef[layer].reshape(P * K, D).T).reshape(len(z), P, K)
            out.append(logits.transpose(1, 0, 2) + self.intercept[layer][:, None])
        return out

    def predict_proba(self, X_layers: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per layer ``[P, N, K]`` class probabilities (columns ordered as ``classes``)."""
        probs = []
        for z in self.decision_function(X_layers):
            if z.shape[-1] == 1:
                p1 = 1.0 / (1.0 + np.exp(-z[..., 0]))
                probs.append(np.stack([1 - p1, p1], axis=-1))
            else:
                z = z - z.max(-1, keepdims=True)
                e = np.exp(z)
                probs.append(e / e.sum(-1, keepdims=True))
        return probs

    def predict(self, X_layers: Sequence[np.ndarray]) -> np.ndarray:
        """``[L, P, N]`` predicted labels."""
        preds = []
        for z in self.decision_function(X_layers):
            idx = (z[..., 0] > 0).astype(np.int64) if z.shape[-1] == 1 else z.argmax(-1)
            preds.append(self.classes[idx])
        return np.stack(preds)

    def score(self, X_layers: Sequence[np.ndarray], y: np.ndarray) -> np.ndarray:
        """``[L, P]`` accuracy."""
        return (self.predict(X_layers) == np.asarray(y)[None, None]).mean(-1)

    def coef_original(self, layer: int, c_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(coef ``[K, D]``, intercept ``[K]``) in the original (unstandardised) feature space."""
        w = self.coef[layer][c_index]
        b = self.intercept[layer][c_index]
        if not self.standardized:
            return w, b
        w_o = w / self.scales[layer]
        return w_o, b - w_o @ self.means[layer]

    def _check_layers(self, X_layers: Sequence[np.ndarray]) -> None:
        if len(X_layers) != self.n_layers:
            raise ValueError(f"expected {self.n_layers} layers, got {len(X_layers)}")


def _encode_labels(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes, y_idx = np.unique(np.asarray(y), return_inverse=True)
    if len(classes) < 2:
        raise AnalysisError(
            f"a probe needs at least 2 classes in the training data, got {len(classes)} "
            f"({classes.tolist()})"
        )
    return classes, y_idx.astype(np.int64)


def fit_logistic_path(
    X_layers: Sequence[np.ndarray | tuple[np.ndarray, ...]],
    y: np.ndarray,
    Cs: Sequence[float] | float = DEFAULT_CS,
    *,
    standardize: bool = True,
    dtype: str = "float32",
    max_iter: int = 1000,
    tol: float = 1e-4,
    history: int = 10,
    layer_Cs: np.ndarray | None = None,
    init: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    precondition: bool | str = "auto",
) -> ProbePath:
    """Fit a multinomial L2 logistic probe for every layer and every C, all at once.

    Args:
        X_layers: one ``[N, D_l]`` array per layer (same N rows, widths may differ), or per
            layer a tuple of row blocks standing for their concatenation (e.g. ``(train, val)``
            for a refit; saves a copy of every layer).
        y: ``[N]`` labels (any integer/str values; >= 2 classes).
        Cs: inverse regularisation strengths (sklearn's C), shared by all layers.
        standardize: z-score each layer with these rows' statistics (recommended).
        dtype: ``"float32"`` (fast) or ``"float64"`` (to match sklearn to ~1e-6).
        max_iter, tol: L-BFGS limits; ``tol`` bounds ``max |grad|`` of the mean-loss objective,
            as sklearn's ``tol`` does for ``solver="lbfgs"``.
        history: L-BFGS memory.
        layer_Cs: optional ``[L, P]`` per-layer C values (overrides ``Cs``; used for the refit
            at each layer's selected C).
        init: optional warm start, per layer ``(coef [P, Kf, D], intercept [P, Kf])`` in the
            ORIGINAL feature space (e.g. from :meth:`ProbePath.coef_original`); the optimum
            does not depend on it, only the number of iterations.
        precondition: solve in each layer's principal-axes basis with a diagonal
            preconditioner (:func:`_preconditioner`; same optimum, far fewer iterations on
            correlated features; used when ``min(N, D) <= MAX_PRECONDITION_RANK``).
            ``"auto"`` (default) does so only for wide layers (``N < D``): there the data are
            (nearly) separable, plain L-BFGS crawls on the weakly regularised probes and
            often stops at ``max_iter``, and the solve also shrinks to the N-dimensional row
            space. Such row-space solves run in float64 to ``tol * ROW_SPACE_TOL_FACTOR``, i.e.
            to the optimum (a probe still counts as converged once it meets ``tol``).
            With ``N >= D`` plain L-BFGS converges; it then takes the same path as
            sklearn's lbfgs, so where the gradient tolerance leaves weakly regularised probes
            short of their optimum they stop where sklearn's do. A preconditioned solve stops
            them elsewhere, neither at sklearn's point nor at the optimum, which can change the
            C picked on validation (``bench/RESULTS.md``: 3 of 13 layers on the benchmark).
            ``True`` / ``False``: always / never (``True`` on an ``N >= D`` layer keeps the
            caller's ``tol`` and ``dtype``: about 1.5x faster there, with that caveat).

    Returns:
        A :class:`ProbePath`.
    """
    torch = _torch()
    tdtype = {"float32": torch.float32, "float64": torch.float64}[str(dtype)]
    # each layer as a tuple of row blocks (one block unless the caller passed a tuple)
    X_layers = [tuple(np.asarray(b) for b in x) if isinstance(x, tuple) else (np.asarray(x),)
                for x in X_layers]
    if not X_layers:
        raise ValueError("no layers given")
    n = len(y)
    for i, blocks in enumerate(X_layers):
        shapes = [b.shape for b in blocks]
        if (any(len(s) != 2 or s[1] != shapes[0][1] for s in shapes)
                or sum(s[0] for s in shapes) != n):
            got = shapes[0] if len(shapes) == 1 else shapes
            raise ValueError(f"layer {i}: expected [{n}, D] features, got {got}")
        if not all(np.all(np.isfinite(b)) for b in blocks):
            raise AnalysisError(f"layer {i}: features contain NaN or Inf")
    classes, y_idx = _encode_labels(y)
    K = len(classes)
    binary = K == 2
    n_free = 1 if binary else K
    if layer_Cs is None:
        Cs_arr = np.atleast_1d(np.asarray(Cs, dtype=np.float64))
        grid = np.broadcast_to(Cs_arr, (len(X_layers), len(Cs_arr))).copy()
    else:
        grid = np.asarray(layer_Cs, dtype=np.float64)
        Cs_arr = grid[0] if np.all(grid == grid[0]) else np.full(grid.shape[1], np.nan)
    if np.any(grid <= 0):
        raise ValueError("C must be > 0")
    L, P = grid.shape

    means, scales = [], []
    for blocks in X_layers:
        if standardize:
            m, s = fit_standardizer(blocks)
        else:
            m, s = np.zeros(blocks[0].shape[1]), np.ones(blocks[0].shape[1])
        means.append(m)
        scales.append(s)

    coef: list[np.ndarray] = [np.zeros(0)] * L
    intercept: list[np.ndarray] = [np.zeros(0)] * L
    n_iter = np.zeros((L, P), dtype=np.int64)
    conv = np.zeros((L, P), dtype=bool)
    y_t = torch.as_tensor(y_idx)
    # Softmax tails and converged probes' tiny L-BFGS vectors produce subnormal floats, which
    # make x86 CPUs ~10x slower; flush them to zero during the solve (restored afterwards).
    flushed = torch.set_flush_denormal(True)
    try:
        res_by_width = _solve_groups(X_layers, means, scales, grid, y_t, n_free, binary, tdtype,
                                     init=init, max_iter=max_iter, tol=tol, history=history,
                                     precondition=precondition)
    finally:
        if flushed:
            torch.set_flush_denormal(False)
    for idx, res in res_by_width:
        for a, i in enumerate(idx):
            coef[i] = res.W[a].numpy().astype(np.float64)  # [P, Kf, D]
            intercept[i] = res.b[a].numpy().astype(np.float64)
            n_iter[i] = res.n_iter[a]
            conv[i] = res.converged[a]
    return ProbePath(
        Cs=Cs_arr,
        classes=classes,
        coef=coef,
        intercept=intercept,
        means=means,
        scales=scales,
        n_iter=n_iter,
        converged=conv,
        standardized=standardize,
        extra={"layer_Cs": grid},
    )


def _solve_groups(X_layers, means, scales, grid, y_t, n_free, binary, tdtype, init=None,
                  precondition="auto", **kw):
    """One batched solve per distinct layer width -> [(layer indices, _SolveOut)]."""
    torch = _torch()
    if precondition not in (True, False, "auto"):
        raise ValueError(f"precondition must be True, False or 'auto', got {precondition!r}")
    n = len(y_t)
    out = []
    by_width: dict[int, list[int]] = {}
    for i, blocks in enumerate(X_layers):
        by_width.setdefault(blocks[0].shape[1], []).append(i)
    for width, idx in by_width.items():
        # standardise straight into the batch tensor (no float64 copy of every layer)
        Xg = torch.empty(len(idx), n, width, dtype=tdtype)
        for a, i in enumerate(idx):  # in place: no temporary copies of the layer
            row = 0
            for block in X_layers[i]:
                with warnings.catch_warnings():  # read-only (memory-mapped) arrays: only read
                    warnings.simplefilter("ignore", UserWarning)
                    Xg[a, row:row + len(block)].copy_(torch.as_tensor(block))
                row += len(block)
            Xg[a].sub_(torch.as_tensor(means[i], dtype=tdtype))
            Xg[a].div_(torch.as_tensor(scales[i], dtype=tdtype))
        lam = torch.as_tensor(1.0 / (grid[idx] * n), dtype=torch.float64)
        W0 = b0 = None
        if init is not None:  # original space -> this fit's standardised space
            W0 = torch.stack([torch.as_tensor(np.asarray(init[i][0]) * scales[i], dtype=tdtype)
                              for i in idx])
            b0 = torch.stack([torch.as_tensor(np.asarray(init[i][1])
                                              + np.asarray(init[i][0]) @ means[i], dtype=tdtype)
                              for i in idx])
        wanted = n < width if precondition == "auto" else bool(precondition)
        if not wanted or min(n, width) > MAX_PRECONDITION_RANK:
            out.append((idx, _batched_lbfgs(Xg, y_t, lam, n_free, binary, W0=W0, b0=b0, **kw)))
            continue
        solve_kw = kw
        if n < width:  # row-space solve: to the optimum, in float64 (ROW_SPACE_TOL_FACTOR)
            Xg = Xg.double()
            W0, b0 = (None, None) if W0 is None else (W0.double(), b0.double())
            solve_kw = {**kw, "tol": kw["tol"] * ROW_SPACE_TOL_FACTOR, "report_tol": kw["tol"]}
        Xr, rot, scale = _preconditioner(Xg, lam, n_free)
        del Xg
        sdtype = Xr.dtype
        if W0 is not None:  # standardised -> rotated -> preconditioned variables
            L_, P_, K_, _ = W0.shape
            W0 = torch.bmm(W0.reshape(L_, P_ * K_, width), rot).reshape(L_, P_, K_, -1)
            W0 = W0 / scale.to(sdtype).unsqueeze(2)
        res = _batched_lbfgs(Xr, y_t, lam, n_free, binary, W0=W0, b0=b0, scale=scale, rot=rot,
                             **solve_kw)
        L_, P_, K_, r = res.W.shape
        W_rot = (res.W * scale.to(sdtype).unsqueeze(2)).reshape(L_, P_ * K_, r)
        res.W = torch.bmm(W_rot, rot.transpose(1, 2)).reshape(L_, P_, K_, width)
        out.append((idx, res))
    return out


# Wide layers (N < D) are solved in their N-dimensional row space to ``tol *
# ROW_SPACE_TOL_FACTOR``, in float64: there the data are (nearly) separable, and at sklearn's
# tol the weakly regularised probes stop far from their optimum, at points that depend on the
# optimiser; the preconditioned solve stopped at points that scored up to 9 test-accuracy
# points away from both sklearn's answer and the optimum (bench_probe_solver.py --wide). Run
# to the optimum, the selections agree with sklearn's lbfgs run to convergence. The row-space
# problem is small (N <= MAX_PRECONDITION_RANK columns), so this costs about the same time.
ROW_SPACE_TOL_FACTOR = 1e-4
# Preconditioning pays off when the rotation is cheap: at most this many components.
MAX_PRECONDITION_RANK = 2048
# Exponent of the diagonal preconditioner (see _preconditioner): 0.5 would whiten.
PRECONDITION_POWER = 0.25


def _preconditioner(Xg, lam, n_free: int):
    """Rotate each layer to its principal axes and scale every probe's coordinates.

    The objective is invariant under an orthogonal change of feature basis (the logits
    ``x W^T`` and ``||W||^2`` are both unchanged with ``x -> x Q``, ``W -> W Q``), so the
    probes are solved exactly in the principal-axes basis ``Z Q`` of the standardised train
    features. There the Hessian of probe (C, layer) is close to diagonal, roughly
    ``c * e_j + lam`` (``e_j``: variance of component j, ``c``: curvature of the loss at the
    start, 1/K for softmax, 1/4 for the logistic loss), so L-BFGS runs on ``V = W_rot / s``
    with ``s_j = (c e_j + lam) ** -PRECONDITION_POWER``. The full inverse square root
    (power 1/2, whitening) over-corrects once predictions become confident (the loss then
    curves far less along the well-fitted, high-variance directions); power 1/4 halves the
    log-spread of the curvature and was best on the three problems measured (planted
    correlated features 13 x 2000 x 256: 2.4x fewer iterations; sklearn digits and small
    well-conditioned data: about the same as without). Same optimum either way.
    When N < D the basis is the row space of Z (N components; the optimum has no weight
    outside it, the representer theorem), which also shrinks wide layers to N columns.

    Xg: ``[L, N, D]`` standardised features. lam: ``[L, P]`` float64.
    Returns ``Xr [L, N, r]`` (= Z Q), ``rot [L, D, r]`` (= Q, orthonormal columns) and
    ``scale [L, P, r]`` (float64), ``r = min(N, D)``.
    """
    torch = _torch()
    L, n, D = Xg.shape
    r = min(n, D)
    Xr = torch.empty(L, n, r, dtype=Xg.dtype)
    rot = torch.empty(L, D, r, dtype=Xg.dtype)
    var = torch.empty(L, r, dtype=torch.float64)
    for a in range(L):
        if n >= D:  # eigenvectors of the D x D covariance
            # in the solve's dtype: Q only has to be orthonormal (the objective is invariant
            # under any rotation); the eigenvalues only shape the preconditioner. float32
            # eigh is ~1.7x faster than float64 at D = 768.
            gram = torch.mm(Xg[a].T, Xg[a]).div_(n)
            e, Q = torch.linalg.eigh(gram)
            rot[a] = Q
            torch.mm(Xg[a], rot[a], out=Xr[a])
            var[a] = e.double().clamp_min(0.0)
        else:  # thin SVD: Z = U S V^T, Q = V, Z Q = U S
            U, S, Vh = torch.linalg.svd(Xg[a].double(), full_matrices=False)
            rot[a] = Vh.T.to(Xg.dtype)
            Xr[a] = (U * S).to(Xg.dtype)
            var[a] = S**2 / n
    curvature = 0.25 if n_free == 1 else 1.0 / n_free
    scale = (curvature * var[:, None, :] + lam[:, :, None]).pow(-PRECONDITION_POWER)
    return Xr, rot, scale


@dataclass
class ProbeSelection:
    """Outcome of :func:`select_and_evaluate` (one entry per layer).

    Attributes:
        Cs: the sweep.
        val_accuracy: ``[L, P]`` validation accuracy of the probes fitted on train.
        best_C: ``[L]`` selected C (highest val accuracy; ties -> the smallest C).
        test_accuracy: ``[L]`` test accuracy of the probe refitted on train + val at best_C.
        path: the train-only path; refit: the train+val probes.
    """

    Cs: np.ndarray
    val_accuracy: np.ndarray
    best_C: np.ndarray
    test_accuracy: np.ndarray
    path: ProbePath
    refit: ProbePath

    @property
    def converged(self) -> bool:
        """Whether every probe (train-only path and refit) met the gradient tolerance."""
        return bool(self.path.converged.all() and self.refit.converged.all())

    def layer_summary(self, layer: int) -> dict[str, float]:
        """``value`` (test accuracy), selected ``C`` and its ``val_accuracy`` for one layer."""
        best = int(np.flatnonzero(np.asarray(self.Cs) == self.best_C[layer])[0])
        return {
            "value": float(self.test_accuracy[layer]),
            "C": float(self.best_C[layer]),
            "val_accuracy": float(self.val_accuracy[layer, best]),
        }


def select_and_evaluate(
    train: tuple[Sequence[np.ndarray], np.ndarray],
    val: tuple[Sequence[np.ndarray], np.ndarray],
    test: tuple[Sequence[np.ndarray], np.ndarray],
    Cs: Sequence[float] = DEFAULT_CS,
    *,
    refit: bool = True,
    **fit_kwargs: Any,
) -> ProbeSelection:
    """CLIP protocol: fit the C path on train, pick C per layer on val, refit on train + val.

    Each argument is ``(X_layers, y)``. With ``refit=False`` the train-only probe at the
    selected C is evaluated instead.
    """
    Xtr, ytr = train
    Xva, yva = val
    Xte, yte = test
    Cs_arr = np.asarray(Cs, dtype=np.float64)
    path = fit_logistic_path(Xtr, ytr, Cs_arr, **fit_kwargs)
    val_acc = path.score(Xva, yva)  # [L, P]
    # ties -> first index of the sorted sweep = the smallest C (strongest regularisation)
    order = np.argsort(Cs_arr)
    best = np.array(
        [order[np.flatnonzero(row[order] >= row.max() - 1e-12)[0]] for row in val_acc]
    )
    best_C = Cs_arr[best]
    if refit:
        X_all = [(a, b) for a, b in zip(Xtr, Xva)]  # row blocks: no concatenated copy
        y_all = np.concatenate([np.asarray(ytr), np.asarray(yva)])
        # warm start from the train-only probe at the selected C (fewer iterations)
        init = []
        for layer, p_idx in enumerate(best):
            w, b0 = path.coef_original(layer, int(p_idx))
            init.append((w[None], b0[None]))
        same_classes = np.array_equal(np.unique(y_all), path.classes)
        final = fit_logistic_path(X_all, y_all, layer_Cs=best_C[:, None],
                                  init=init if same_classes else None, **fit_kwargs)
        test_acc = final.score(Xte, yte)[:, 0]
    else:
        final = path
        test_acc = path.score(Xte, yte)[np.arange(len(best)), best]
    return ProbeSelection(Cs_arr, val_acc, best_C, test_acc, path, final)


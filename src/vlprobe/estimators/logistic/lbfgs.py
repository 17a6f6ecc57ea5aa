"""Batched L-BFGS: every probe (layer l, C_p) with its own history, step and stopping test.

All probes advance together, so each iteration is two batched matrix products
``[L, N, D] x [L, D, P*K]`` (:mod:`.objective`). Hand-written because no library minimises
thousands of independent small problems as one batch (``torch.optim.LBFGS`` optimises one
objective; scipy one problem per call).

A probe stops for one of :data:`STOP_REASONS`:

- ``"gradient_tol"``: ``max |grad J| <= tol`` (scipy's ``gtol``, what sklearn passes as ``tol``);
- ``"stagnation"``: the objective changed by <= 64 eps (float64) relative in a step: it cannot
  decrease further at working precision (scipy's ``ftol`` test, which sklearn counts as
  converged; here it is *not* reported converged unless the gradient test holds too);
- ``"line_search"``: the backtracking line search found no acceptable step (scipy's
  ``ABNORMAL_TERMINATION_IN_LNSRCH``);
- ``"max_iter"``: the iteration limit.

Finished layers / C columns are dropped from the batch (compaction), and once some probes of
a layer have finished, that layer's products run over its unfinished C columns only
(:func:`~.objective._loss_grad_masked`), so slow probes do not make finished ones cost anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vlprobe.estimators.logistic.objective import (
    _gmax,
    _loss_grad,
    _loss_grad_masked,
    _pdot,
    _torch,
)

STOP_REASONS = ("gradient_tol", "max_iter", "stagnation", "line_search")
# internal codes of the stop reasons (0: still running)
_GRAD, _MAXIT, _STAG, _LS = 1, 2, 3, 4


@dataclass
class _SolveOut:
    """Result of :func:`_batched_lbfgs`: W ``[L, P, Kf, D]``, b ``[L, P, Kf]`` (tensors);
    n_iter, converged (caller's gradient tolerance met), stop_reason (str): ``[L, P]`` numpy."""

    W: Any
    b: Any
    n_iter: Any
    converged: Any
    stop_reason: Any


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
    """Minimise every probe's objective with its own L-BFGS state (see the module docstring).

    X: ``[L, N, D]``; y: ``[N]`` int64; lam: ``[L, P]`` float64 (``1 / (C n)``).
    ``scale`` ([L, P, D]) and ``rot`` ([L, D_orig, D]) come from
    :func:`~.precondition._preconditioner`: the solve runs in the preconditioned variables V
    (W_rot = V * scale, W_std = W_rot rot^T), ``W0`` is given and the result returned in V;
    the stopping test uses the gradient in the standardised coordinates,
    ``max |(gV / scale) rot^T| <= tol``, as without it.
    With ``report_tol`` (> tol) a probe iterates to ``tol`` but is reported converged once it
    has met ``max |grad| <= report_tol`` (the caller's tolerance), e.g. if max_iter stops it
    on the way to the tighter one. ``converged`` is only ever set by a gradient test.
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
    reason = np.zeros((L_all, P_all), dtype=np.int64)

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
    why = torch.where(active, 0, _GRAD)  # [L, P] stop reason code, 0 while running
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
            converged[l_idx, pi.numpy()] = reached_a[a].numpy()
            reason[l_idx, pi.numpy()] = why[a].numpy()

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
        dW, db = qW.neg_(), qb.neg_()  # (in place: qW is not used again)
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
            why = torch.where(pending, _LS, why)
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
        # ---- stopping tests -------------------------------------------------------------
        gm = gmax(gW, gb)
        done_g = gm <= tol
        done_f = ((f_old - f).abs() <= 64 * float(np.finfo(np.float64).eps) * (
            torch.maximum(f_old.abs(), f.abs()).clamp_min(1.0))) & (t > 0)
        reached_a = reached_a | (active & (gm <= report_tol))
        why = torch.where(active & done_g, _GRAD, torch.where(active & done_f, _STAG, why))
        active = active & ~done_g & ~done_f
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
            f, active, why = take(f, 1), take(active, 1), take(why, 1)
            reached_a = take(reached_a, 1)
            gamma, fresh = take(gamma, 1), take(fresh, 1)
            hist = [[take(h_, 1) for h_ in h] for h in hist]
    why = torch.where(active, _MAXIT, why)  # still running: the iteration limit stopped it
    flush()
    names = np.array(("", *STOP_REASONS), dtype=object)
    return _SolveOut(out_W, out_b, n_iter, converged, names[reason])

"""The probes' objective and gradient, batched over layers and C values.

Objective of probe (layer l, C_p), identical to scikit-learn's ``LogisticRegression(C=C_p)``
(``lbfgs``) divided by n (see :mod:`vlprobe.estimators.logistic`)::

    J(W, b) = (1/n) sum_i CE(y_i, x_i W^T + b) + lam/2 ||W||_F^2,   lam = 1 / (C n)

Multiclass (K >= 3) uses K weight vectors and the softmax; binary (K = 2) ONE weight vector
and the logistic loss, as sklearn does.
"""

from __future__ import annotations

# The logits product X W^T runs up to 1.7x faster on CPU (MKL) when W's row count is a
# multiple of 16 (10 classes x 1 probe: 2.9 ms at 10 rows vs 1.9 ms at 16, N=5000, D=768), so
# it is zero-padded to one; the gradient product shows no such effect and is left alone.
GEMM_ALIGN = 16


def _torch():
    import torch

    return torch


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
    """Per-probe ``max |grad|`` -> [L, P] (float64)."""
    return _torch().maximum(gW.abs().amax((2, 3)), gb.abs().amax(-1)).double()

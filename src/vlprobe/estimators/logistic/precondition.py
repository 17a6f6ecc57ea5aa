"""Feature batches for the solver: per-layer standardisation and the principal-axes
preconditioner.

- :func:`standardised_batch`: layers of one width -> one ``[L, N, D]`` tensor, centred and
  scaled with the fitting rows' statistics (or raw: mean 0, scale 1), built in place.
- :func:`solve_mode`: how a layer of a given width is solved (``"plain"``, ``"eigen"`` or
  ``"row_space"``).
- :func:`_preconditioner`: rotation to principal axes + diagonal scaling (same optimum, far
  fewer L-BFGS iterations on correlated or wide features).
"""

from __future__ import annotations

import warnings

import numpy as np

from vlprobe.estimators.logistic.objective import _torch

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


def solve_mode(n: int, width: int, precondition: bool | str) -> str:
    """``"row_space"`` (N < D, preconditioned, float64), ``"eigen"`` (N >= D, preconditioned)
    or ``"plain"`` (sklearn's L-BFGS path) for a layer of ``width`` features and ``n`` rows."""
    if precondition not in (True, False, "auto"):
        raise ValueError(f"precondition must be True, False or 'auto', got {precondition!r}")
    wanted = n < width if precondition == "auto" else bool(precondition)
    if not wanted or min(n, width) > MAX_PRECONDITION_RANK:
        return "plain"
    return "row_space" if n < width else "eigen"


def standardised_batch(blocks_per_layer, means, scales, n: int, tdtype):
    """``[L, n, D]`` tensor of the layers (each a tuple of row blocks standing for their
    concatenation), minus ``means[l]``, divided by ``scales[l]`` (``[D]`` arrays), in
    ``tdtype``. Built in place: no float64 or concatenated copy of a layer."""
    torch = _torch()
    width = blocks_per_layer[0][0].shape[1]
    Xg = torch.empty(len(blocks_per_layer), n, width, dtype=tdtype)
    for a, blocks in enumerate(blocks_per_layer):
        row = 0
        for block in blocks:
            with warnings.catch_warnings():  # read-only (memory-mapped) arrays: only read
                warnings.simplefilter("ignore", UserWarning)
                Xg[a, row:row + len(block)].copy_(torch.as_tensor(block))
            row += len(block)
        Xg[a].sub_(torch.as_tensor(means[a], dtype=tdtype))
        Xg[a].div_(torch.as_tensor(scales[a], dtype=tdtype))
    return Xg


def init_batch(init, means, scales, tdtype):
    """Warm starts given in the ORIGINAL feature space (per layer ``(coef [P, Kf, D],
    intercept [P, Kf])``) -> ``(W0 [L, P, Kf, D], b0 [L, P, Kf])`` in the standardised space."""
    torch = _torch()
    W0 = torch.stack([torch.as_tensor(np.asarray(w) * s, dtype=tdtype)
                      for (w, _), s in zip(init, scales)])
    b0 = torch.stack([torch.as_tensor(np.asarray(b) + np.asarray(w) @ m, dtype=tdtype)
                      for (w, b), m in zip(init, means)])
    return W0, b0


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

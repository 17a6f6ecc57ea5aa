"""The probe path: every layer x every C fitted at once (:func:`fit_logistic_path`), and the
fitted probes (:class:`ProbePath`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlprobe.analyses._common import fit_standardizer
from vlprobe.errors import AnalysisError
from vlprobe.estimators.logistic.lbfgs import _batched_lbfgs
from vlprobe.estimators.logistic.memory import DEFAULT_MEMORY_BUDGET, SolvePlan, plan_solves
from vlprobe.estimators.logistic.objective import _torch
from vlprobe.estimators.logistic.precondition import (
    ROW_SPACE_TOL_FACTOR,
    _preconditioner,
    init_batch,
    solve_mode,
    standardised_batch,
)

DEFAULT_CS = tuple(float(c) for c in np.logspace(-3, 4, 8))
# logits computed at once when scoring: at most this many float64 values (256 MB)
_SCORE_BLOCK = 2**25


@dataclass
class ProbePath:
    """Logistic probes for every (layer, C).

    Attributes:
        Cs: ``[P]`` inverse regularisation strengths (sklearn's C).
        classes: ``[K]`` the class labels (sorted unique training labels).
        coef: per layer, ``[P, K, D_l]`` weights in the *standardised* feature space
            (binary: ``[P, 1, D_l]``, like sklearn's ``coef_``).
        intercept: per layer, ``[P, K]`` (binary ``[P, 1]``).
        means, scales: per layer standardisation statistics (from the training rows; 0 / 1
            when ``standardized`` is False).
        n_iter: ``[L, P]`` L-BFGS iterations.
        converged: ``[L, P]``: ``max |grad| <= tol`` was met (and nothing else counts).
        stop_reason: ``[L, P]`` why each probe stopped, one of
            :data:`~vlprobe.estimators.logistic.lbfgs.STOP_REASONS`.
        extra: ``layer_Cs`` (``[L, P]`` grid) and ``memory`` (:meth:`SolvePlan.as_dict`).
    """

    Cs: np.ndarray
    classes: np.ndarray
    coef: list[np.ndarray]
    intercept: list[np.ndarray]
    means: list[np.ndarray]
    scales: list[np.ndarray]
    n_iter: np.ndarray
    converged: np.ndarray
    stop_reason: np.ndarray
    standardized: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    plan: SolvePlan | None = None

    @property
    def n_layers(self) -> int:
        return len(self.coef)

    def _z(self, layer: int, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return (x - self.means[layer]) / self.scales[layer] if self.standardized else x

    def layer_logits(self, layer: int, x: np.ndarray) -> np.ndarray:
        """``[P, N, K]`` logits of one layer's probes (binary ``[P, N, 1]``)."""
        z = self._z(layer, x)
        P, K, D = self.coef[layer].shape
        # one BLAS product (np.einsum without optimize loops in C: ~20x slower here)
        logits = (z @ self.coef[layer].reshape(P * K, D).T).reshape(len(z), P, K)
        return logits.transpose(1, 0, 2) + self.intercept[layer][:, None]

    def decision_function(self, X_layers: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per layer ``[P, N, K]`` logits (binary ``[P, N, 1]``). All layers are held at
        once: for many classes prefer :meth:`predict` / :meth:`score` (row blocks)."""
        self._check_layers(X_layers)
        return [self.layer_logits(layer, x) for layer, x in enumerate(X_layers)]

    def layer_proba(self, layer: int, x: np.ndarray) -> np.ndarray:
        """``[P, N, K]`` class probabilities of one layer (columns ordered as ``classes``)."""
        z = self.layer_logits(layer, x)
        if z.shape[-1] == 1:
            p1 = 1.0 / (1.0 + np.exp(-z[..., 0]))
            return np.stack([1 - p1, p1], axis=-1)
        z = z - z.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)

    def predict_proba(self, X_layers: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per layer ``[P, N, K]`` class probabilities (columns ordered as ``classes``)."""
        self._check_layers(X_layers)
        return [self.layer_proba(layer, x) for layer, x in enumerate(X_layers)]

    def predict(self, X_layers: Sequence[np.ndarray]) -> np.ndarray:
        """``[L, P, N]`` predicted labels (logits computed layer by layer, in row blocks)."""
        self._check_layers(X_layers)
        preds = []
        for layer, x in enumerate(X_layers):
            P, K, _ = self.coef[layer].shape
            step = max(1, _SCORE_BLOCK // (P * K))
            idx = []
            for start in range(0, len(x), step):
                z = self.layer_logits(layer, x[start:start + step])
                idx.append((z[..., 0] > 0).astype(np.int64) if K == 1 else z.argmax(-1))
            preds.append(self.classes[np.concatenate(idx, axis=1)] if idx
                         else np.empty((P, 0), dtype=self.classes.dtype))
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
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> ProbePath:
    """Fit a multinomial L2 logistic probe for every layer and every C, all at once.

    Args:
        X_layers: one ``[N, D_l]`` array per layer (same N rows, widths may differ), or per
            layer a tuple of row blocks standing for their concatenation (e.g. ``(train, val)``
            for a refit; saves a copy of every layer).
        y: ``[N]`` labels (any integer/str values; >= 2 classes).
        Cs: inverse regularisation strengths (sklearn's C), shared by all layers.
        standardize: z-score each layer with these rows' statistics (False: raw features,
            as sklearn's ``LogisticRegression`` sees them).
        dtype: ``"float32"`` (fast) or ``"float64"`` (to match sklearn to ~1e-6).
        max_iter, tol: L-BFGS limits; ``tol`` bounds ``max |grad|`` of the mean-loss objective,
            as sklearn's ``tol`` does for ``solver="lbfgs"``. Only that test sets
            ``converged``; ``stop_reason`` says why each probe stopped.
        history: L-BFGS memory.
        layer_Cs: optional ``[L, P]`` per-layer C values (overrides ``Cs``; used for the refit
            at each layer's selected C).
        init: optional warm start, per layer ``(coef [P, Kf, D], intercept [P, Kf])`` in the
            ORIGINAL feature space (e.g. from :meth:`ProbePath.coef_original`); the optimum
            does not depend on it, only the number of iterations.
        precondition: solve in each layer's principal-axes basis with a diagonal
            preconditioner (:func:`~.precondition._preconditioner`; same optimum, far fewer
            iterations on correlated features; used when ``min(N, D) <=
            MAX_PRECONDITION_RANK``). ``"auto"`` (default) does so only for wide layers
            (``N < D``): there the data are (nearly) separable, plain L-BFGS crawls on the
            weakly regularised probes and often stops at ``max_iter``, and the solve also
            shrinks to the N-dimensional row space. Such row-space solves run in float64 to
            ``tol * ROW_SPACE_TOL_FACTOR``, i.e. to the optimum (a probe still counts as
            converged once it meets ``tol``). With ``N >= D`` plain L-BFGS converges; it then
            takes the same path as sklearn's lbfgs, so where the gradient tolerance leaves
            weakly regularised probes short of their optimum they stop where sklearn's do. A
            preconditioned solve stops them elsewhere, neither at sklearn's point nor at the
            optimum, which can change the C picked on validation (``bench/RESULTS.md``: 3 of
            13 layers on the benchmark). ``True`` / ``False``: always / never (``True`` on an
            ``N >= D`` layer keeps the caller's ``tol`` and ``dtype``: about 1.5x faster there,
            with that caveat).
        memory_budget: bytes the solver may use (beyond the caller's arrays); the probes are
            split into several batched solves where one would need more
            (:func:`~.memory.plan_solves`; same answer). The plan and its estimate are in
            ``ProbePath.plan`` / ``extra["memory"]``.

    Returns:
        A :class:`ProbePath`.
    """
    torch = _torch()
    if str(dtype) not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
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

    widths = [blocks[0].shape[1] for blocks in X_layers]
    plan = plan_solves(n, widths, P, K, modes=[solve_mode(n, d, precondition) for d in widths],
                       dtype_bytes=tdtype.itemsize, history=history, budget=int(memory_budget))
    coef = [np.zeros((P, n_free, d)) for d in widths]
    intercept = [np.zeros((P, n_free)) for _ in widths]
    n_iter = np.zeros((L, P), dtype=np.int64)
    conv = np.zeros((L, P), dtype=bool)
    stop = np.full((L, P), "", dtype=object)
    y_t = torch.as_tensor(y_idx)
    kw = {"max_iter": max_iter, "tol": tol, "history": history}
    # Softmax tails and converged probes' tiny L-BFGS vectors produce subnormal floats, which
    # make x86 CPUs ~10x slower; flush them to zero during the solve (restored afterwards).
    flushed = torch.set_flush_denormal(True)
    try:
        for group in plan.groups:
            for idx in group.layer_chunks():
                for cols, res in _solve_chunk([X_layers[i] for i in idx], [means[i] for i in idx],
                                              [scales[i] for i in idx], grid[idx], y_t, n_free,
                                              binary, tdtype, group.mode, group.c_chunks(P),
                                              None if init is None else [init[i] for i in idx],
                                              **kw):
                    for a, i in enumerate(idx):
                        coef[i][cols] = res.W[a].numpy()
                        intercept[i][cols] = res.b[a].numpy()
                        n_iter[i, cols] = res.n_iter[a]
                        conv[i, cols] = res.converged[a]
                        stop[i, cols] = res.stop_reason[a]
    finally:
        if flushed:
            torch.set_flush_denormal(False)
    return ProbePath(
        Cs=Cs_arr, classes=classes, coef=coef, intercept=intercept, means=means, scales=scales,
        n_iter=n_iter, converged=conv, stop_reason=stop, standardized=standardize,
        extra={"layer_Cs": grid, "memory": plan.as_dict()}, plan=plan,
    )


def _solve_chunk(blocks, means, scales, grid, y_t, n_free, binary, tdtype, mode, c_chunks,
                 init, **kw):
    """Solve layers of one width (``grid``: their ``[L, P]`` C values), C chunk by C chunk.

    Yields ``(column slice, _SolveOut)`` with W ``[L, P_chunk, Kf, D]`` in the standardised
    space. The feature batch (and its preconditioner) is built once for all C chunks.
    """
    torch = _torch()
    n = len(y_t)
    width = blocks[0][0].shape[1]
    Xg = standardised_batch(blocks, means, scales, n, tdtype)  # [L, N, D]
    lam = torch.as_tensor(1.0 / (grid * n), dtype=torch.float64)
    W0 = b0 = None
    if init is not None:  # original space -> this fit's standardised space
        W0, b0 = init_batch(init, means, scales, tdtype)
    if mode == "plain":
        for cols in c_chunks:
            yield cols, _batched_lbfgs(Xg, y_t, lam[:, cols], n_free, binary,
                                       W0=None if W0 is None else W0[:, cols],
                                       b0=None if b0 is None else b0[:, cols], **kw)
        return
    if mode == "row_space":  # to the optimum, in float64 (ROW_SPACE_TOL_FACTOR)
        Xg = Xg.double()
        W0, b0 = (None, None) if W0 is None else (W0.double(), b0.double())
        kw = {**kw, "tol": kw["tol"] * ROW_SPACE_TOL_FACTOR, "report_tol": kw["tol"]}
    Xr, rot, scale = _preconditioner(Xg, lam, n_free)
    del Xg
    sdtype = Xr.dtype
    if W0 is not None:  # standardised -> rotated -> preconditioned variables
        L_, P_, K_, _ = W0.shape
        W0 = torch.bmm(W0.reshape(L_, P_ * K_, width), rot).reshape(L_, P_, K_, -1)
        W0 = W0 / scale.to(sdtype).unsqueeze(2)
    for cols in c_chunks:
        res = _batched_lbfgs(Xr, y_t, lam[:, cols], n_free, binary,
                             W0=None if W0 is None else W0[:, cols],
                             b0=None if b0 is None else b0[:, cols],
                             scale=scale[:, cols], rot=rot, **kw)
        L_, P_, K_, r = res.W.shape
        W_rot = (res.W * scale[:, cols].to(sdtype).unsqueeze(2)).reshape(L_, P_ * K_, r)
        res.W = torch.bmm(W_rot, rot.transpose(1, 2)).reshape(L_, P_, K_, width)
        yield cols, res

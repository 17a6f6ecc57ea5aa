"""Fast probes: many L2-regularised logistic regressions (all layers x a C sweep) at once.

Objective (identical to scikit-learn 1.9 ``LogisticRegression(C=C, fit_intercept=True)``
with ``solver="lbfgs"``; see ``sklearn/linear_model/_logistic.py``, where
``l2_reg_strength = 1 / (C * n_samples)`` is passed to ``LinearModelLoss``)::

    J(W, b) = (1/n) sum_i CE(y_i, x_i W^T + b) + 1/(2 C n) ||W||_F^2      (intercept not penalised)

i.e. sklearn's ``sum_i CE_i + 1/(2C) ||W||^2`` divided by n, so for the same C the minimiser is
the same. Multiclass (K >= 3) uses the symmetric multinomial parameterisation (K weight
vectors); binary (K = 2) uses ONE weight vector and the logistic loss, as sklearn does (a
2-class multinomial with the same C would be a different problem: its effective C is halved).

Modules (one job each):

- :mod:`.objective`: the batched objective and gradient ``[L, N, D] x [L, D, P*K]``.
- :mod:`.lbfgs`: the batched L-BFGS (own history, line search and stopping test per probe;
  ``converged`` = gradient tolerance met, ``stop_reason`` says why each probe stopped).
- :mod:`.precondition`: feature batches (standardised per layer with the fitting rows'
  statistics, or raw) and the principal-axes preconditioner; wide layers (N < D) are solved
  in their N-dimensional row space, in float64 and to the optimum.
- :mod:`.memory`: the peak-memory estimate of a solve from its shapes and the chunking of the
  probes (over layers, then C values) that keeps every solve within a budget.
- :mod:`.path`: :func:`fit_logistic_path` -> :class:`ProbePath` (layers grouped by width
  rather than zero-padded to the widest: padding would be exact but waste up to
  ``D_max / D_l`` x the flops for ResNets' 256 ... 2048 stages).
- :mod:`.select`: :func:`select_and_evaluate` (choose C per layer on a validation split,
  refit on train + val, report test accuracy) and the notes analyses write.
- :mod:`.clip_protocol`: :func:`~.clip_protocol.clip_linear_probe`, CLIP's linear-probe
  protocol (coarse-to-fine C sweep on validation, refit, top-k test scores; V2 and M1).
- :mod:`.ovr`: :func:`~.ovr.fit_ovr_logistic`, one-vs-rest probes for multi-label targets (M7).

The MLP probe is in :mod:`vlprobe.estimators.mlp`.
"""

from vlprobe.estimators.logistic.lbfgs import STOP_REASONS, _batched_lbfgs, _SolveOut
from vlprobe.estimators.logistic.memory import (
    DEFAULT_MEMORY_BUDGET,
    SolvePlan,
    plan_solves,
    result_bytes,
    solve_bytes,
)
from vlprobe.estimators.logistic.objective import (
    GEMM_ALIGN,
    _gmax,
    _loss_grad,
    _loss_grad_masked,
    _pdot,
)
from vlprobe.estimators.logistic.path import (
    DEFAULT_CS,
    ProbePath,
    _encode_labels,
    fit_logistic_path,
)
from vlprobe.estimators.logistic.precondition import (
    MAX_PRECONDITION_RANK,
    PRECONDITION_POWER,
    ROW_SPACE_TOL_FACTOR,
    _preconditioner,
)
from vlprobe.estimators.logistic.select import (
    ProbeSelection,
    convergence_note,
    memory_note,
    select_and_evaluate,
    stop_diagnostics,
)

__all__ = [
    "DEFAULT_CS", "DEFAULT_MEMORY_BUDGET", "GEMM_ALIGN", "MAX_PRECONDITION_RANK",
    "PRECONDITION_POWER", "ROW_SPACE_TOL_FACTOR", "STOP_REASONS", "ProbePath",
    "ProbeSelection", "SolvePlan", "_SolveOut", "_batched_lbfgs", "_encode_labels", "_gmax",
    "_loss_grad", "_loss_grad_masked", "_pdot", "_preconditioner", "convergence_note",
    "fit_logistic_path", "memory_note", "plan_solves", "result_bytes", "select_and_evaluate",
    "solve_bytes", "stop_diagnostics",
]

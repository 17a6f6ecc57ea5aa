"""Peak-memory estimate of a probe fit, and the chunking that keeps it within a budget.

A batched solve holds, for its ``L`` layers x ``P`` C values (``K`` classes, width ``D``,
``N`` rows), about ``2 * history + 12`` tensors of the weights' shape ``[L, P, K, D]`` (L-BFGS
memory, iterate, gradient, direction, trial step, ...) and two of the logits' shape
``[L, N, P * K]``. With SentEval WordContent's 1,000 classes that is many GB for a handful of
layers, so :func:`plan_solves` splits the probes -- first over layers, then over C values --
into solves that fit ``budget`` bytes. The probes are independent problems, so chunked and
unchunked solves have the same answer.

:func:`solve_bytes` counts the solver's live tensors at their peak (measured within 10% with
glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed, so that freed memory is returned at once) times
:data:`ALLOCATOR_OVERHEAD`: with glibc's default dynamic threshold, freed buffers stay in the
process, and the peak resident memory measured on six problem shapes was 0.9-1.42x the live
peak (``bench/bench_probe_solver.py --memory`` measures it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

from vlprobe.estimators.logistic.objective import GEMM_ALIGN

DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes
# weight-shaped tensors of one solve beyond the 2 * history L-BFGS pairs: out_W, W, gW, the
# direction, trial step and its gradient, torch.where copies, penalty / scaling temporaries
_STATE_COPIES = 12
_GIB = 2**30
# resident memory / live tensor bytes at the peak (see the module docstring)
ALLOCATOR_OVERHEAD = 1.5


def solve_bytes(n_layers: int, n_cs: int, n_items: int, width: int, n_classes: int, *,
                dtype_bytes: int = 4, history: int = 10, mode: str = "plain") -> int:
    """Estimated peak bytes of ONE batched solve of ``n_layers`` layers x ``n_cs`` C values.

    ``mode`` (:func:`~.precondition.solve_mode`): ``"plain"`` (features ``[L, N, D]``),
    ``"eigen"`` (plus the rotated features and ``[L, D, D]`` bases) or ``"row_space"`` (the
    solve runs in float64 on ``r = N`` columns, plus the SVD's work arrays). Counts the
    solver's own tensors, not the caller's feature arrays.
    """
    L, P, N, D = int(n_layers), int(n_cs), int(n_items), int(width)
    kf = 1 if n_classes == 2 else int(n_classes)
    s_in = int(dtype_bytes)
    if mode == "plain":
        r, s = D, s_in
        feats = L * N * D * s_in
    elif mode == "eigen":
        r, s = D, s_in
        feats = 2 * L * N * D * s_in + L * D * D * s_in + 3 * D * D * s_in
    elif mode == "row_space":
        r, s = min(N, D), 8
        # the batch in float32 and float64, rotated rows, bases, one layer's SVD work arrays
        feats = L * N * D * (s_in + 8) + L * (N * r + D * r) * 8 + 2 * (N * D + N * r + r * D) * 8
    else:
        raise ValueError(f"unknown solve mode {mode!r}")
    state = (2 * int(history) + _STATE_COPIES) * L * P * kf * r * s
    padded = math.ceil(P * kf / GEMM_ALIGN) * GEMM_ALIGN
    logits = (2 * padded + 4 * P) * L * N * s
    back = 2 * L * P * kf * D * s if mode != "plain" else 0  # mapping back to [.., D]
    return int(ALLOCATOR_OVERHEAD * (feats + state + logits + back))


def result_bytes(n_cs: int, widths: Sequence[int], n_classes: int) -> int:
    """Bytes of the fitted path: float64 coefficients of every layer x C value."""
    kf = 1 if n_classes == 2 else int(n_classes)
    return sum(int(n_cs) * kf * (int(d) + 1) * 8 for d in widths)


@dataclass
class GroupPlan:
    """Chunking of the layers of one width: ``layers`` (indices into the fit's layers),
    ``layer_chunk`` layers and ``c_chunk`` C values per solve, ``chunk_bytes`` the estimate of
    one such solve and ``full_bytes`` that of one unchunked solve of the whole group."""

    width: int
    mode: str
    layers: list[int]
    layer_chunk: int
    c_chunk: int
    chunk_bytes: int
    full_bytes: int

    def layer_chunks(self) -> list[list[int]]:
        return [self.layers[i:i + self.layer_chunk]
                for i in range(0, len(self.layers), self.layer_chunk)]

    def c_chunks(self, n_cs: int) -> list[slice]:
        return [slice(i, min(i + self.c_chunk, n_cs)) for i in range(0, n_cs, self.c_chunk)]


@dataclass
class SolvePlan:
    """How :func:`~.path.fit_logistic_path` splits a fit into batched solves."""

    n_cs: int
    budget: int
    result_bytes: int
    groups: list[GroupPlan] = field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        """Estimated peak of the fit: the results plus the largest single solve."""
        return self.result_bytes + max((g.chunk_bytes for g in self.groups), default=0)

    @property
    def unchunked_bytes(self) -> int:
        """The estimate without chunking (one solve per width)."""
        return self.result_bytes + max((g.full_bytes for g in self.groups), default=0)

    @property
    def n_solves(self) -> int:
        return sum(len(g.layer_chunks()) * len(g.c_chunks(self.n_cs)) for g in self.groups)

    @property
    def chunked(self) -> bool:
        return any(g.layer_chunk < len(g.layers) or g.c_chunk < self.n_cs for g in self.groups)

    def describe(self) -> str:
        """One line for a result's notes."""
        text = (f"logistic solver peak memory estimate {_fmt(self.peak_bytes)} "
                f"(budget {self.budget / _GIB:.2f} GiB)")
        if self.chunked:
            text += (f", chunked into {self.n_solves} batched solves (unchunked: "
                     f"{_fmt(self.unchunked_bytes)})")
        if self.peak_bytes > self.budget:
            text += "; over budget even with one probe per solve"
        return text

    def as_dict(self) -> dict[str, int | bool]:
        return {"peak_bytes": self.peak_bytes, "unchunked_bytes": self.unchunked_bytes,
                "budget_bytes": self.budget, "n_solves": self.n_solves, "chunked": self.chunked}


def _fmt(n_bytes: int) -> str:
    return (f"{n_bytes / _GIB:.2f} GiB" if n_bytes >= _GIB / 2
            else f"{n_bytes / 2**20:.1f} MiB")


def _largest(fits, upper: int) -> int:
    """Largest k in [1, upper] with fits(k) (fits is monotone); 0 if none."""
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _balanced(total: int, most: int) -> int:
    """Chunk size <= most that splits ``total`` into the fewest, most even chunks."""
    n_chunks = math.ceil(total / most)
    return math.ceil(total / n_chunks)


def plan_solves(n_items: int, widths: Sequence[int], n_cs: int, n_classes: int, *,
                modes: Sequence[str] | None = None, dtype_bytes: int = 4, history: int = 10,
                budget: int = DEFAULT_MEMORY_BUDGET) -> SolvePlan:
    """Group the layers by width and chunk each group so every solve fits ``budget``.

    ``widths``: per layer; ``modes``: per layer solve mode (default ``"plain"``). A group is
    split over layers first (all C values of a layer in one solve), then -- if one layer
    alone is too big -- over C values. One probe per solve is the floor.
    """
    modes = list(modes) if modes is not None else ["plain"] * len(widths)
    res = result_bytes(n_cs, widths, n_classes)
    plan = SolvePlan(n_cs=int(n_cs), budget=int(budget), result_bytes=res)
    by_width: dict[tuple[int, str], list[int]] = {}
    for i, (d, m) in enumerate(zip(widths, modes)):
        by_width.setdefault((int(d), m), []).append(i)
    room = budget - res
    for (width, mode), layers in by_width.items():
        cost = partial(solve_bytes, n_items=n_items, width=width, n_classes=n_classes,
                       dtype_bytes=dtype_bytes, history=history, mode=mode)
        lc, cc = len(layers), int(n_cs)
        if cost(lc, cc) > room:
            lc = _largest(lambda k, cost=cost: cost(k, n_cs) <= room, len(layers))
            if lc >= 1:
                lc = _balanced(len(layers), lc)
            else:  # one layer with all its C values is too big: split the C values too
                lc = 1
                cc = _largest(lambda k, cost=cost: cost(1, k) <= room, int(n_cs))
                cc = _balanced(int(n_cs), max(1, cc))
        plan.groups.append(GroupPlan(width, mode, layers, lc, cc, cost(lc, cc),
                                     cost(len(layers), n_cs)))
    return plan

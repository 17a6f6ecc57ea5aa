"""The arithmetic of attention maps (V7) and of grounding scores (F6): pure numpy, no model.

Attention is ``[H, T_query, T_key]`` post-softmax per layer ("A attends to B": query in A,
key in B); relevance / rollout matrices are ``[T_query, T_key]``.

- :func:`rollout`: Abnar & Zuidema (2020), "Quantifying attention flow in transformers":
  per layer the head-mean attention ``A``, the residual added and rows renormalised,
  ``Â = (A + I) / 2`` (rows of ``A`` sum to 1, so ``Â``'s do too; rows of padded / masked
  attention are renormalised explicitly), then ``R = Â_L ... Â_2 Â_1``.
- :func:`propagate_relevance`: Chefer, Gur & Wolf (2021), "Generic attention-model
  explainability for interpreting bi-modal and encoder-decoder transformers": per layer
  ``Ā = E_h[(∇A ⊙ A)^+]`` (the gradient of the target w.r.t. the attention, times the
  attention, negatives clipped, mean over heads) and the rules of its eqs. 6-11 over one or two
  token streams (self-attention: ``R^{ss} += Ā R^{ss}``, ``R^{sq} += Ā R^{sq}``;
  co-attention of stream ``s`` queries over ``q`` keys: ``R^{sq} += R̄^{ss}ᵀ Ā R̄^{qq}``,
  ``R^{ss} += Ā R^{qs}``, with ``R̄ = `` :func:`normalize_residual`). ``R^{ss}`` starts as
  the identity and ``R^{sq}`` at zero. The rules are written out here (no library implements
  them outside the authors' research scripts).
- :func:`box_cells`, :func:`pointing_hit`, :func:`threshold_iou`: grounding scores of a map
  over grid cells against an object's box.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vlprobe.errors import DataError


def _rows_normalised(a: np.ndarray) -> np.ndarray:
    s = a.sum(axis=-1, keepdims=True)
    return np.divide(a, s, out=np.zeros_like(a), where=s > 0)


def rollout(layers: Sequence[np.ndarray], residual: bool = True) -> np.ndarray:
    """Attention rollout over ``layers`` (each ``[H, T, T]`` or ``[T, T]``, first layer
    first) -> ``[T, T]`` (row i: how much query token i at the top draws from each input
    token). Heads are averaged; with ``residual`` each layer is ``(A + I) / 2``, rows
    renormalised (Abnar & Zuidema 2020)."""
    if not layers:
        raise DataError("attention rollout needs at least one layer of attention")
    out = None
    for a in layers:
        a = np.asarray(a, dtype=np.float64)
        if a.ndim == 3:
            a = a.mean(axis=0)
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise DataError(f"attention rollout needs square self-attention [H, T, T], got "
                            f"{tuple(np.shape(a))}")
        if residual:
            a = _rows_normalised(0.5 * (a + np.eye(a.shape[0])))
        if out is not None and out.shape != a.shape:
            raise DataError(f"attention rollout: layer shapes differ ({out.shape} vs {a.shape})")
        out = a if out is None else a @ out
    return out


def gradient_cam(attn: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """``E_h[(∇A ⊙ A)^+]``: ``[H, Tq, Tk]`` attention and its gradient -> ``[Tq, Tk]``."""
    attn, grad = np.asarray(attn, np.float64), np.asarray(grad, np.float64)
    if attn.shape != grad.shape or attn.ndim != 3:
        raise DataError(f"relevance: attention {attn.shape} and gradient {grad.shape} must be "
                        "the same [H, Tq, Tk]")
    return np.clip(grad * attn, 0.0, None).mean(axis=0)


def normalize_residual(r: np.ndarray) -> np.ndarray:
    """Chefer et al.'s ``R̄`` of a self-relevance ``R^{ss}``: ``(R - I)`` with rows
    renormalised to sum 1 (zero rows stay zero), plus ``I``."""
    eye = np.eye(r.shape[0])
    return _rows_normalised(r - eye) + eye


@dataclass(frozen=True)
class AttentionStep:
    """One attention of the forward pass, for :func:`propagate_relevance`.

    Attributes:
        query: stream of the queries (``"text"``, ``"vision"``, or any one name for a
            single-stream model); key: stream of the keys (== query for self-attention).
        cam: ``[T_query, T_key]`` head-aggregated map (:func:`gradient_cam`, or the head-mean
            attention for a gradient-free propagation).
        group: steps with the same group index are applied simultaneously (each reads the
            relevance from before the group: LXMERT's two cross directions).
    """

    query: str
    key: str
    cam: np.ndarray
    group: int


def propagate_relevance(
    steps: Sequence[AttentionStep], sizes: Mapping[str, int]
) -> dict[tuple[str, str], np.ndarray]:
    """Relevance maps ``R^{s q}`` ``[T_s, T_q]`` for every pair of streams (see the module
    docstring); ``sizes``: stream -> token count. Steps are in forward order."""
    streams = list(sizes)
    r = {(s, q): (np.eye(sizes[s]) if s == q else np.zeros((sizes[s], sizes[q])))
         for s in streams for q in streams}
    groups: dict[int, list[AttentionStep]] = {}
    for step in steps:
        if step.query not in sizes or step.key not in sizes:
            raise DataError(f"relevance: stream {step.query!r} / {step.key!r} not in "
                            f"{streams}")
        want = (sizes[step.query], sizes[step.key])
        if step.cam.shape != want:
            raise DataError(f"relevance: a {step.query}->{step.key} map of shape "
                            f"{step.cam.shape}, expected {want}")
        groups.setdefault(step.group, []).append(step)
    for g in sorted(groups):
        adds: dict[tuple[str, str], np.ndarray] = {}
        for step in groups[g]:
            s, q, cam = step.query, step.key, np.asarray(step.cam, np.float64)
            if s == q:  # self-attention: rows of stream s mix
                for other in streams:
                    adds[(s, other)] = adds.get((s, other), 0) + cam @ r[(s, other)]
            else:  # co-attention: s queries over q keys
                r_ss, r_qq = normalize_residual(r[(s, s)]), normalize_residual(r[(q, q)])
                adds[(s, q)] = adds.get((s, q), 0) + r_ss.T @ cam @ r_qq
                adds[(s, s)] = adds.get((s, s), 0) + cam @ r[(q, s)]
        for key, value in adds.items():
            r[key] = r[key] + value
    return r


# -- maps over image tokens ---------------------------------------------------------------
def normalised_entropy(values: np.ndarray) -> float:
    """Entropy of a non-negative map renormalised to sum 1, divided by ``log(n)``: 0 = all
    mass on one token, 1 = uniform. NaN for an all-zero map or n < 2."""
    v = np.clip(np.asarray(values, np.float64).ravel(), 0.0, None)
    if v.size < 2 or v.sum() <= 0:
        return float("nan")
    p = v / v.sum()
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / np.log(v.size))


def grid_boxes(grid: int, window: Sequence[float], width: float, height: float) -> np.ndarray:
    """``[grid * grid, 4]`` boxes ``(x0, y0, x1, y1)`` normalised to the image (0..1) of the
    cells of a ``grid x grid`` map covering the pixel ``window`` ``(left, top, right,
    bottom)`` of a ``width x height`` image, row-major (cell ``(r, c)`` is ``r * grid + c``)."""
    left, top, right, bottom = (float(v) for v in window)
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    cw, ch = (right - left) / grid, (bottom - top) / grid
    return np.stack([(left + cols * cw) / width, (top + rows * ch) / height,
                     (left + (cols + 1) * cw) / width, (top + (rows + 1) * ch) / height],
                    axis=1)


def check_box(box: Sequence[float], width: float, height: float, where: str) -> np.ndarray:
    """A COCO box ``(x, y, w, h)`` in pixels -> normalised ``(x0, y0, x1, y1)``.

    Raises:
        DataError: naming ``where`` for a box with non-positive size or one that lies (more
            than a pixel) outside the ``width x height`` image.
    """
    x, y, w, h = (float(v) for v in box[:4])
    if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
        raise DataError(f"{where}: box {list(box[:4])} (x, y, w, h) has no area")
    if x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
        raise DataError(f"{where}: box {list(box[:4])} (x, y, w, h in pixels) lies outside the "
                        f"{width:g} x {height:g} image")
    return np.clip(np.array([x / width, y / height, (x + w) / width, (y + h) / height]),
                   0.0, 1.0)


def box_cells(cells: np.ndarray, box: np.ndarray, min_cover: float = 0.5) -> np.ndarray:
    """``[N]`` bool: the cells (``[N, 4]`` normalised boxes) that ``box`` covers by at least
    ``min_cover`` of the cell's area, plus the cell holding the box's centre (so a box smaller
    than a cell still owns one). All False when the box's centre lies outside every cell (the
    object was cropped away)."""
    ix = np.clip(np.minimum(cells[:, 2], box[2]) - np.maximum(cells[:, 0], box[0]), 0, None)
    iy = np.clip(np.minimum(cells[:, 3], box[3]) - np.maximum(cells[:, 1], box[1]), 0, None)
    area = (cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])
    inside = ix * iy >= min_cover * area
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    centre = (cells[:, 0] <= cx) & (cx < cells[:, 2]) & (cells[:, 1] <= cy) & (cy < cells[:, 3])
    if not centre.any():
        return np.zeros(len(cells), bool)
    return inside | centre


def pointing_hit(values: np.ndarray, mask: np.ndarray) -> float:
    """1.0 when the map's maximum lies in ``mask`` (ties: the first maximum), else 0.0."""
    return float(bool(mask[int(np.argmax(values))]))


def threshold_iou(values: np.ndarray, mask: np.ndarray, threshold: float) -> float:
    """IoU of the cells at or above ``threshold x max(values)`` with ``mask``."""
    v = np.asarray(values, np.float64)
    on = v >= threshold * v.max()
    union = (on | mask).sum()
    return float((on & mask).sum() / union) if union else float("nan")

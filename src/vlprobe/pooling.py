"""Pooling: one ``[B, D]`` vector per item from a captured site output.

Methods:

- ``cls``: token 0 of a ``[B, T, D]`` sequence (BERT / ViT class token).
- ``eos``: the token at ``eos_index[b]`` per row (CLIP text tower).
- ``mean``: mean over real tokens (``attention_mask`` aware); for a CNN map ``[B, C, h, w]``
  the spatial mean (global average pooling).
- ``last``: the last real token per ``attention_mask`` row (causal LMs; works for right and
  left padding), or token ``T-1`` without a mask.
- ``max``: max over real tokens (mask aware) or over the spatial positions of a CNN map.
- ``none``: the output is already ``[B, D]`` (``*.proj`` / ``*.pooled`` / ``*.logits`` sites).
- ``mean_text`` / ``mean_image``: mean over the tokens of one modality of a fused sequence,
  selected by ``modality_tags`` (:mod:`vlprobe.modality`; never by offsets). Padding and
  special tokens are never included. A row without such tokens is an error.
- ``span``: phrase representation of Jawahar et al. (catalogue T2),
  ``[h_first; h_last; h_first * h_last; h_first - h_last]`` (``[B, 4 D]``) of the first and
  last sub-word token of each row's span (``spans[b] = (first_tok, last_tok)``, inclusive token
  indexes from :mod:`vlprobe.extract.alignment`). A row whose span is ``(-1, -1)`` (cut away by
  truncation) gets an all-zero vector (the "not available" marker; a real span vector is never
  all zero in practice).
- ``fusion_nmi`` / ``fusion_nmi_s<seed>`` (catalogue F1): not a vector but the item's fusion
  degree ``[B, 1]``: the NMI between the k-means (k = 2) clusters of the item's text and
  image tokens and their modality (:mod:`vlprobe.extract.token_nmi`; seed 0, or ``<seed>``,
  of the k-means++ starts). Needs ``modality_tags``; NaN for an item without both modalities.
- ``grid<g>`` (e.g. ``grid7``; catalogue V5): a coarse spatial map. A CNN map ``[B, C, h, w]``
  is adaptive-average-pooled to ``[B, C, g, g]`` (torch's ``adaptive_avg_pool2d`` bins:
  ``[floor(i h / g), ceil((i + 1) h / g))``; a map smaller than ``g`` is replicated up to
  ``g x g``, so every site of every model gives exactly ``g x g``); a ViT token sequence
  ``[B, T, D]`` loses its ``T - s*s`` leading non-patch tokens (CLS, registers;
  ``s = floor(sqrt(T))``), the patches are laid out row-major as ``[B, D, s, s]`` and pooled
  the same way. Stored flattened channel-major as ``[B, C*g*g]``
  (:func:`unflatten_grid` undoes it). The size is part of the method name, hence of the
  activation-store key: grid features never collide with other poolings or grid sizes.

Computation happens in float32 numpy whatever the model dtype (torch is not needed, so
importing :mod:`vlprobe.extract` stays cheap).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from vlprobe.errors import ConfigError

POOLING_METHODS = (
    "cls", "eos", "mean", "last", "max", "none", "span", "mean_text", "mean_image",
    "fusion_nmi", "grid<g>",
)
_TAG_POOLINGS = {"mean_text": "text", "mean_image": "image"}

_GRID = re.compile(r"grid([1-9][0-9]*)")
_NMI = re.compile(r"fusion_nmi(?:_s([0-9]+))?")


def nmi_seed(method: str) -> int | None:
    """The k-means seed of a ``fusion_nmi`` / ``fusion_nmi_s<seed>`` pooling, else None."""
    m = _NMI.fullmatch(method) if isinstance(method, str) else None
    return None if m is None else int(m.group(1) or 0)


def grid_size(method: str) -> int | None:
    """``g`` of a ``grid<g>`` pooling name (``"grid7"`` -> 7), None for other methods."""
    m = _GRID.fullmatch(method) if isinstance(method, str) else None
    return int(m.group(1)) if m else None


def check_pooling(method: Any) -> str:
    """``method`` if it is a known pooling name (``grid<g>`` with g >= 1 included), else
    :class:`ConfigError`."""
    if isinstance(method, str) and (method in POOLING_METHODS[:-1] or grid_size(method)
                                    or nmi_seed(method) is not None):
        return method
    hint = " (grid pooling needs its size, e.g. 'grid7')" if method == "grid" else ""
    raise ConfigError(
        f"unknown pooling {method!r}{hint}; choose one of {', '.join(POOLING_METHODS)}"
    )


def unflatten_grid(x: np.ndarray, g: int) -> np.ndarray:
    """``[N, C*g*g]`` (``grid<g>`` pooling, channel-major) -> ``[N, C, g, g]``."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] % (g * g):
        raise ConfigError(
            f"features of shape {tuple(x.shape)} are not grid{g} features ([N, C*{g}*{g}])"
        )
    return x.reshape(x.shape[0], x.shape[1] // (g * g), g, g)


def _adaptive_matrix(n: int, g: int) -> np.ndarray:
    """``[g, n]`` averaging matrix of torch's adaptive_avg_pool1d bins."""
    out = np.zeros((g, n), dtype=np.float32)
    for i in range(g):
        start, stop = (i * n) // g, -((-(i + 1) * n) // g)
        out[i, start:stop] = 1.0 / (stop - start)
    return out


def _grid_pool(x: np.ndarray, g: int, mask: Any, not_applicable: Any) -> np.ndarray:
    """``[B, C, h, w]`` or ``[B, T, D]`` (patch tokens) -> ``[B, C*g*g]`` (see module doc)."""
    if x.ndim == 3:
        if mask is not None:
            raise not_applicable(
                "grid pooling needs an image feature map or ViT patch tokens, not a text "
                "sequence (attention_mask given)"
            )
        s = int(np.floor(np.sqrt(x.shape[1])))
        if s < 1:
            raise not_applicable("no patch tokens")
        x = x[:, x.shape[1] - s * s:].reshape(x.shape[0], s, s, x.shape[2]).transpose(0, 3, 1, 2)
    ph = _adaptive_matrix(x.shape[2], g)
    pw = _adaptive_matrix(x.shape[3], g)
    out = np.einsum("bchw,ih,jw->bcij", x, ph, pw, optimize=True)
    return out.reshape(x.shape[0], -1)


def _shape_name(x: Any) -> str:
    names = {2: "[B, D] (already pooled)", 3: "[B, T, D] token sequence",
             4: "[B, C, h, w] feature map"}
    return names.get(x.ndim, f"{x.ndim}-d array {tuple(x.shape)}")


def _as_numpy(x: Any, dtype: Any = None) -> np.ndarray | None:
    """A numpy view (no copy for contiguous float32 CPU tensors) of a tensor / array."""
    if x is None:
        return None
    if hasattr(x, "detach"):  # torch tensor, on any device, any dtype
        x = x.detach()
        if x.is_floating_point() and x.dtype != _torch_float32():
            x = x.float()
        x = x.cpu().numpy()
    arr = np.asarray(x)
    return arr.astype(dtype, copy=False) if dtype is not None else arr


def _torch_float32() -> Any:
    import torch

    return torch.float32


def pool(
    hidden: Any,
    method: str,
    attention_mask: Any = None,
    eos_index: Any = None,
    spans: Any = None,
    modality_tags: Any = None,
) -> Any:
    """Pool ``hidden`` (``[B, T, D]``, ``[B, C, h, w]`` or ``[B, D]``) to ``[B, D]``.

    Args:
        hidden: site output, torch tensor (any device / float dtype) or numpy array.
        method: one of :data:`POOLING_METHODS` (``grid<g>`` with a size, e.g. ``grid7``).
        attention_mask: ``[B, T]`` (1 = real token) for text sequences, or None.
        eos_index: ``[B]`` end-of-text token positions (required by ``eos``).
        spans: ``[B, 2]`` inclusive token index ranges (required by ``span``).
        modality_tags: ``[B, T]`` token tags of a fused sequence (required by ``mean_text``
            / ``mean_image``).

    Returns:
        ``[B, D]`` (``[B, 4 D]`` for ``span``, ``[B, C*g*g]`` for ``grid<g>``) float32: a CPU
        torch tensor for torch input, a numpy array otherwise.

    Raises:
        ConfigError: unknown method, or a method that does not apply to this output.
    """
    out = pool_numpy(
        hidden, method, attention_mask=attention_mask, eos_index=eos_index, spans=spans,
        modality_tags=modality_tags,
    )
    if hasattr(hidden, "detach"):
        import torch

        return torch.from_numpy(out)
    return out


def pool_numpy(
    hidden: Any,
    method: str,
    attention_mask: Any = None,
    eos_index: Any = None,
    spans: Any = None,
    modality_tags: Any = None,
) -> np.ndarray:
    """:func:`pool`, always returning a C-contiguous float32 numpy array.

    The work is done in numpy on one thread: pooled outputs are tiny next to the forward
    pass, and small multi-threaded torch ops stall on busy machines.
    """
    check_pooling(method)
    x = _as_numpy(hidden, np.float32)
    if x.ndim not in (2, 3, 4):
        raise ConfigError(f"cannot pool a {_shape_name(x)}")
    mask = _as_numpy(attention_mask) if x.ndim == 3 else None
    if mask is not None and mask.shape != x.shape[:2]:
        raise ConfigError(
            f"attention_mask shape {mask.shape} does not match the sequence {x.shape[:2]}"
        )

    def not_applicable(why: str) -> ConfigError:
        return ConfigError(f"pooling {method!r} does not apply to a {_shape_name(x)}: {why}")

    rows = np.arange(x.shape[0])
    g = grid_size(method)
    if g is not None and x.ndim != 2:
        out = _grid_pool(x, g, mask, not_applicable)
    elif x.ndim == 2:
        if method != "none":
            raise not_applicable("the site output is already one vector per item; use 'none'")
        out = x
    elif method == "none":
        raise not_applicable("choose cls, eos, mean, last or max (or 'mean' for CNN maps)")
    elif x.ndim == 4:
        if method == "mean":
            out = x.mean(axis=(2, 3), dtype=np.float32)
        elif method == "max":
            out = x.max(axis=(2, 3))
        else:
            raise not_applicable("a CNN feature map has no tokens; use 'mean', 'max' or 'grid<g>'")
    elif method == "cls":
        out = x[:, 0]
    elif method == "eos":
        idx = _as_numpy(eos_index)
        if idx is None:
            raise not_applicable(
                "this model gives no eos_index (only towers with an end-of-text token, e.g. "
                "CLIP text, support it); use 'mean', 'last' or 'cls'"
            )
        idx = idx.astype(np.int64).reshape(-1)
        if idx.shape[0] != x.shape[0]:
            raise ConfigError(f"eos_index has {idx.shape[0]} entries for a batch of {x.shape[0]}")
        out = x[rows, idx]
    elif method == "span":
        out = _span_pool(x, spans, not_applicable)
    elif nmi_seed(method) is not None:
        if modality_tags is None:
            raise not_applicable("fusion degree needs the modality tags of a fused sequence")
        from vlprobe.extract.token_nmi import fusion_nmi

        tags = _as_numpy(modality_tags)
        if tags.shape != x.shape[:2]:
            raise not_applicable(f"modality tags {tags.shape} do not cover the sequence "
                                 f"{x.shape[:2]}")
        out = fusion_nmi(x, tags, seed=nmi_seed(method) or 0)
    elif method in _TAG_POOLINGS:
        out = _tag_mean(x, modality_tags, _TAG_POOLINGS[method], not_applicable)
    elif method == "mean":
        out = x.mean(axis=1, dtype=np.float32) if mask is None else _masked_mean(x, mask != 0)
    elif method == "last":
        if mask is None:
            out = x[:, -1]
        else:
            # index of the last position whose mask is 1 (right or left padding)
            last = x.shape[1] - 1 - np.argmax((mask != 0)[:, ::-1], axis=1)
            out = x[rows, last]
    else:  # max
        if mask is None:
            out = x.max(axis=1)
        else:
            out = np.where((mask != 0)[:, :, None], x, -np.inf).max(axis=1)
    return np.ascontiguousarray(out, dtype=np.float32)


def _tag_mean(x: np.ndarray, tags: Any, modality: str, not_applicable: Any) -> np.ndarray:
    """Mean of the ``[B, T, D]`` tokens whose tag is ``modality`` (see :mod:`vlprobe.modality`)."""
    from vlprobe.modality import tag_of

    if tags is None:
        raise not_applicable(
            "it needs the modality tags of a fused image+text sequence (a fusion model run "
            "on paired items)"
        )
    t = _as_numpy(tags)
    if t.shape != x.shape[:2]:
        raise ConfigError(
            f"modality_tags shape {t.shape} does not match the sequence {x.shape[:2]}"
        )
    keep = t == tag_of(modality)
    count = keep.sum(1)
    if (count == 0).any():
        raise not_applicable(f"row {int(np.argmin(count))} has no {modality} tokens")
    return _masked_mean(x, keep)


def _masked_mean(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Mean of ``[B, T, D]`` over the positions where ``keep`` ``[B, T]`` is True. Dropped
    positions are zeroed first (a matmul with a 0 weight would still spread NaN / Inf)."""
    xz = np.where(keep[:, :, None], x, np.float32(0))
    return xz.sum(axis=1, dtype=np.float32) / np.maximum(keep.sum(1, keepdims=True), 1)


def _span_pool(x: np.ndarray, spans: Any, not_applicable: Any) -> np.ndarray:
    """``[h_first; h_last; h_first * h_last; h_first - h_last]`` per row; zeros for (-1, -1)."""
    if spans is None:
        raise not_applicable(
            "span pooling needs per-item token spans (items with a 'span_chars' descriptor and "
            "a fast tokenizer that returns character offsets)"
        )
    sp = _as_numpy(spans).astype(np.int64).reshape(-1, 2)
    if sp.shape[0] != x.shape[0]:
        raise ConfigError(f"spans has {sp.shape[0]} rows for a batch of {x.shape[0]}")
    missing = (sp < 0).any(axis=1)
    if (sp[~missing, 1] < sp[~missing, 0]).any() or (sp >= x.shape[1]).any():
        raise ConfigError(f"token spans out of range for {x.shape[1]} tokens: {sp.tolist()[:4]}")
    rows = np.arange(x.shape[0])
    first = x[rows, np.maximum(sp[:, 0], 0)]
    last = x[rows, np.maximum(sp[:, 1], 0)]
    out = np.concatenate([first, last, first * last, first - last], axis=1)
    out[missing] = 0.0
    return out


def is_pooled_site(site: str) -> bool:
    """Whether a site's output is already ``[B, D]`` by name (``*.proj``, ``*.pooled``,
    ``*.logits``)."""
    return site.rsplit(".", 1)[-1] in ("proj", "pooled", "logits")

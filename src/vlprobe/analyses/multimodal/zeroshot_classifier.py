"""The zero-shot classifier of a dual encoder: ONE implementation for every analysis that
classifies images by prompts (M1 ``zero_shot``, M3 ``typographic_attack``, M4 ``bias_audit``,
M6 ``modality_gap``'s class-prompt mode, V6's ``zero_shot`` head).

CLIP (Radford et al. 2021; the CLIP ImageNet notebook): every class name goes into every
template; each prompt's text embedding is L2-normalised, a class' embeddings are averaged and
the mean renormalised (prompt ensembling) -> a ``[C, E]`` classifier; an image gets the class
of highest cosine similarity (logits ``scale * cos + bias``; scale > 0 and bias change no
argmax, top-k or rank).

- :func:`ensemble_classifier`: ``[C*T, E]`` unit prompt embeddings (class-major) -> ``[C, E]``.
- :func:`prompt_classifier`: the same from raw prompt embeddings and their class labels (any
  order; checks that every class has the same number of prompts).
- :func:`predict_classes`: each image's class of highest cosine.
- :func:`class_ranks`: the rank of each item's true class (and probabilities), chunked.
- :func:`template_ranks`: the same for every template alone.
- :func:`rank_metrics`: top-1 / top-k / mean per-class recall from those ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlprobe.analyses.multimodal._common import unit_rows
from vlprobe.errors import AnalysisError


def ensemble_classifier(text_unit: np.ndarray, n_classes: int, n_templates: int) -> np.ndarray:
    """CLIP's prompt ensemble: ``[C*T, E]`` unit prompt embeddings (class-major) -> ``[C, E]``
    = the mean over each class' T templates, renormalised (the CLIP ImageNet notebook)."""
    per_class = np.asarray(text_unit).reshape(n_classes, n_templates, -1)
    out = np.empty((n_classes, per_class.shape[2]), dtype=np.float32)
    step = max(1, 4096 // max(n_templates, 1))  # classes per chunk: no float64 copy of it all
    for c in range(0, n_classes, step):
        mean = np.asarray(per_class[c:c + step], dtype=np.float64).mean(axis=1)
        out[c:c + step] = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    return out


def prompt_classifier(text: np.ndarray, labels: np.ndarray, n_classes: int, what: str,
                      ids: Sequence[str] | None = None) -> np.ndarray:
    """``[C, E]`` unit class vectors from raw prompt embeddings ``text`` ``[P, E]`` whose
    class is ``labels`` ``[P]`` (in ``0..C-1``, any order; within a class the prompts keep
    their order): :func:`unit_rows` then :func:`ensemble_classifier`. For class-major input
    (every analysis' prompts are) it is exactly ``ensemble_classifier(unit_rows(text))``.

    AnalysisError naming ``what`` for a label outside ``0..C-1``, a class without a prompt,
    classes with different numbers of prompts, or a zero / non-finite embedding.
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if len(labels) != len(text):
        raise AnalysisError(f"{what}: {len(text)} prompt embeddings but {len(labels)} labels")
    outside = labels[(labels < 0) | (labels >= n_classes)]
    if outside.size:
        raise AnalysisError(f"{what}: prompt label {int(outside[0])} is outside the "
                            f"{n_classes} classes")
    counts = np.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        raise AnalysisError(f"{what}: classes {np.flatnonzero(counts == 0).tolist()} have no "
                            "prompt embedding")
    if (counts != counts[0]).any():
        raise AnalysisError(f"{what}: classes have different numbers of prompts "
                            f"({sorted(set(counts.tolist()))}); the ensemble needs every "
                            "class with every template")
    order = np.argsort(labels, kind="stable")
    unit = unit_rows(np.asarray(text)[order], what,
                     None if ids is None else [ids[i] for i in order])
    return ensemble_classifier(unit, n_classes, int(counts[0]))


def predict_classes(image_unit: np.ndarray, classifier: np.ndarray, chunk: int = 2048
                    ) -> np.ndarray:
    """``[N]``: each image's class of highest cosine similarity (``image_unit`` ``[N, E]``
    and ``classifier`` ``[C, E]`` unit rows; ties -> the lower class index, as
    :func:`class_ranks`' ``pred``)."""
    out = np.empty(len(image_unit), dtype=np.int64)
    for start in range(0, len(image_unit), chunk):
        out[start:start + chunk] = (image_unit[start:start + chunk] @ classifier.T).argmax(1)
    return out


def class_ranks(
    image_unit: np.ndarray, classifier: np.ndarray, labels: np.ndarray,
    scale: float = 1.0, bias: float | None = None, probabilities: bool = True,
    chunk: int = 2048,
) -> dict[str, np.ndarray]:
    """Per image: the 1-based rank of its true class, the predicted class, and the
    probabilities of the prediction and of the true class.

    Logits are ``scale * image_unit @ classifier.T + bias`` (``[N, E]`` x ``[C, E]``). Ties
    rank the lower class index first (as a stable sort; ``argmax`` agrees). Scale > 0 and
    bias do not change ranks; probabilities are a softmax over classes (CLIP), or a sigmoid
    per class when the model has a bias (SigLIP's pairwise sigmoid). ``labels`` outside
    ``0..C-1`` are an AnalysisError. ``probabilities=False`` skips them (ranks only).
    """
    from scipy.special import expit

    labels = np.asarray(labels, dtype=np.int64)
    n_classes = classifier.shape[0]
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise AnalysisError(f"zero-shot: label {int(labels.max())} has no class among the "
                            f"{n_classes} class names")
    out = {k: np.empty(len(labels), dtype=d) for k, d in
           (("rank", np.int64), ("pred", np.int64), ("p_pred", np.float64),
            ("p_true", np.float64))}
    cls_index = np.arange(n_classes)
    for start in range(0, len(labels), chunk):
        y = labels[start:start + chunk]
        logits = float(scale) * (image_unit[start:start + chunk] @ classifier.T)
        if bias is not None:
            logits = logits + float(bias)
        true = logits[np.arange(len(y)), y]
        above = (logits > true[:, None]).sum(1)
        tied_before = ((logits == true[:, None]) & (cls_index[None, :] < y[:, None])).sum(1)
        pred = logits.argmax(1)
        out["rank"][start:start + len(y)] = above + tied_before + 1
        out["pred"][start:start + len(y)] = pred
        if not probabilities:
            continue
        z = logits.astype(np.float64)
        if bias is None:
            z = np.exp(z - z.max(1, keepdims=True))
            prob = z / z.sum(1, keepdims=True)
        else:
            prob = expit(z)
        rows = np.arange(len(y))
        out["p_pred"][start:start + len(y)] = prob[rows, pred]
        out["p_true"][start:start + len(y)] = prob[rows, y]
    if not probabilities:
        del out["p_pred"], out["p_true"]
    return out


def template_ranks(image_unit: np.ndarray, prompt_unit: np.ndarray, labels: np.ndarray,
                   n_classes: int, n_templates: int, chunk: int = 256) -> np.ndarray:
    """``[N, T]``: the rank of each image's true class when template ``t`` alone is the
    classifier (``prompt_unit`` ``[C*T, E]`` class-major, unit rows). One matrix product per
    chunk of images for all templates at once (not T small ones); ties as
    :func:`class_ranks`."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.empty((len(labels), n_templates), dtype=np.int64)
    cls_index = np.arange(n_classes)[None, :, None]
    for start in range(0, len(labels), chunk):
        y = labels[start:start + chunk]
        sims = (image_unit[start:start + chunk] @ prompt_unit.T).reshape(len(y), n_classes,
                                                                         n_templates)
        true = sims[np.arange(len(y)), y]  # [n, T]
        above = (sims > true[:, None, :]).sum(1)
        tied = ((sims == true[:, None, :]) & (cls_index < y[:, None, None])).sum(1)
        out[start:start + len(y)] = above + tied + 1
    return out


def rank_metrics(ranks: np.ndarray, labels: np.ndarray, top_k: int, n_classes: int
                 ) -> dict[str, float]:
    """``top1_accuracy``, ``top{k}_accuracy`` (only when ``n_classes > top_k``; else it is
    trivially 1) and ``mean_per_class_recall`` (mean over the classes present in ``labels``
    of their top-1 recall) from true-class ranks."""
    ranks, labels = np.asarray(ranks), np.asarray(labels)
    hit = ranks == 1
    out = {"top1_accuracy": float(hit.mean())}
    if n_classes > top_k:
        out[f"top{top_k}_accuracy"] = float((ranks <= top_k).mean())
    # per class present: hits / items (as hit[labels == c].mean(), without a loop over classes)
    classes, index = np.unique(labels, return_inverse=True)
    recall = (np.bincount(index.ravel(), weights=hit.ravel(), minlength=len(classes))
              / np.bincount(index.ravel(), minlength=len(classes)))
    out["mean_per_class_recall"] = float(np.mean(recall))
    return out

"""Image-text retrieval: per-query ranks and Recall@K with several positives per query.

The rule is CLIP_benchmark's: a query is a hit at K when ANY of its positives is among the K
best-scored candidates. Ranks are 1-based and ties are broken by a stable sort on the
candidate order (candidate ``c`` ranks before ``c' > c`` on equal scores), so the numbers are
deterministic; a brute-force sort gives the same ranks (tests/unit/test_retrieval.py).

Shapes: ``scores [N_query, N_candidate]`` (higher = better), ``positives`` the same shape
(bool). Flickr8k's 1k test set: image->text is ``[1000, 5000]`` with 5 positives per row,
text->image ``[5000, 1000]`` with one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlprobe.errors import AnalysisError


def best_positive_ranks(scores: np.ndarray, positives: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``[N_query]`` int64: the 1-based rank of each query's best-ranked positive."""
    scores = np.asarray(scores)
    positives = np.asarray(positives, dtype=bool)
    if scores.ndim != 2 or positives.shape != scores.shape:
        raise AnalysisError(
            f"retrieval: scores {scores.shape} and positives {positives.shape} must be the "
            "same [N_query, N_candidate] shape"
        )
    if not positives.any(axis=1).all():
        row = int(np.argmin(positives.any(axis=1)))
        raise AnalysisError(f"retrieval: query {row} has no positive candidate")
    if not np.isfinite(scores).all():
        raise AnalysisError("retrieval: scores contain NaN or Inf")
    ranks = np.empty(scores.shape[0], dtype=np.int64)
    cols = np.arange(scores.shape[1])
    for start in range(0, scores.shape[0], chunk):
        s = scores[start : start + chunk]
        pos = positives[start : start + chunk]
        masked = np.where(pos, s, -np.inf)
        best = masked.max(axis=1)  # the best positive's score
        first = np.argmax(masked == best[:, None], axis=1)  # and the first such column
        above = (s > best[:, None]).sum(axis=1)
        tied_before = ((s == best[:, None]) & (cols[None, :] < first[:, None])).sum(axis=1)
        ranks[start : start + chunk] = above + tied_before + 1
    return ranks


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """``{K: fraction of queries whose best positive ranks <= K}`` (in [0, 1])."""
    ranks = np.asarray(ranks)
    return {int(k): float((ranks <= k).mean()) for k in ks}


def image_text_positives(image_of_text: Sequence[int], n_images: int) -> np.ndarray:
    """``[n_images, n_texts]`` bool: text ``t`` is a positive of image ``image_of_text[t]``."""
    idx = np.asarray(image_of_text, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n_images):
        raise AnalysisError(f"retrieval: image index out of range 0..{n_images - 1}")
    out = np.zeros((n_images, idx.size), dtype=bool)
    out[idx, np.arange(idx.size)] = True
    return out


def retrieval_ranks(
    image_emb: np.ndarray, text_emb: np.ndarray, image_of_text: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(image->text ranks ``[N_images]``, text->image ranks ``[N_texts]``) by cosine
    similarity of L2-normalised embeddings (``[N_images, E]``, ``[N_texts, E]``)."""
    img = _unit(np.asarray(image_emb, dtype=np.float64))
    txt = _unit(np.asarray(text_emb, dtype=np.float64))
    sim = img @ txt.T
    pos = image_text_positives(image_of_text, img.shape[0])
    return best_positive_ranks(sim, pos), best_positive_ranks(sim.T, pos.T)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if (norm == 0).any():
        raise AnalysisError("retrieval: an embedding is all zeros (no direction)")
    return x / norm

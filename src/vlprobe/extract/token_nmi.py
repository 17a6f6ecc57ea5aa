"""Fusion degree of one fused sequence (catalogue F1, seed 001 §3.1): per item, k-means
(k = 2) over the item's text and image token vectors, and the normalised mutual information
(NMI) between the two clusters and the tokens' modality.

Computed inside the extraction pass as the pooling ``fusion_nmi`` (:mod:`vlprobe.pooling`), so
no ``[N, T, D]`` token tensor is ever stored: each item's hidden states become one number.

Tokens: those tagged text or image (:mod:`vlprobe.modality`); special tokens ([CLS], [SEP])
and padding are left out of both the clustering and the NMI (seed 001 clusters "the
representations of image regions and textual tokens"). An item without a text or without an
image token has no fusion degree: NaN.

k-means: Lloyd's algorithm on all items of a batch at once (numpy, float64), ``n_init`` starts
by k-means++ (Arthur & Vassilvitskii 2007), the lowest inertia kept per item. Hand-written
because scikit-learn's KMeans runs one item per call (13 layers x 1,000 items = 13,000 calls
with their Python overhead, inside the forward loop); batched, every item of a batch is done
in one array pass. Determinism: the k-means++ draws are the same uniform numbers
(``np.random.default_rng(seed)``) for every item, turned into token choices by the item's
own token count and distances, so an item's result depends on its tokens and the seed only,
never on the batch it ran in. NMI: scikit-learn's ``normalized_mutual_info_score`` definition
(arithmetic mean of the entropies; 1.0 when both labelings have a single class, 0.0 when the
mutual information is 0), tested equal to it.
"""

from __future__ import annotations

import numpy as np

from vlprobe.modality import TAG_IMAGE, TAG_TEXT

#: k-means++ starts per item.
N_INIT = 4
#: Lloyd iterations at most (k = 2 converges in a few).
MAX_ITER = 100


def kmeans2(x: np.ndarray, valid: np.ndarray, seed: int = 0, n_init: int = N_INIT,
            max_iter: int = MAX_ITER) -> np.ndarray:
    """Two-cluster k-means of every item's valid tokens.

    Args:
        x: ``[B, T, D]`` token vectors.
        valid: ``[B, T]`` bool, the tokens to cluster.
        seed: seed of the k-means++ draws (shared by all items).
        n_init: starts; the one with the lowest inertia is kept per item.
        max_iter: Lloyd iterations at most.

    Returns:
        ``[B, T]`` int64 cluster (0 / 1) of each valid token, -1 elsewhere.
    """
    x = np.asarray(x, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    b, t, _ = x.shape
    n_valid = valid.sum(1)
    draws = np.random.default_rng(seed).random((n_init, 2))
    sq = np.einsum("btd,btd->bt", x, x)
    best_labels = np.full((b, t), -1, dtype=np.int64)
    best_inertia = np.full(b, np.inf)
    rows = np.arange(b)
    # rank of each valid token among its item's valid tokens (position order)
    rank = np.where(valid, valid.cumsum(1) - 1, -1)
    for u_first, u_second in draws:
        # k-means++: first centre uniformly, second with probability ~ squared distance
        pick = np.minimum((u_first * n_valid).astype(np.int64), np.maximum(n_valid - 1, 0))
        first = np.argmax(rank == pick[:, None], axis=1)
        c0 = x[rows, first]
        d0 = np.where(valid, _sq_dist(x, sq, c0), 0.0)
        cum = d0.cumsum(1)
        total = cum[:, -1]
        reach = np.where(valid, cum >= (u_second * total)[:, None], False)
        reach &= d0 > 0  # never a token on top of the first centre (unless all are)
        second = np.where(reach.any(1), np.argmax(reach, axis=1), first)
        centres = np.stack([c0, x[rows, second]], axis=1)  # [B, 2, D]
        labels = np.full((b, t), -1, dtype=np.int64)
        for _ in range(max_iter):
            dist = _sq_dists(x, sq, centres)
            new = np.where(valid, np.argmin(dist, axis=-1), -1)
            if np.array_equal(new, labels):
                break
            labels = new
            member = np.stack([labels == 0, labels == 1], axis=1).astype(np.float64)  # [B,2,T]
            count = member.sum(2)
            mean = (member @ x) / np.maximum(count, 1)[..., None]  # [B, 2, D]
            centres = np.where((count > 0)[..., None], mean, centres)
        dist = _sq_dists(x, sq, centres)
        inertia = np.where(valid, np.take_along_axis(
            dist, np.maximum(labels, 0)[..., None], -1)[..., 0], 0.0).sum(1)
        better = inertia < best_inertia
        best_inertia = np.where(better, inertia, best_inertia)
        best_labels[better] = labels[better]
    return best_labels


def _sq_dist(x: np.ndarray, sq: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``[B, T]`` squared distances of tokens ``x [B, T, D]`` (norms ``sq``) to ``c [B, D]``."""
    return _sq_dists(x, sq, c[:, None, :])[..., 0]


def _sq_dists(x: np.ndarray, sq: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``[B, T, K]`` squared distances of tokens ``x [B, T, D]`` (norms ``sq [B, T]``) to
    centres ``c [B, K, D]`` (one batched matrix product)."""
    d = sq[..., None] - 2.0 * (x @ c.transpose(0, 2, 1)) + (c * c).sum(-1)[:, None, :]
    return np.maximum(d, 0.0)


def nmi(labels: np.ndarray, classes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``[B]`` NMI of two binary labelings of each item's valid tokens (scikit-learn's
    ``normalized_mutual_info_score`` with ``average_method="arithmetic"``).

    Args:
        labels, classes: ``[B, T]`` int, values 0 / 1 at valid tokens.
        valid: ``[B, T]`` bool.
    """
    valid = np.asarray(valid, dtype=bool)
    n = valid.sum(1).astype(np.float64)
    # contingency counts n_ij: [B, 2, 2]
    cont = np.stack([
        np.stack([((labels == i) & (classes == j) & valid).sum(1) for j in range(2)], -1)
        for i in range(2)
    ], 1).astype(np.float64)
    a, c = cont.sum(2), cont.sum(1)  # cluster sizes, class sizes [B, 2]
    nn = np.maximum(n, 1.0)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(cont > 0, cont / nn[..., None] * np.log(
            cont * nn[..., None] / (a[:, :, None] * c[:, None, :])), 0.0)
        mi = np.clip(terms.sum((1, 2)), 0.0, None)
        h_a = -np.where(a > 0, a / nn * np.log(a / nn), 0.0).sum(1)
        h_c = -np.where(c > 0, c / nn * np.log(c / nn), 0.0).sum(1)
        out = mi / ((h_a + h_c) / 2.0)
    single = ((a > 0).sum(1) == 1) & ((c > 0).sum(1) == 1)
    out = np.where(mi == 0, 0.0, out)
    return np.where(single, 1.0, out)


def fusion_nmi(x: np.ndarray, tags: np.ndarray, seed: int = 0) -> np.ndarray:
    """``[B, 1]`` float32: each item's NMI between the k-means (k = 2) clusters of its text
    and image tokens and their modality (NaN where an item lacks either modality).

    Args:
        x: ``[B, T, D]`` hidden states of a fused sequence.
        tags: ``[B, T]`` modality tags of that sequence.
        seed: k-means++ seed.
    """
    tags = np.asarray(tags)
    valid = (tags == TAG_TEXT) | (tags == TAG_IMAGE)
    labels = kmeans2(x, valid, seed=seed)
    classes = (tags == TAG_IMAGE).astype(np.int64)
    out = nmi(labels, classes, valid)
    both = (tags == TAG_TEXT).any(1) & (tags == TAG_IMAGE).any(1)
    return np.where(both, out, np.nan).astype(np.float32)[:, None]

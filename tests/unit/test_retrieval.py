"""Retrieval ranks and Recall@K against a brute-force reference (ties, duplicates, 5 positives)."""

from __future__ import annotations

import numpy as np
import pytest

from vlprobe.errors import AnalysisError
from vlprobe.metrics.retrieval import (
    best_positive_ranks,
    image_text_positives,
    recall_at_k,
    retrieval_ranks,
)


def brute_force(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    out = []
    for s, p in zip(scores, positives):
        order = sorted(range(len(s)), key=lambda c: (-s[c], c))  # stable: ties by index
        out.append(next(r for r, c in enumerate(order, 1) if p[c]))
    return np.asarray(out)


@pytest.mark.parametrize("seed", range(5))
def test_ranks_match_brute_force_with_ties_and_five_positives(seed):
    rng = np.random.default_rng(seed)
    n_img, per = 12, 5
    scores = rng.integers(0, 4, size=(n_img, n_img * per)).astype(float)  # many ties
    image_of_text = np.repeat(np.arange(n_img), per)
    pos = image_text_positives(image_of_text, n_img)
    assert pos.sum(1).tolist() == [per] * n_img
    np.testing.assert_array_equal(best_positive_ranks(scores, pos, chunk=5),
                                  brute_force(scores, pos))
    np.testing.assert_array_equal(best_positive_ranks(scores.T, pos.T),
                                  brute_force(scores.T, pos.T))


def test_recall_at_k_and_duplicate_captions():
    ranks = np.array([1, 2, 6, 11])
    assert recall_at_k(ranks) == {1: 0.25, 5: 0.5, 10: 0.75}
    # two images whose captions are identical strings: identical text embeddings tie
    img = np.array([[1.0, 0.0], [0.0, 1.0]])
    txt = np.array([[1.0, 0.1], [1.0, 0.1], [0.1, 1.0]])
    i2t, t2i = retrieval_ranks(img, txt, [1, 0, 1])
    # image 0: its positive (text 1) ties with text 0 at the top; the stable order puts it 2nd
    assert i2t.tolist() == [2, 1]
    assert t2i.tolist() == [2, 1, 1]


def test_planted_embeddings_retrieve_perfectly():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(20, 8))
    txt = np.repeat(img, 5, axis=0) @ np.eye(8) + 1e-3 * rng.normal(size=(100, 8))
    i2t, t2i = retrieval_ranks(img, txt, np.repeat(np.arange(20), 5))
    assert recall_at_k(i2t)[1] == 1.0 and recall_at_k(t2i)[1] == 1.0


def test_bad_input():
    with pytest.raises(AnalysisError, match="query 1 has no positive"):
        best_positive_ranks(np.zeros((2, 3)), np.array([[1, 0, 0], [0, 0, 0]], bool))
    with pytest.raises(AnalysisError, match="same"):
        best_positive_ranks(np.zeros((2, 3)), np.zeros((3, 2), bool))
    with pytest.raises(AnalysisError, match="NaN"):
        best_positive_ranks(np.full((1, 2), np.nan), np.ones((1, 2), bool))
    with pytest.raises(AnalysisError, match="all zeros"):
        retrieval_ranks(np.zeros((1, 2)), np.ones((1, 2)), [0])

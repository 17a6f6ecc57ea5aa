"""The one zero-shot classifier (M1, M3, M4, M6, V6's zero-shot head): prompt_classifier /
predict_classes agree with M1's ensemble and ranks, with CLIP's notebook written out, and
with V6's differentiable head; bad prompt layouts are clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from vlprobe.analyses.multimodal._common import unit_rows
from vlprobe.analyses.multimodal.zeroshot_classifier import (
    class_ranks,
    ensemble_classifier,
    predict_classes,
    prompt_classifier,
    rank_metrics,
)
from vlprobe.errors import AnalysisError


def _data(n_cls=7, n_tpl=5, dim=12, n_img=200, seed=0):
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(n_cls * n_tpl, dim)).astype(np.float32)
    text *= rng.uniform(0.2, 5.0, size=(len(text), 1)).astype(np.float32)  # unequal norms
    labels = np.repeat(np.arange(n_cls), n_tpl)
    images = rng.normal(size=(n_img, dim)).astype(np.float32)
    return text, labels, images


def test_class_major_prompts_give_m1s_classifier_bit_for_bit():
    text, labels, _ = _data()
    got = prompt_classifier(text, labels, 7, "t")
    m1 = ensemble_classifier(unit_rows(text, "t"), 7, 5)
    assert got.dtype == np.float32 and np.array_equal(got, m1)


def test_prompt_order_does_not_matter():
    text, labels, _ = _data()
    perm = np.arange(len(labels)).reshape(7, 5).T.ravel()  # template-major: classes interleaved
    shuffled = prompt_classifier(text[perm], labels[perm], 7, "t")
    assert np.array_equal(shuffled, prompt_classifier(text, labels, 7, "t"))


def test_predictions_match_m1_ranks_and_clips_notebook():
    text, labels, images = _data()
    clf = prompt_classifier(text, labels, 7, "t")
    img = unit_rows(images, "i")
    pred = predict_classes(img, clf, chunk=33)
    y = np.random.default_rng(2).integers(0, 7, len(img))
    assert np.array_equal(pred, class_ranks(img, clf, y, scale=100.0)["pred"])
    # CLIP's notebook in float64: normalise prompts, mean per class, renormalise, argmax cos
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    means = np.stack([t[labels == c].mean(0) for c in range(7)]).astype(np.float64)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    ref = (images / np.linalg.norm(images, axis=1, keepdims=True)) @ means.T
    assert np.array_equal(pred, ref.argmax(1))
    assert np.allclose(clf, means, atol=1e-6)


def test_ties_go_to_the_lower_class_like_class_ranks():
    text, labels, _ = _data(n_cls=3, n_tpl=1)
    text[2] = text[0]  # classes 0 and 2 identical
    clf = prompt_classifier(text, labels, 3, "t")
    img = unit_rows(np.repeat(text[:1], 4, axis=0), "i")
    pred = predict_classes(img, clf)
    assert (pred == 0).all()
    assert np.array_equal(pred, class_ranks(img, clf, np.zeros(4, int))["pred"])


@pytest.mark.parametrize("labels, match", [
    (np.array([0, 0, 1, 1, 2]), "different numbers of prompts"),
    (np.array([0, 0, 1, 1, 1, 1]), r"classes \[2\] have no prompt"),
    (np.array([0, 0, 1, 1, 3, 3]), "label 3 is outside the 3 classes"),
    (np.array([0, 0, 1]), "6 prompt embeddings but 3 labels"),
])
def test_bad_prompt_layouts_are_clear_errors(labels, match):
    text = np.random.default_rng(0).normal(size=(len(labels) if len(labels) != 3 else 6, 4))
    with pytest.raises(AnalysisError, match=match):
        prompt_classifier(text, labels, 3, "prompts of m")


def test_zero_prompt_embedding_is_named():
    text, labels, _ = _data(n_cls=2, n_tpl=2)
    text[3] = 0
    with pytest.raises(AnalysisError, match=r"prompts of m.*first: p3"):
        prompt_classifier(text, labels, 2, "prompts of m", ids=[f"p{i}" for i in range(4)])


def test_unit_rows_in_chunks_equals_the_whole_float64_computation():
    """unit_rows and ensemble_classifier work in row chunks (no float64 copy of 80,000 prompt
    embeddings): bit-identical to the one-shot float64 formulas; a bad row in a later chunk is
    named, with the count over all chunks."""
    from vlprobe.analyses.multimodal import _common
    from vlprobe.analyses.multimodal.zeroshot_classifier import ensemble_classifier

    rng = np.random.default_rng(3)
    n = 2 * _common.UNIT_CHUNK + 17
    x = rng.standard_normal((n, 24)).astype(np.float32) * 5
    x64 = x.astype(np.float64)
    want = (x64 / np.linalg.norm(x64, axis=1)[:, None]).astype(np.float32)
    got = _common.unit_rows(x, "prompts")
    assert got.dtype == np.float32 and np.array_equal(got, want)
    per_class = want[: 100 * 80].astype(np.float64).reshape(100, 80, -1).mean(axis=1)
    ref = (per_class / np.linalg.norm(per_class, axis=1, keepdims=True)).astype(np.float32)
    assert np.array_equal(ensemble_classifier(want[: 100 * 80], 100, 80), ref)
    bad = x.copy()
    bad[_common.UNIT_CHUNK + 5] = 0
    bad[n - 1, 0] = np.nan
    with pytest.raises(AnalysisError, match=rf"2 embedding\(s\).*row {_common.UNIT_CHUNK + 5}"):
        _common.unit_rows(bad, "prompts")


def test_mean_per_class_recall_is_the_mean_of_per_class_recalls():
    rng = np.random.default_rng(4)
    labels = rng.integers(3, 40, 500)  # classes 0-2 absent: not averaged
    ranks = rng.integers(1, 4, 500)
    want = np.mean([(ranks[labels == c] == 1).mean() for c in np.unique(labels)])
    assert rank_metrics(ranks, labels, 2, 40)["mean_per_class_recall"] == want

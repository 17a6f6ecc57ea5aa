"""M2 retrieval at the analysis level: planted dual encoder (R@1 = 1), brute-force ranks with
exact ties, duplicate captions and 5 positives per image, chance, bad input."""

from __future__ import annotations

import itertools
from math import comb

import numpy as np
import pytest
from dual_fakes import PlantedDualSource, caption_split, labelled_split, planted_pairs

from vlprobe.analyses import ANALYSES
from vlprobe.analyses.multimodal.retrieval import Retrieval, chance_recall
from vlprobe.errors import AnalysisError, ConfigError


def test_registered_as_m2():
    assert ANALYSES.get("M2") is Retrieval and ANALYSES.canonical("M2") == "retrieval"


def test_planted_dual_encoder_retrieves_perfectly():
    src, _ = planted_pairs(n_images=12, per_image=5)
    res = Retrieval(["m"], "toy").run(src)
    t = res.table
    rec = t[t["metric"].str.startswith("recall@")]
    assert set(rec["metric"]) == {"recall@1", "recall@5", "recall@10"}
    assert (rec["value"] == 1.0).all()
    i2t = t[(t["direction"] == "image_to_text")].iloc[0]
    assert i2t["n_queries"] == 12 and i2t["n_candidates"] == 60
    assert i2t["n_images"] == 12 and i2t["n_captions"] == 60
    ranks = res.extra_tables["ranks"]
    assert len(ranks) == 12 + 60 and (ranks["rank"] == 1).all() and ranks["top1_positive"].all()
    assert set(res.figures) == {"recall_at_k"}
    # one image request and one caption request, each read once; images deduplicated
    assert sorted((c.modality, c.sites) for c in src.calls) == [
        ("image", ("vision.proj",)), ("text", ("text.proj",))]


def _sign_vectors(rng, n, dim=4):
    """Vectors in {-1, +1}^dim: unit-normalised they are exactly +-0.5, so every cosine is an
    exact multiple of 1/4 and ties are exact, whatever the summation order."""
    return rng.choice([-1.0, 1.0], size=(n, dim))


def _brute_rank(scores_row, positive_row):
    """Rank (1-based) of the best-ranked positive after a stable sort by descending score."""
    order = sorted(range(len(scores_row)), key=lambda c: (-scores_row[c], c))
    return next(i for i, c in enumerate(order, start=1) if positive_row[c])


def test_ranks_match_brute_force_with_ties_duplicates_and_five_positives():
    rng = np.random.default_rng(0)
    n_img = 10
    img_vec = _sign_vectors(rng, n_img)
    img_vec[7] = img_vec[2]  # two images with the same embedding (text->image ties)
    captions = [[f"image {j} caption {k}" for k in range(5)] for j in range(n_img)]
    captions[4][1] = captions[3][0] = "a dog runs on the grass"  # a duplicate across images
    flat = [c for caps in captions for c in caps]
    cap_vec = {c: v for c, v in zip(flat, _sign_vectors(rng, len(flat)))}
    split = caption_split("test", captions)
    index = {f"img{j}": j for j in range(n_img)}
    src = PlantedDualSource(
        {"test": split},
        image_fn=lambda s: img_vec[[index[i] for i in s.descriptors["image_id"]]],
        text_fn=lambda s: np.stack([cap_vec[t] for t in s.texts]))
    res = Retrieval(["m"], "toy", {"ks": [1, 2, 5, 10]}).run(src)
    ranks = res.extra_tables["ranks"]

    unit_img = img_vec / 2.0
    unit_txt = np.stack([cap_vec[t] for t in flat]) / 2.0
    sim = unit_img @ unit_txt.T
    owner = np.repeat(np.arange(n_img), 5)
    positives = owner[None, :] == np.arange(n_img)[:, None]
    assert len(np.unique(sim)) < sim.size / 4  # plenty of exact ties
    i2t = [_brute_rank(sim[q], positives[q]) for q in range(n_img)]
    t2i = [_brute_rank(sim[:, q], positives[:, q]) for q in range(len(flat))]
    got = ranks.set_index(["direction", "query_id"])["rank"]
    assert [got["image_to_text", f"img{j}"] for j in range(n_img)] == i2t
    assert [got["text_to_image", i] for i in split.ids] == t2i
    t = res.table.set_index(["direction", "metric"])["value"]
    for k in (1, 2, 5, 10):
        assert t["image_to_text", f"recall@{k}"] == pytest.approx(np.mean(np.array(i2t) <= k))
        assert t["text_to_image", f"recall@{k}"] == pytest.approx(np.mean(np.array(t2i) <= k))
    assert t["text_to_image", "median_rank"] == pytest.approx(np.median(t2i))
    assert any("1 distinct texts" in n and "a dog runs" in n for n in res.notes)
    # the top-1 candidate is the first maximum, consistent with rank 1
    top = ranks[ranks["direction"] == "text_to_image"]
    assert ((top["rank"] == 1) == top["top1_positive"]).all()


def test_chance_recall_is_hypergeometric():
    assert chance_recall(np.array([5, 5]), 50, 1) == pytest.approx(5 / 50)
    assert chance_recall(np.array([1]), 10, 3) == pytest.approx(3 / 10)
    expected = 1 - comb(45, 10) / comb(50, 10)
    assert chance_recall(np.array([5]), 50, 10) == pytest.approx(expected)
    assert chance_recall(np.array([5]), 8, 5) == 1.0  # M - p < K: always a hit
    # Monte-Carlo cross-check of the formula
    rng = np.random.default_rng(0)
    hits = [bool(set(rng.permutation(20)[:4]) & {0, 1, 2}) for _ in range(20000)]
    assert chance_recall(np.array([3]), 20, 4) == pytest.approx(np.mean(hits), abs=0.01)


def test_items_without_image_id_are_their_own_images():
    captions = [[f"c{j}"] for j in range(4)]
    split = caption_split("test", captions)
    split.descriptors = {}
    vec = np.eye(4)
    src = PlantedDualSource({"test": split}, image_fn=lambda s: vec, text_fn=lambda s: vec)
    res = Retrieval(["m"], "toy").run(src)
    assert (res.table.query("metric == 'recall@1'")["value"] == 1.0).all()
    assert res.table["n_images"].iloc[0] == 4


def test_dataset_without_captions_is_a_clear_error():
    split = labelled_split("test", [0, 1, 0, 1], ["a", "b"])
    src = PlantedDualSource({"test": split}, image_fn=lambda s: np.eye(4),
                            text_fn=lambda s: np.eye(4))
    a = Retrieval(["m"], "toy")
    with pytest.raises(AnalysisError, match=r"dataset 'toy' \(image\) has no captions"):
        a.requests(src)
    with pytest.raises(AnalysisError, match="flickr8k"):
        a.run(src)


def test_model_without_a_tower_and_other_bad_input():
    src, _ = planted_pairs(n_images=3, per_image=2)
    src.modalities["bert"] = ("text",)
    with pytest.raises(AnalysisError, match=r"model 'bert' \(text\) has no image tower"):
        Retrieval(["bert"], "toy").run(src)
    with pytest.raises(AnalysisError, match="no split 'val'"):
        Retrieval(["m"], "toy", {"split": "val"}).run(src)
    for ks in ([0, 5], [], ["1"], [True]):
        with pytest.raises(ConfigError, match="ks must be positive integers"):
            Retrieval(["m"], "toy", {"ks": ks})
    one = caption_split("test", [["a", "b"]])
    src1 = PlantedDualSource({"test": one}, image_fn=lambda s: np.ones((2, 3)),
                             text_fn=lambda s: np.eye(2, 3))
    with pytest.raises(AnalysisError, match="1 distinct image"):
        Retrieval(["m"], "toy").run(src1)
    zero = PlantedDualSource({"test": caption_split("test", [["a"], ["b"]])},
                             image_fn=lambda s: np.zeros((2, 3)), text_fn=lambda s: np.eye(2, 3))
    with pytest.raises(AnalysisError, match="all zeros"):
        Retrieval(["m"], "toy").run(zero)


def test_two_models_each_get_rows_and_ranks():
    src, _ = planted_pairs(n_images=5, per_image=2)
    res = Retrieval(["a", "b"], "toy", {"ks": 1}).run(src)
    assert set(res.table["model"]) == {"a", "b"}
    assert set(itertools.chain(res.extra_tables["ranks"]["model"])) == {"a", "b"}

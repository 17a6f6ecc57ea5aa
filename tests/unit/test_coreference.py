"""F4 visual coreference and F5 coreference probers on a model with a planted coreference
head (tests/unit/coref_fakes.py), the link -> token machinery, and bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from coref_fakes import PLANTED_BLOCK, PLANTED_HEAD, planted_source

from vlprobe.analyses import ANALYSES
from vlprobe.analyses.fusion.coref_links import box_regions, link_attention, phrase_tokens
from vlprobe.errors import DataError

PLANTED = f"L{PLANTED_BLOCK + 1}.h{PLANTED_HEAD}"
F5_FAST = {"max_items": None, "n_folds": 3, "Cs": [1.0], "bilinear_dim": 4, "min_links": 5}


def _f4(direction):
    src = planted_source(direction)
    return ANALYSES.get("F4")(["m"], "coref", {"min_links": 5}, seed=0).run(src)


def test_f4_ranks_the_planted_v2t_head_first():
    res = _f4("v2t")
    best = res.extra_tables["best_heads"].set_index("link_type")
    for link_type in ("all", "animal", "person", "vehicle"):
        row = best.loc[link_type]
        assert row["v2t_head"] == PLANTED
        assert row["v2t"] > 0.25  # 0.9 spread over a phrase of two or three tokens
        assert row["v2t"] > 3 * row["v2t_rand_at_best"]  # ablation: a random phrase
        assert row["v2t_win"] == 1.0 and row["v2t_minus_rand"] > 10 * row["v2t_minus_rand_se"]
    # the planted head is a v->t head only: its t->v value is no higher than other heads'
    t = res.table
    t2v = t[(t["metric"] == "t2v") & (t["link_type"] == "all")]
    planted = t2v[(t2v["layer"] == PLANTED_BLOCK + 1) & (t2v["head"] == PLANTED_HEAD)]
    assert float(planted["value"].iloc[0]) < 2 * t2v["value"].median()


def test_f4_direction_swap_changes_the_answer():
    v2t = _f4("v2t").extra_tables["best_heads"].set_index("link_type").loc["all"]
    t2v = _f4("t2v").extra_tables["best_heads"].set_index("link_type").loc["all"]
    assert t2v["t2v_head"] == PLANTED and t2v["t2v"] > 0.8  # 0.9 on the one linked cell
    assert t2v["t2v"] > 3 * t2v["t2v_rand_at_best"]  # ablation: a random region
    assert v2t["t2v"] < 0.6 and t2v["v2t"] < 0.4  # the other direction has no planted head
    assert v2t["v2t_head"] == PLANTED


def test_f4_asks_raw_attention_of_the_text_image_sites_once():
    src = planted_source()
    ANALYSES.get("F4")(["m"], "coref", {}, seed=0).run(src)
    assert len(src.calls) == 1
    assert src.calls[0].attention == ("raw",)
    assert src.calls[0].sites == ("fusion.blocks.0.attn", "fusion.blocks.1.attn")
    assert src.adapters["m"].n_forward == 1


def test_f5_ranks_the_planted_head_first_and_beats_the_mismatched_baseline():
    src = planted_source()
    res = ANALYSES.get("F5")(["m"], "coref", F5_FAST, seed=0).run(src)
    top = res.extra_tables["head_weights"].iloc[0]
    assert (top["direction"], top["layer"], top["head"]) == ("v2t", PLANTED_BLOCK + 1,
                                                            PLANTED_HEAD)
    t = res.table.set_index(["task", "input", "condition"])
    matched = float(t.loc[("VCD", "attention", "matched"), "value"])
    mismatched = float(t.loc[("VCD", "attention", "mismatched"), "value"])
    assert matched > 0.9 and mismatched < 0.75
    assert float(t.loc[("VCD", "chance", "matched"), "value"]) == 0.5


def test_f5_t2v_plant_is_ranked_as_t2v():
    res = ANALYSES.get("F5")(["m"], "coref", F5_FAST, seed=0).run(planted_source("t2v"))
    top = res.extra_tables["head_weights"].iloc[0]
    assert (top["direction"], top["layer"], top["head"]) == ("t2v", PLANTED_BLOCK + 1,
                                                            PLANTED_HEAD)


def test_phrase_not_in_caption_is_an_error_naming_the_item():
    src = planted_source()
    src.stim = copy.deepcopy(src.stim)
    src.stim.descriptors["links"][3][0]["phrase"] = "a zebra"
    with pytest.raises(DataError, match=r"item 'test/1/1' link 0 \('a zebra'\).*not in the "
                                        r"caption"):
        ANALYSES.get("F4")(["m"], "coref", {}, seed=0).run(src)


def test_box_outside_the_image_is_an_error_naming_the_item():
    src = planted_source()
    src.stim = copy.deepcopy(src.stim)
    src.stim.descriptors["links"][0][1]["boxes"] = [[0.5, 0.5, 1.3, 0.9]]
    with pytest.raises(DataError, match=r"item 'test/0/0' link 1 .*outside the image"):
        ANALYSES.get("F5")(["m"], "coref", F5_FAST, seed=0).run(src)


def test_a_model_without_text_image_attention_is_refused():
    from vlprobe.errors import ConfigError

    src = planted_source()
    src.attention_sites = lambda model, modality: ["text.blocks.0.attn"]
    with pytest.raises(ConfigError, match="no text<->image attention site"):
        ANALYSES.get("F4")(["m"], "coref", {}, seed=0).requests(src)


def test_box_to_grid_cells_by_coverage():
    cells = np.array([[c / 2, r / 2, (c + 1) / 2, (r + 1) / 2] for r in range(2) for c in range(2)])
    # covers all of cell 0 and 60 % of cell 1: both (> 50 %)
    assert box_regions([[0.0, 0.0, 0.8, 0.5]], cells).tolist() == [0, 1]
    # covers 40 % of cell 1 at most: the cell with the largest overlap only
    assert box_regions([[0.6, 0.1, 0.8, 0.4]], cells).tolist() == [1]
    # two boxes: the union of their cells
    assert box_regions([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], cells).tolist() == [0, 3]
    # a box no cell overlaps (cut away by the crop): no region (the link is dropped), not
    # cell 0 by default
    assert box_regions([[1.1, 0.0, 1.4, 0.5]], cells).tolist() == []


def test_link_attention_directions_and_multi_cell_regions():
    # tags: special, text x2, special, image x2; queries = keys = all six tokens
    tags = np.array([0, 1, 1, 0, 2, 2])
    a = np.zeros((1, 6, 6))
    a[0, 4, 1], a[0, 5, 1] = 0.6, 0.2  # image 0 / image 1 -> text 0
    a[0, 2, 4], a[0, 2, 5] = 0.3, 0.4  # text 1 -> image 0 / 1
    region, phrase = np.array([0, 1]), np.array([0, 1])
    # v2t: mean over the region's cells, max over the phrase's tokens
    assert link_attention(a, tags, tags, "v2t", phrase, region)[0] == pytest.approx(0.4)
    # t2v: sum over the region's cells, max over the phrase's tokens
    assert link_attention(a, tags, tags, "t2v", phrase, region)[0] == pytest.approx(0.7)


def test_phrase_tokens_by_character_overlap():
    off = np.array([[0, 1], [2, 5], [6, 11], [12, 18]])  # "a big brown dog..."
    assert phrase_tokens(off, 2, 11).tolist() == [1, 2]
    assert phrase_tokens(off, 30, 35).tolist() == []


def test_bilinear_features_are_the_affine_outer_product():
    from vlprobe.analyses.fusion.coref_fit import bilinear_features

    u, v = np.array([[2.0, 3.0]]), np.array([[5.0]])
    # [2, 3, 1] x [5, 1] -> 10 2 15 3 5 1: the product terms, u alone, v alone, the constant
    assert bilinear_features(u, v).tolist() == [[10.0, 2.0, 15.0, 3.0, 5.0, 1.0]]

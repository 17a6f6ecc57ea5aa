"""F6 caption grounding: words, box cells, pointing game / IoU, planted captioners, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from attention_fakes import PlantedCaptioner, PlantedViT, cls_attention, image_stimuli, source_with

from vlprobe.analyses.fusion.attention_math import (
    box_cells,
    check_box,
    grid_boxes,
    pointing_hit,
    threshold_iou,
)
from vlprobe.analyses.fusion.coco_words import caption_words, category_lexicon, find_mentions
from vlprobe.analyses.fusion.grounding import CaptionGrounding
from vlprobe.errors import AnalysisError, ConfigError, DataError

CATS = ["person", "dog", "hot dog", "teddy bear", "couch", "knife"]


def test_lexicon_has_names_synonyms_and_plurals():
    lex = category_lexicon(CATS)
    assert lex["dogs"] == "dog" and lex["puppies"] == "dog"
    assert lex["men"] == lex["women"] == lex["people"] == "person"
    assert lex["hot dogs"] == "hot dog" and lex["sofas"] == "couch"
    assert lex["knives"] == "knife"
    assert category_lexicon(CATS, {"dog": ["pooch"]})["pooches"] == "dog"
    with pytest.raises(ConfigError, match="unknown categories"):
        category_lexicon(CATS, {"unicorn": ["horse"]})


def test_words_from_bpe_and_word_level_tokens():
    bpe = ["A", "Ġman", "Ġeats", "Ġa", "Ġhot", "Ġdog", "Ġon", "Ġthe", "Ġso", "fa", ".",
           "<|endoftext|>"]
    words = caption_words(bpe)
    assert [w for w, _ in words] == ["a", "man", "eats", "a", "hot", "dog", "on", "the", "sofa"]
    assert dict(words)["sofa"] == 8  # the first piece's token index
    lex = category_lexicon(CATS)
    assert find_mentions(words, lex) == [("man", "person", 1), ("hot dog", "hot dog", 4),
                                         ("sofa", "couch", 8)]
    flat = ["two", "dogs", "play", "<eos>"]  # a word-level vocabulary
    assert find_mentions(caption_words(flat), lex) == [("dogs", "dog", 1)]


def test_box_cells_and_scores():
    cells = grid_boxes(4, (0, 0, 40, 40), 40, 40)  # 4 x 4 cells of 10 px
    box = check_box([0, 0, 20, 10], 40, 40, "x")  # the top-left two cells
    mask = box_cells(cells, box)
    assert np.flatnonzero(mask).tolist() == [0, 1]
    tiny = check_box([32, 32, 2, 2], 40, 40, "x")  # smaller than a cell: its centre cell
    assert np.flatnonzero(box_cells(cells, tiny)).tolist() == [15]
    peak_in, peak_out = np.zeros(16), np.zeros(16)
    peak_in[1], peak_out[10] = 1.0, 1.0
    assert pointing_hit(peak_in, mask) == 1.0 and pointing_hit(peak_out, mask) == 0.0
    assert threshold_iou(peak_in, mask, 0.5) == 0.5  # {1} vs {0, 1}
    assert threshold_iou(peak_out, mask, 0.5) == 0.0
    assert threshold_iou(np.ones(16), mask, 0.5) == pytest.approx(2 / 16)


def test_a_box_outside_the_image_is_a_data_error():
    with pytest.raises(DataError, match="outside"):
        check_box([30, 30, 20, 20], 40, 40, "item x")
    with pytest.raises(DataError, match="no area"):
        check_box([3, 3, 0, 5], 40, 40, "item x")
    stim = image_stimuli(1, size=(32, 32), boxes=[[[40, 0, 10, 10, "dog"]]], split="validation")
    model = PlantedCaptioner(["a", "dog"], word_index=1, cell=0)
    with pytest.raises(DataError, match=r"validation/0.*outside"):
        CaptionGrounding(["m"], "toy", {}).run(source_with({"m": model}, stim))


@pytest.mark.parametrize("class_token", [False, True])
def test_planted_cross_attention_inside_and_outside_the_box(class_token):
    # 32 x 32 image, 4 x 4 grid of 8 px: the dog is in the top-left 16 x 16 (cells 0,1,4,5)
    boxes = [[[0, 0, 16, 16, "dog"], [20, 20, 8, 8, "person"]]] * 2
    stim = image_stimuli(2, size=(32, 32), boxes=boxes, split="validation")
    for cell, hit in ((5, 1.0), (15, 0.0)):
        model = PlantedCaptioner(["a", "dog", "runs", "<eos>"], word_index=1, cell=cell,
                                 class_token=class_token)
        result = CaptionGrounding(["m"], "toy", {"n_random": 50}).run(
            source_with({"m": model}, stim))
        t = result.table
        point = t[t.metric == "pointing_accuracy"]
        assert len(point) == 2 * 3  # 2 layers x (2 heads + mean)
        assert (point["value"] == hit).all()
        iou = t[t.metric == "iou"]["value"]
        assert np.allclose(iou, 0.25 if hit else 0.0)  # one "on" cell vs 4 box cells
        n = t.set_index("metric")["value"]
        assert n["n_mentions"] == 2 and n["mentions_without_box"] == 0
        assert np.allclose(point["baseline_uniform"], 4 / 16)
        assert 0.1 < point["baseline_random"].iloc[0] < 0.4  # ~ 4/16


def test_a_word_without_a_box_is_counted_not_scored():
    # image 0 has no dog (the caption's "dog" is counted), image 1 has one (scored)
    stim = image_stimuli(2, size=(32, 32), boxes=[[[0, 0, 16, 16, "person"]],
                                                  [[0, 0, 16, 16, "dog"]]], split="validation")
    model = PlantedCaptioner(["a", "dog"], word_index=1, cell=0)
    result = CaptionGrounding(["m"], "toy", {}).run(source_with({"m": model}, stim))
    n = result.table.set_index("metric")["value"]
    assert n["n_mentions"] == 1 and n["mentions_without_box"] == 1
    assert result.extra_tables["mentions"]["item"].tolist() == ["validation/1"]


def test_bad_input():
    stim = image_stimuli(1, size=(32, 32), boxes=[[[0, 0, 16, 16, "dog"]]], split="validation")
    vit = PlantedViT(cls_attention(2, 1, 1, 0))  # no cross-attention site
    with pytest.raises(AnalysisError, match=r"no cross\.blocks"):
        CaptionGrounding(["m"], "toy", {}).run(source_with({"m": vit}, stim))
    no_boxes = image_stimuli(1, size=(32, 32), split="validation")
    model = PlantedCaptioner(["a", "dog"], word_index=1, cell=0)
    with pytest.raises(DataError, match="'boxes' descriptor"):
        CaptionGrounding(["m"], "toy", {}).run(source_with({"m": model}, no_boxes))
    with pytest.raises(ConfigError, match="iou_threshold"):
        CaptionGrounding(["m"], "toy", {"iou_threshold": 0})

"""Silver coreference links (vlprobe.data.silver_links): hand-made captions, the loader on the
reference kit, and the hand-checked precision sample (docs/silver_links_check.tsv)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from vlprobe.data.silver_links import (
    Phrase,
    caption_links,
    check_box,
    name_category,
    noun_phrases,
)
from vlprobe.errors import DataError

CHECK_TSV = Path(__file__).resolve().parents[2] / "docs" / "silver_links_check.tsv"


@pytest.fixture(scope="module")
def nlp():
    pytest.importorskip("spacy", reason="silver links need spaCy (pip install 'vlprobe[coref]')")
    from vlprobe.data.silver_links import spacy_pipeline
    from vlprobe.errors import ConfigError

    try:
        return spacy_pipeline()
    except ConfigError as exc:
        pytest.skip(str(exc))


def _links(nlp, caption, instances):
    return caption_links(caption, noun_phrases([caption], nlp)[0], instances)


DOG_A = {"category": "dog", "box": (0.1, 0.1, 0.4, 0.5)}
DOG_B = {"category": "dog", "box": (0.5, 0.5, 0.7, 0.7)}
LIGHT = {"category": "traffic light", "box": (0.8, 0.0, 0.9, 0.3)}
PHONE = {"category": "cell phone", "box": (0.2, 0.2, 0.4, 0.4)}


def test_plural_phrase_links_every_instance(nlp):
    (link,) = _links(nlp, "Two dogs play in the park.", [DOG_A, DOG_B])
    assert (link.phrase, link.category, link.type) == ("Two dogs", "dog", "animal")
    assert len(link.boxes) == 2


def test_singular_phrase_links_the_largest_instance(nlp):
    (link,) = _links(nlp, "A dog plays in the park.", [DOG_B, DOG_A])
    assert link.boxes == (DOG_A["box"],)


def test_synonym_and_multi_word_category(nlp):
    links = _links(nlp, "A puppy sits under two traffic lights with a cellphone.",
                   [DOG_A, LIGHT, PHONE])
    got = {(lk.phrase, lk.category, lk.word) for lk in links}
    assert got == {("A puppy", "dog", "puppy"), ("two traffic lights", "traffic light",
                                                 "traffic lights"),
                   ("a cellphone", "cell phone", "cellphone")}
    cap = "A puppy sits under two traffic lights with a cellphone."
    assert all(cap[lk.start:lk.end] == lk.phrase for lk in links)


def test_category_absent_from_the_caption_or_the_image(nlp):
    # the image has a dog, the caption names none; the caption names a cat the image lacks
    assert _links(nlp, "A cat sleeps on the sofa.", [DOG_A]) == []


def test_the_head_must_name_the_category(nlp):
    # "a dog bed" is a bed: no dog link, and no bed instance either
    assert _links(nlp, "The cat lies on a dog bed.", [DOG_A]) == []


def test_name_category_prefers_the_longest_match():
    phrase = Phrase(0, 18, ("a", "baseball", "bat"), head=2, plural=False)
    assert name_category(phrase) == ("baseball bat", "baseball bat")


def test_box_outside_the_image_is_refused():
    with pytest.raises(DataError, match=r"item x: box .* outside the image"):
        check_box((0.2, 0.2, 1.2, 0.5), "item x")
    with pytest.raises(DataError, match="empty or inverted"):
        check_box((0.5, 0.2, 0.4, 0.5), "item y")


def test_coco_coref_loader_on_the_reference_kit(nlp, reference_dir):
    from vlprobe.data import DatasetSpec, load_dataset

    spec = DatasetSpec(name="coref", loader="coco_coref",
                       path=str(reference_dir / "captions" / "coco_mini"),
                       options={"splits": ["val"]})
    stim = load_dataset(spec)["validation"]
    assert len(stim) > 100 and "pair" in stim.modalities
    for i in range(len(stim)):
        for link in stim.descriptors["links"][i]:
            assert stim.texts[i][link["start"]:link["end"]] == link["phrase"]
    assert stim.source["n_links"] >= len(stim)


def test_hand_checked_sample_matches_the_current_links(nlp, reference_dir):
    """Every hand-checked link of docs/silver_links_check.tsv is still produced, so the
    measured precision describes the current method."""
    from vlprobe.data.silver_links import coco_split_links

    root = reference_dir / "captions" / "coco_mini"
    current = set()
    for split in ("train", "val"):
        for rec in coco_split_links(root, split, nlp):
            current |= {(rec["id"], f"{lk['start']}-{lk['end']}", lk["category"])
                        for lk in rec["links"]}
    with open(CHECK_TSV, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(rows) >= 50
    missing = [r["n"] for r in rows if (r["item"], r["chars"], r["category"]) not in current]
    assert not missing, f"hand-checked links no longer produced: {missing}"
    assert {r["judgement"] for r in rows} <= {"correct", "partial", "wrong"}

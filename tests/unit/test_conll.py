"""CoNLL-2000 reader: IOB -> chunk spans, character offsets, items per span / sentence."""

from __future__ import annotations

import pytest

from vlprobe.data import DATASETS, DatasetSpec, load_dataset
from vlprobe.data.conll import iob_to_spans, read_conll, word_char_offsets
from vlprobe.errors import DataError

# B- after I- of the same type (two NPs), single-word chunks, O tokens, I- at sentence end
FIXTURE_TRAIN = """\
the DT B-NP
big JJ I-NP
dog NN I-NP
the DT B-NP
cat NN I-NP
runs VBZ B-VP
today NN B-NP
. . O

a DT B-NP
man NN I-NP
sits VBZ B-VP
in IN B-PP
the DT B-NP
house NN I-NP
"""

FIXTURE_TEST = """\
it PRP B-NP
is VBZ B-VP
very RB B-ADJP
small JJ I-ADJP
, , O
and CC O
red JJ B-ADJP
. . O
"""


def write_fixture(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_text(FIXTURE_TRAIN)
    (root / "test.txt").write_text(FIXTURE_TEST)
    return root


def test_iob_to_spans_rules():
    tags = ["B-NP", "I-NP", "I-NP", "B-NP", "I-NP", "B-VP", "B-NP", "O"]
    assert iob_to_spans(tags) == [("NP", 0, 3), ("NP", 3, 5), ("VP", 5, 6), ("NP", 6, 7)]
    # an I- of another type (or after O) opens a new chunk; a chunk may end the sentence
    assert iob_to_spans(["O", "I-NP", "I-VP", "I-VP"]) == [("NP", 1, 2), ("VP", 2, 4)]
    assert iob_to_spans(["O", "O"]) == []
    with pytest.raises(ValueError, match="bad IOB"):
        iob_to_spans(["X-NP"])


def test_word_char_offsets():
    words = ["a", "big", "dog", "."]
    text = " ".join(words)
    offs = word_char_offsets(words)
    assert [text[a:b] for a, b in offs] == words


def test_span_items_point_at_the_chunk_words(tmp_path):
    root = write_fixture(tmp_path / "conll")
    splits = load_dataset(DatasetSpec(loader="conll2000", name="c", path=str(root)))
    assert set(splits) == {"train", "test"}
    train = splits["train"]
    assert train.label_names == ["ADJP", "NP", "PP", "VP"]  # sorted over all splits
    assert splits["test"].label_names == train.label_names
    got = [(train.label_names[y], w) for y, w in zip(train.labels, train.descriptors["words"],
                                                      strict=True)]
    assert got == [
        ("NP", ["the", "big", "dog"]), ("NP", ["the", "cat"]), ("VP", ["runs"]),
        ("NP", ["today"]), ("NP", ["a", "man"]), ("VP", ["sits"]), ("PP", ["in"]),
        ("NP", ["the", "house"]),
    ]
    assert train.ids[:2] == ["train/1:0-3", "train/1:3-5"]
    assert train.descriptors["sentence_id"] == [1, 1, 1, 1, 2, 2, 2, 2]
    for text, (a, b), words in zip(train.texts, train.descriptors["span_chars"],
                                   train.descriptors["words"], strict=True):
        assert text[a:b] == " ".join(words)
    assert train.texts[0] == "the big dog the cat runs today ."
    test = splits["test"]
    assert [" ".join(w) for w in test.descriptors["words"]] == ["it", "is", "very small", "red"]


def test_per_sentence_and_max_sentences(tmp_path):
    root = write_fixture(tmp_path / "conll")
    spec = DatasetSpec(loader="conll", name="c", path=str(root / "train.txt"),
                       options={"per": "sentence"})
    (train,) = load_dataset(spec).values()
    assert train.split == "train" and len(train) == 2 and train.labels is None
    assert train.texts[1] == "a man sits in the house"
    assert train.descriptors["chunks"][1] == [("NP", 0, 2), ("VP", 2, 3), ("PP", 3, 4),
                                              ("NP", 4, 6)]
    spec = DatasetSpec(loader="conll2000", name="c", path=str(root),
                       options={"max_sentences": 1})
    assert len(load_dataset(spec)["train"]) == 4
    sents, skipped = read_conll(root / "train.txt", max_sentences=1)
    assert len(sents) == 1 and not skipped


def test_malformed_lines(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("a DT B-NP\nman NN\n\nthe DT B-NP\ncat NN I-NP\n\nx NN Q-NP\n")
    with pytest.raises(DataError, match=r"train\.txt:2"):
        read_conll(path)
    sents, skipped = read_conll(path, on_error="skip")
    assert [s.words for s in sents] == [["the", "cat"]]
    assert len(skipped) == 2
    with pytest.raises(DataError, match="per"):
        load_dataset(DatasetSpec(loader="conll2000", path=str(path), options={"per": "x"}))


def test_registered():
    assert "conll2000" in DATASETS.names()

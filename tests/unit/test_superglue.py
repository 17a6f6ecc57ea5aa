"""SuperGLUE BoolQ / WiC readers on fixtures written in the official JSONL format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlprobe.data import DATASETS, DatasetSpec, load_dataset
from vlprobe.data.superglue import BOOLQ_TEMPLATE, LABEL_NAMES, load_boolq, load_wic
from vlprobe.errors import DataError

BOOLQ_TRAIN = [
    {"question": "do iran and afghanistan speak the same language",
     "passage": "Persian language -- Persian is spoken in Iran and Afghanistan.",
     "idx": 0, "label": True},
    {"question": "is the sky green", "passage": "The sky is blue.", "idx": 1, "label": False},
    {"question": "is water wet", "passage": "Water is wet.", "idx": 2, "label": True},
]
BOOLQ_VAL = [
    {"question": "is grass green", "passage": "Grass is green.", "idx": 0, "label": True},
    {"question": "is fire cold", "passage": "Fire is hot.", "idx": 1, "label": False},
]
BOOLQ_TEST = [{"question": "is ice cold", "passage": "Ice is cold.", "idx": 0}]

WIC_TRAIN = [
    {"word": "carry", "sentence1": "You must carry your camping gear .",
     "sentence2": "Sound carries well over water .", "idx": 0, "label": False,
     "start1": 9, "end1": 14, "start2": 6, "end2": 13, "version": 1.1},
    {"word": "go", "sentence1": "Do you want to go ?", "sentence2": "We go home .",
     "idx": 1, "label": True, "start1": 15, "end1": 17, "start2": 3, "end2": 5,
     "version": 1.1},
]


def write_jsonl(path, records, extra_lines=()):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def boolq_dir(root, test=True):
    write_jsonl(root / "train.jsonl", BOOLQ_TRAIN)
    write_jsonl(root / "val.jsonl", BOOLQ_VAL)
    if test:
        write_jsonl(root / "test.jsonl", BOOLQ_TEST)
    return root


def wic_dir(root):
    write_jsonl(root / "train.jsonl", WIC_TRAIN)
    write_jsonl(root / "val.jsonl", [*WIC_TRAIN[:1], {**WIC_TRAIN[1], "label": True}])
    return root


def test_registered():
    assert DATASETS.get("boolq") is load_boolq
    assert DATASETS.get("wic") is load_wic


def test_boolq_official_format(tmp_path):
    splits = load_dataset(DatasetSpec("boolq", name="bq", path=str(boolq_dir(tmp_path / "b"))))
    assert list(splits) == ["train", "validation"]  # test.jsonl (no labels) skipped by default
    tr = splits["train"]
    assert tr.dataset == "bq" and tr.label_names == LABEL_NAMES == ["False", "True"]
    assert tr.labels.tolist() == [1, 0, 1] and tr.labels.dtype == np.int64
    assert tr.ids == ["train/0", "train/1", "train/2"]
    assert tr.descriptors["idx"] == [0, 1, 2]
    assert tr.texts[1] == "is the sky green? The sky is blue." == BOOLQ_TEMPLATE.format(
        **BOOLQ_TRAIN[1])
    assert splits["validation"].ids == ["validation/0", "validation/1"]
    assert splits["validation"].labels.tolist() == [1, 0]
    assert tr.source["loader"] == "boolq" and tr.source["path"].endswith("train.jsonl")


def test_boolq_template_option_and_unlabelled_test(tmp_path):
    root = boolq_dir(tmp_path / "b")
    spec = DatasetSpec("boolq", path=str(root),
                       options={"template": "{question} [SEP] {passage}", "include_test": True})
    splits = load_boolq(spec)
    assert list(splits) == ["train", "validation", "test"]
    assert splits["train"].texts[2] == "is water wet [SEP] Water is wet."
    test = splits["test"]
    assert test.labels is None and test.label_names is None and test.ids == ["test/0"]
    for bad in ("{question} {answer}", "{0} {passage}", "{passage!r}", "no fields", "{idx}"):
        with pytest.raises(DataError, match="template"):
            load_boolq(DatasetSpec("boolq", path=str(root), options={"template": bad}))
    with pytest.raises(DataError, match="unknown option"):
        load_boolq(DatasetSpec("boolq", path=str(root), options={"templte": "{question}"}))


def test_wic_official_format_and_spans(tmp_path):
    splits = load_wic(DatasetSpec("wic", path=str(wic_dir(tmp_path / "w"))))
    tr = splits["train"]
    assert tr.labels.tolist() == [0, 1] and tr.label_names == ["False", "True"]
    assert tr.texts[0] == ("carry: You must carry your camping gear . / "
                           "Sound carries well over water .")
    d = tr.descriptors
    assert d["idx"] == [0, 1] and d["word"] == ["carry", "go"]
    assert (d["start1"], d["end1"], d["start2"], d["end2"]) == ([9, 15], [14, 17], [6, 3],
                                                                [13, 5])
    assert d["version"] == [1.1, 1.1]
    # the target spans located in the rendered item text
    for i, record in enumerate(WIC_TRAIN):
        (s1, e1), (s2, e2) = d["target_spans"][i]
        assert tr.texts[i][s1:e1] == record["sentence1"][record["start1"]:record["end1"]]
        assert tr.texts[i][s2:e2] == record["sentence2"][record["start2"]:record["end2"]]
    assert tr.texts[0][9 + 7:14 + 7] == "carry"
    # a template that repeats a sentence: that span is ambiguous -> None
    twice = load_wic(DatasetSpec("wic", path=str(tmp_path / "w"),
                                 options={"template": "{sentence1} {sentence1} | {sentence2}"}))
    assert twice["train"].descriptors["target_spans"][0][0] is None
    assert twice["train"].descriptors["target_spans"][0][1] is not None


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"passage": "p", "idx": 9, "label": True}), "'question'"),
        (json.dumps({"question": "q", "passage": "p", "idx": 9, "label": "yes"}), "'label'"),
        (json.dumps({"question": "q", "passage": "p", "idx": "9", "label": True}), "'idx'"),
        (json.dumps({"question": "q", "passage": "p", "idx": 1, "label": True}), "repeats"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, problem):
    root = boolq_dir(tmp_path / "b")
    write_jsonl(root / "train.jsonl", BOOLQ_TRAIN, extra_lines=["", line])  # blank = line 4
    spec = DatasetSpec("boolq", path=str(root))
    with pytest.raises(DataError, match=rf"train\.jsonl:5: .*{problem}"):
        load_boolq(spec)
    # on_error: skip drops it and records where
    skipped = load_boolq(DatasetSpec("boolq", path=str(root), on_error="skip"))
    assert len(skipped["train"]) == 3
    assert skipped["train"].source["skipped"][0].endswith("train.jsonl:5")
    assert skipped["validation"].source["skipped"] == []


def test_wic_bad_span_and_unlabelled_train(tmp_path):
    root = wic_dir(tmp_path / "w")
    write_jsonl(root / "val.jsonl", [WIC_TRAIN[0], {**WIC_TRAIN[1], "end2": 99}])
    with pytest.raises(DataError, match=r"val\.jsonl:2: span start2=3, end2=99"):
        load_wic(DatasetSpec("wic", path=str(root)))
    write_jsonl(root / "val.jsonl", [{k: v for k, v in r.items() if k != "label"}
                                     for r in WIC_TRAIN])
    with pytest.raises(DataError, match="validation split has no labels"):
        load_wic(DatasetSpec("wic", path=str(root)))
    write_jsonl(root / "val.jsonl", [WIC_TRAIN[0], {k: v for k, v in WIC_TRAIN[1].items()
                                                    if k != "label"}])
    with pytest.raises(DataError, match="1 of 2 lines have a 'label'"):
        load_wic(DatasetSpec("wic", path=str(root)))


def test_missing_files(tmp_path):
    root = tmp_path / "b"
    write_jsonl(root / "train.jsonl", BOOLQ_TRAIN)
    with pytest.raises(DataError, match=r"val\.jsonl' does not exist \(the validation split\)"):
        load_boolq(DatasetSpec("boolq", path=str(root)))
    with pytest.raises(DataError, match=r"test\.jsonl' does not exist"):
        write_jsonl(root / "val.jsonl", BOOLQ_VAL)
        load_boolq(DatasetSpec("boolq", path=str(root), options={"include_test": True}))
    with pytest.raises(DataError, match="does not exist"):
        load_boolq(DatasetSpec("boolq", path=str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match="task directory"):
        load_boolq(DatasetSpec("boolq", path=str(root / "train.jsonl")))
    (root / "empty").mkdir()
    (root / "empty" / "train.jsonl").write_text("\n")
    write_jsonl(root / "empty" / "val.jsonl", BOOLQ_VAL)
    with pytest.raises(DataError, match="empty"):
        load_boolq(DatasetSpec("boolq", path=str(root / "empty")))

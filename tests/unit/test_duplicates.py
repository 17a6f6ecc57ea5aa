"""Cross-split duplicates: found by content (not ids), reported, dropped when asked."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from test_analysis_fakes import FakeSource, balanced_labels, planted_layers

from vlprobe.analyses.vision.probe import LayerProbe
from vlprobe.config import parse_config
from vlprobe.data import DatasetSpec
from vlprobe.data._common import bytes_image_source, file_image_source
from vlprobe.data.duplicates import (
    cross_split_duplicates,
    drop_cross_split_duplicates,
    find_duplicates,
    normalise_text,
    split_order,
)
from vlprobe.data.splits import apply_split_spec
from vlprobe.data.stimuli import Stimuli
from vlprobe.errors import ConfigError, DataError


def _png(value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (value, value, value)).save(buf, format="PNG")
    return buf.getvalue()


def _images(split: str, values: list[int], labels=None) -> Stimuli:
    ids = [f"{split}/{i}" for i in range(len(values))]
    return Stimuli("toy", split, ids, images=bytes_image_source([_png(v) for v in values], ids),
                   labels=labels)


def _texts(split: str, texts: list[str]) -> Stimuli:
    return Stimuli("toy", split, [f"{split}/{i}" for i in range(len(texts))], texts=texts)


def test_images_with_the_same_bytes_are_duplicates_whatever_their_ids():
    train = _images("train", [10, 20, 30, 40])
    test = _images("test", [50, 30, 60, 10, 30])
    dup = find_duplicates(train, test)
    assert dup is not None and (dup.split, dup.other) == ("test", "train")
    assert dup.ids == ("test/1", "test/3", "test/4") and dup.count == 3
    assert dup.examples == (("test/1", "train/2"), ("test/3", "train/0"), ("test/4", "train/2"))
    assert "3 item(s) of split 'test'" in dup.describe("toy")
    assert find_duplicates(train, _images("test", [1, 2])) is None


def test_texts_are_compared_after_normalisation():
    assert normalise_text("  The\u00a0CAT\n sits ") == "the cat sits"
    train = _texts("train", ["The cat sits.", "a dog runs"])
    test = _texts("test", ["the  CAT sits.", "the cat sits", "A dog runs "])
    dup = find_duplicates(train, test)
    assert dup.ids == ("test/0", "test/2")  # "the cat sits" (no full stop) differs


def test_image_and_text_items_need_both_parts_equal():
    def both(split, values, texts):
        ids = [f"{split}/{i}" for i in range(len(values))]
        return Stimuli("toy", split, ids, images=bytes_image_source([_png(v) for v in values],
                                                                    ids), texts=texts)

    train = both("train", [1, 2], ["a red car", "a dog"])
    test = both("test", [1, 2], ["a red car", "a cat"])  # same image, other caption: distinct
    assert find_duplicates(train, test).ids == ("test/0",)


def test_image_files_are_compared_by_content_not_by_size_and_mtime(tmp_path):
    """Same size and mtime but other bytes: not a duplicate; same bytes, other mtime: a
    duplicate. Folder digests are content hashes, so they agree with the bytes."""
    a, b, copy = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "copy.png"
    a.write_bytes(b"A" * 50)  # compared as bytes: never decoded
    b.write_bytes(b"B" * 50)
    copy.write_bytes(b"A" * 50)
    os.utime(b, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns))  # same size and mtime as a
    os.utime(copy, ns=(1, 1))  # same bytes as a, other mtime
    train = Stimuli("toy", "train", ["train/a"], images=file_image_source([a]))
    test = Stimuli("toy", "test", ["test/b", "test/copy"], images=file_image_source([b, copy]))
    assert train.images.digests[0] != test.images.digests[0]
    assert train.images.digests[0] == test.images.digests[1]
    dup = find_duplicates(train, test)
    assert dup.ids == ("test/copy",)
    assert find_duplicates(train.subset([0]), test.subset([1])).ids == ("test/copy",)


def test_split_order_and_all_pairs():
    assert split_order(["test", "validation", "train", "extra"]) == [
        "train", "extra", "validation", "test"]
    splits = {"test": _texts("test", ["x", "y", "z"]), "train": _texts("train", ["x", "w"]),
              "validation": _texts("validation", ["y", "w"])}
    found = {(d.split, d.other): d.ids for d in cross_split_duplicates(splits)}
    assert found == {("validation", "train"): ("validation/1",),
                     ("test", "train"): ("test/0",), ("test", "validation"): ("test/1",)}


def test_drop_removes_held_out_copies_and_records_them():
    splits = {"train": _texts("train", ["x", "w"]),
              "validation": _texts("validation", ["y", "W", "v"]),
              "test": _texts("test", ["x", "y", "z"])}
    out = drop_cross_split_duplicates(splits)
    assert out["train"].ids == ["train/0", "train/1"]
    assert out["validation"].ids == ["validation/0", "validation/2"]
    assert out["test"].ids == ["test/2"]
    info = out["test"].source["dropped_cross_split_duplicates"]
    assert info["n"] == 2 and info["with"] == {"train": 1, "validation": 1}
    assert cross_split_duplicates(out) == []
    with pytest.raises(DataError, match="would leave it empty"):
        drop_cross_split_duplicates({"train": _texts("train", ["x"]),
                                     "test": _texts("test", ["X "])})


def test_dataset_option_drops_before_subsampling_and_is_validated():
    splits = {"train": _images("train", [1, 2, 3, 4], np.array([0, 1, 0, 1])),
              "test": _images("test", [1, 5, 6, 3, 7, 8], np.array([0, 0, 1, 0, 1, 1]))}
    kept = apply_split_spec(splits, DatasetSpec(loader="toy"))
    assert len(kept["test"]) == 6  # reported only, by default
    spec = DatasetSpec(loader="toy", drop_cross_split_duplicates=True, subsample={"test": 4})
    out = apply_split_spec(splits, spec)
    assert len(out["test"]) == 4 and not {"test/0", "test/3"} & set(out["test"].ids)
    assert out["test"].source["dropped_cross_split_duplicates"]["n"] == 2
    raw = {"name": "x", "models": {"m": {"adapter": "hf_vit"}},
           "datasets": {"d": {"loader": "image_folder", "drop_cross_split_duplicates": "yes"}},
           "analyses": [{"analysis": "V1", "models": ["m"], "dataset": "d"}]}
    with pytest.raises(ConfigError, match=r"datasets\.d\.drop_cross_split_duplicates"):
        parse_config(raw, check_registries=False)
    raw["datasets"]["d"]["drop_cross_split_duplicates"] = True
    assert parse_config(raw, check_registries=False).datasets["d"].drop_cross_split_duplicates


def test_a_split_pair_analysis_reports_planted_duplicates():
    """The old check compared ids, which embed the split name: it could never fire."""
    src = FakeSource()
    ytr, yte = balanced_labels(10, 2, seed=0), balanced_labels(5, 2, seed=1)
    src.add("m", "train", planted_layers(ytr, 2, 6, [1, 1], seed=0, split="train"))
    src.add("m", "test", planted_layers(yte, 2, 6, [1, 1], seed=1, split="test"))
    src.contents["train"] = [f"sentence {i}" for i in range(20)]
    src.contents["test"] = [f"Sentence {i}" if i in (2, 7) else f"other {i}" for i in range(10)]
    res = LayerProbe(["m"], "toy", {"Cs": [1.0], "max_iter": 50}).run(src)
    (note,) = [n for n in res.notes if "same content" in n]
    assert "2 item(s) of split 'test'" in note and "test:2 = train:2" in note
    assert "drop_cross_split_duplicates: true" in note
    src.contents["test"] = [f"other {i}" for i in range(10)]
    res = LayerProbe(["m"], "toy", {"Cs": [1.0], "max_iter": 50}).run(src)
    assert not [n for n in res.notes if "same content" in n]


def test_run_record_reports_and_drops_duplicates(tmp_path):
    """End to end: senteval file with test sentences repeated from train."""
    from test_runner import spec_dict

    from vlprobe.results.records import read_result_table, read_run
    from vlprobe.runner import run

    rng = np.random.default_rng(0)
    words = ["red", "blue", "cat", "dog", "sits", "runs", "on", "the", "mat", "tree"]
    train = [(i % 2, " ".join(rng.choice(words, size=5))) for i in range(24)]
    test = [(i % 2, " ".join(rng.choice(words, size=5))) for i in range(10)]
    test[3] = (train[5][0], train[5][1].upper())  # same sentence, other case
    test[8] = train[9]
    lines = [f"tr\t{y}\t{s}" for y, s in train] + [f"te\t{y}\t{s}" for y, s in test]
    path = tmp_path / "task.txt"
    path.write_text("\n".join(lines) + "\n")
    data = {
        "name": "dups", "output_dir": str(tmp_path / "runs"),
        "models": {"bert": spec_dict("hf_text", tmp_path)},
        "datasets": {"task": {"loader": "senteval", "path": str(path)}},
        "analyses": [{"analysis": "V1", "models": ["bert"], "dataset": "task",
                      "params": {"Cs": [1.0], "max_iter": 50, "layers": "last"}}],
    }
    record = read_run(run(parse_config(data), progress=False, report=False))
    assert record["status"] == "ok", record["analyses"]
    dup = record["datasets"]["task"]["test"]["duplicates_of"]["train"]
    assert dup["count"] == 2 and sorted(dup["examples"]) == [["test/28", "train/6"],
                                                           ["test/33", "train/10"]]
    assert any("2 item(s) have the same content" in w and "drop_cross_split_duplicates" in w
               for w in record["warnings"])
    assert any("same content" in n for n in record["analyses"]["V1_task"]["notes"])

    data["datasets"]["task"]["drop_cross_split_duplicates"] = True
    run_dir = run(parse_config(data), progress=False, report=False)
    record = read_run(run_dir)
    summary = record["datasets"]["task"]["test"]
    assert summary["n_items"] == 8 and summary["duplicates_of"] == {}
    assert summary["dropped_duplicates"]["n"] == 2
    assert not any("same content" in w for w in record["warnings"])
    assert any("were dropped at load" in n for n in record["analyses"]["V1_task"]["notes"])
    assert (read_result_table(run_dir, "V1_task")["n_test"] == 8).all()

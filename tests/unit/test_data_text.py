"""Text loaders (sentences, gensim_polarity, senteval) and the hf_hub loader's error paths."""

from __future__ import annotations

import builtins
import importlib.util

import numpy as np
import pytest

from vlprobe.data import DatasetSpec, load_dataset
from vlprobe.errors import DataError


def test_sentences_plain(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("first sentence\n\n  second one  \n")
    out = load_dataset(DatasetSpec("sentences", path=str(f)))
    s = out["train"]
    assert s.texts == ["first sentence", "second one"]
    assert s.ids == ["train/1", "train/3"]
    assert s.labels is None and s.images is None
    assert s.source["format"] == "plain"


def test_sentences_tsv(tmp_path):
    f = tmp_path / "s.tsv"
    f.write_text("pos\tgood film\nneg\tbad film\npos\tgreat\n")
    s = load_dataset(DatasetSpec("sentences", path=str(f), options={"format": "tsv"}))["train"]
    assert s.label_names == ["neg", "pos"]
    assert s.labels.tolist() == [1, 0, 1]
    assert s.texts[0] == "good film"


def test_sentences_fasttext_autodetect(tmp_path):
    f = tmp_path / "ft.txt"
    f.write_text("__label__b one two\n__label__a three\n__label__b __label__c four\n")
    s = load_dataset(DatasetSpec("fasttext", path=str(f)))["train"]
    assert s.source["format"] == "fasttext"
    assert s.label_names == ["a", "b"]
    assert s.labels.tolist() == [1, 0, 1]
    assert s.texts == ["one two", "three", "four"]


def test_sentences_numeric_labels_sorted_numerically(tmp_path):
    f = tmp_path / "n.tsv"
    f.write_text("10\tx\n2\ty\n1\tz\n")
    s = load_dataset(DatasetSpec("sentences", path=str(f), options={"format": "tsv"}))["train"]
    assert s.label_names == ["1", "2", "10"]


def test_sentences_bad_lines_raise_or_skip(tmp_path):
    f = tmp_path / "bad.tsv"
    f.write_text("pos\tgood\nno tab here\nneg\tbad\n")
    with pytest.raises(DataError, match=r"bad\.tsv:2"):
        load_dataset(DatasetSpec("sentences", path=str(f), options={"format": "tsv"}))
    s = load_dataset(DatasetSpec("sentences", path=str(f), options={"format": "tsv"},
                                 on_error="skip"))["train"]
    assert len(s) == 2
    assert s.source["skipped"] == [f"{f}:2"]


def test_sentences_empty_and_missing(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        load_dataset(DatasetSpec("sentences", path=str(f)))
    with pytest.raises(DataError, match=r"missing.txt"):
        load_dataset(DatasetSpec("sentences", path=str(tmp_path / "missing.txt")))
    bad = tmp_path / "latin.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="encoding"):
        load_dataset(DatasetSpec("sentences", path=str(bad)))
    s = load_dataset(DatasetSpec("sentences", path=str(bad), options={"encoding": "latin-1"}))
    assert s["train"].texts == ["café"]


def test_gensim_polarity():
    if importlib.util.find_spec("gensim") is None:
        pytest.skip("gensim not installed")
    s = load_dataset(DatasetSpec("gensim_polarity"))["train"]
    assert len(s) == 200
    assert s.label_names == ["neg", "pos"]
    assert np.bincount(s.labels).tolist() == [100, 100]
    assert not any(t.startswith("__label__") for t in s.texts)


def test_gensim_polarity_without_gensim(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gensim" else real(name, *a))
    with pytest.raises(DataError, match=r"pip install 'vlprobe\[text\]'"):
        load_dataset(DatasetSpec("gensim_polarity"))


def test_senteval(tmp_path):
    f = tmp_path / "task.txt"
    f.write_text(
        "tr\tNN\tthe cat sat\n"
        "tr\tVB\truns fast\n"
        "va\tNN\ta dog\n"
        "te\tVB\tjumps\n"
        "te\tNN\tbirds\n"
    )
    out = load_dataset(DatasetSpec("senteval", path=str(f)))
    assert list(out) == ["train", "validation", "test"]
    assert out["train"].label_names == ["NN", "VB"] == out["validation"].label_names
    assert out["test"].labels.tolist() == [1, 0]
    assert out["validation"].texts == ["a dog"]
    assert out["test"].ids == ["test/4", "test/5"]


def test_senteval_bad_split_code(tmp_path):
    f = tmp_path / "task.txt"
    f.write_text("tr\tA\tx\nxx\tA\ty\n")
    with pytest.raises(DataError, match=r"task\.txt:2.*tr, va or te"):
        load_dataset(DatasetSpec("senteval", path=str(f)))
    out = load_dataset(DatasetSpec("senteval", path=str(f), on_error="skip"))
    assert list(out) == ["train"] and out["train"].source["skipped"] == [f"{f}:2"]


def test_senteval_then_subsample(tmp_path):
    f = tmp_path / "task.txt"
    f.write_text("".join(f"tr\t{'AB'[i % 2]}\tsentence {i}\n" for i in range(20)))
    out = load_dataset(DatasetSpec("senteval", path=str(f), subsample={"train": 4}))
    assert np.bincount(out["train"].labels).tolist() == [2, 2]


# --- hf_hub ------------------------------------------------------------------------------------


def test_hub_without_datasets_package(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(DataError, match=r"pip install 'vlprobe\[hub\]'"):
        load_dataset(DatasetSpec("hf_hub", path="cifar10"))


def test_hub_needs_id():
    with pytest.raises(DataError, match="hub dataset id"):
        load_dataset(DatasetSpec("hf_hub"))


def test_hub_offline_unknown_dataset(monkeypatch, tmp_path):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="no-such-user/no-such-dataset"):
        load_dataset(DatasetSpec("hub", path="no-such-user/no-such-dataset"))


def test_hub_local_parquet(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    import io

    from PIL import Image

    blobs = []
    for i in range(4):
        buf = io.BytesIO()
        Image.new("RGB", (4, 3), (i * 50, 0, 0)).save(buf, format="PNG")
        blobs.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
    table = pa.table(
        {"img": blobs, "text": ["a", "b", "c", "d"], "label": ["x", "y", "x", "y"]}
    )
    pq.write_table(table, tmp_path / "train.parquet")
    out = load_dataset(DatasetSpec("hf_hub", path="parquet", options={
        "data_files": {"train": str(tmp_path / "train.parquet")}, "image_column": "img"}))
    s = out["train"]
    assert s.texts == ["a", "b", "c", "d"]
    assert s.label_names == ["x", "y"] and s.labels.tolist() == [0, 1, 0, 1]
    assert s.images[2].size == (4, 3) and s.images.names[2] == "parquet[train][row 2]"

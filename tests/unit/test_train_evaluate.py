"""Evaluating a trained dual encoder from its checkpoint alone reproduces the training
record: test Recall@K, the untrained-head control and chance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from test_train import _config

from vlprobe.train import parse_train_config, train


@pytest.mark.parametrize("kind", ["aligned", "devise"])
def test_evaluation_reproduces_the_record(tmp_path, monkeypatch, kind):
    from vlprobe.data import DatasetSpec, load_dataset
    from vlprobe.extract import ActivationStore
    from vlprobe.train.evaluate import evaluate_checkpoint

    monkeypatch.setenv("VLPROBE_CACHE", str(tmp_path / "cache"))
    cfg = _config(tmp_path)
    if kind == "devise":
        cfg.update(kind="devise", head={"kind": "linear", "embed_dim": 32})
    out = train(parse_train_config(cfg), progress=False)
    record = json.loads((Path(out) / "training_record.json").read_text())
    test = load_dataset(DatasetSpec(name="f", **cfg["data"]))["test"]
    got = evaluate_checkpoint(out, test, store=ActivationStore(tmp_path / "eval"),
                              progress=False)
    assert (got["n_images"], got["n_texts"]) == (4, 20)
    assert got["trained"] == pytest.approx(record["test"], abs=1e-9)
    assert got["untrained_heads"] == pytest.approx(record["controls"]["untrained_heads"],
                                                   abs=1e-9)
    assert got["chance"] == pytest.approx(record["controls"]["chance"], abs=1e-12)


def test_image_subset_keeps_each_images_captions():
    import numpy as np
    from test_train import planted

    from vlprobe.train.aligned import chance_metrics
    from vlprobe.train.evaluate import image_subset

    f = planted(10, 0)
    sub = image_subset(f, np.array([7, 2, 5]))
    assert sub.image.shape[0] == 3 and sub.text.shape[0] == 15
    assert np.array_equal(sub.image[0], f.image[7])
    for t in range(15):  # each kept caption points at its own image's new row
        old = np.flatnonzero((f.text == sub.text[t]).all(axis=1))[0]
        assert sub.image_ids[sub.image_of_text[t]] == f.image_ids[f.image_of_text[old]]
    assert chance_metrics(sub)["t2i_R@1"] == np.float64(100 / 3)


def test_a_gallery_of_every_image_gives_the_full_metrics():
    import torch
    from test_train import planted

    from vlprobe.train.aligned import retrieval_metrics
    from vlprobe.train.evaluate import subsampled_metrics
    from vlprobe.train.heads import aligned_heads

    f = planted(12, 0)
    torch.manual_seed(0)
    heads = aligned_heads(16, 12, 8)
    got = subsampled_metrics(heads, f, 12, draws=3)
    assert got["mean"] == pytest.approx(retrieval_metrics(heads, f))
    assert all(v == pytest.approx(0.0) for v in got["sd"].values())
    assert subsampled_metrics(heads, f, 4, draws=3)["sd"]["mean_R"] > 0  # draws differ

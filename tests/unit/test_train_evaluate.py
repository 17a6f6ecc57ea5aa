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

"""`kind: devise`: DeViSE's linear map onto frozen text embeddings with the hinge rank loss."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_train import _config, planted  # noqa: E402

from vlprobe.errors import ConfigError  # noqa: E402
from vlprobe.train import parse_train_config, train  # noqa: E402
from vlprobe.train.aligned import retrieval_metrics, train_aligned_heads  # noqa: E402


def _fit(tr, va, seed=0, epochs=60, embed_dim=12):
    return train_aligned_heads(tr, va, embed_dim=embed_dim, kind="linear", hidden=8,
                               epochs=epochs, batch_size=40, lr=2e-2, weight_decay=0.0,
                               patience=epochs, init_temperature=0.07, seed=seed,
                               progress=False, objective="devise", margin=2.0)


def test_devise_solves_planted_data_and_keeps_the_text_side_fixed():
    tr, va, te = planted(120, 1), planted(40, 2), planted(40, 3)
    heads, _, _, initial = _fit(tr, va)
    # train pairs are all ranked first; on test the hinge (which stops pushing once an
    # in-batch margin holds) leaves a near-exact fit, far above the untrained map
    assert retrieval_metrics(heads, tr)["i2t_R@1"] == 100.0
    m = retrieval_metrics(heads, te)
    assert m["i2t_R@1"] >= 95.0 and m["t2i_R@1"] >= 95.0
    assert retrieval_metrics(initial, te)["mean_R"] < m["mean_R"]
    # the text side is the frozen embedding: identity map, no standardisation, fixed scale
    assert torch.equal(heads.text.weight, torch.eye(12)) and not heads.text.bias.any()
    assert torch.equal(heads.logit_scale, initial.logit_scale)
    x = torch.from_numpy(te.text[:3])
    with torch.no_grad():
        assert torch.equal(heads.embed_text(x), x)
    again, *_ = _fit(tr, va, epochs=2)
    first, *_ = _fit(tr, va, epochs=2)
    assert torch.equal(again.image.weight, first.image.weight)


def test_devise_needs_the_text_width_as_embed_dim():
    tr, va = planted(20, 1), planted(10, 2)
    with pytest.raises(ConfigError, match="text feature width 12"):
        _fit(tr, va, epochs=1, embed_dim=8)


def test_devise_end_to_end_loads_as_a_dual_encoder(tmp_path):
    from vlprobe.models import ModelSpec, load_model

    cfg = _config(tmp_path)
    text_width = 32  # the tiny BERT's hidden size (text.pooled)
    cfg.update(kind="devise", name="tiny_devise", head={"kind": "linear",
                                                        "embed_dim": text_width},
               optim={"epochs": 2, "batch_size": 4, "margin": 0.2})
    out = train(parse_train_config(cfg), progress=False)
    record = json.loads((out / "training_record.json").read_text())
    assert record["kind"] == "devise" and record["config"]["optim"]["margin"] == 0.2
    model = load_model(ModelSpec(adapter="aligned_dual", checkpoint=str(out)))
    trace = model.forward(model.prepare(["a cat", "two dogs"], "text"),
                          ["text.proj", "text.pooled"])
    assert torch.allclose(trace.hidden["text.proj"], trace.hidden["text.pooled"], atol=1e-6)


def test_bad_devise_configs(tmp_path):
    cfg = {**_config(tmp_path), "kind": "devise", "head": {"kind": "linear", "embed_dim": 32}}
    with pytest.raises(ConfigError, match=r"head\.kind linear"):
        parse_train_config({**cfg, "head": {"kind": "mlp", "embed_dim": 32}})
    with pytest.raises(ConfigError, match="margin must be > 0"):
        parse_train_config({**cfg, "optim": {"margin": 0.0}})
    with pytest.raises(ConfigError, match="unknown key 'margin'"):
        parse_train_config({**cfg, "kind": "aligned", "optim": {"margin": 0.1}})
    assert np.isclose(parse_train_config(cfg).optim.margin, 0.1)

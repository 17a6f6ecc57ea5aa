"""`vlprobe train` (M8): the loss, a planted aligner, determinism, checkpoints, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_data_flickr8k import write_split  # noqa: E402

from tiny_models import tiny_spec  # noqa: E402
from vlprobe.errors import ConfigError, DataError, ModelLoadError  # noqa: E402
from vlprobe.train import load_train_config, parse_train_config, train  # noqa: E402
from vlprobe.train.aligned import chance_metrics, retrieval_metrics, train_aligned_heads  # noqa: E402
from vlprobe.train.features import PairedFeatures, check_no_test_images  # noqa: E402
from vlprobe.train.losses import info_nce  # noqa: E402


def test_info_nce_equals_a_hand_computed_3x3():
    img = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    txt = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    scale = torch.tensor(math.log(2.0))
    unit = lambda x: [[v / math.hypot(*row) for v in row] for row in x.tolist()]  # noqa: E731
    a, b = unit(img), unit(txt)
    logits = [[2.0 * sum(p * q for p, q in zip(r, c)) for c in b] for r in a]

    def ce(rows):
        return sum(-rows[i][i] + math.log(sum(math.exp(v) for v in rows[i]))
                   for i in range(3)) / 3

    cols = [list(col) for col in zip(*logits)]
    want = 0.5 * (ce(logits) + ce(cols))
    assert float(info_nce(img, txt, scale)) == pytest.approx(want, rel=1e-6)


def planted(n_images: int, seed: int, per: int = 5) -> PairedFeatures:
    """Text feature = a fixed linear map of its image's feature (+ small noise)."""
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(99).normal(size=(16, 12))
    img = rng.normal(size=(n_images, 16)).astype(np.float32)
    of = np.repeat(np.arange(n_images), per)
    txt = (img[of] @ w + 0.01 * rng.normal(size=(len(of), 12))).astype(np.float32)
    return PairedFeatures(img, txt, of, [f"i{seed}_{i}" for i in range(n_images)],
                          [f"d{seed}_{i}" for i in range(n_images)])


def _fit(train, val, seed=0, epochs=25):
    return train_aligned_heads(train, val, embed_dim=16, kind="linear", hidden=32,
                               epochs=epochs, batch_size=40, lr=2e-2, weight_decay=0.0,
                               patience=epochs, init_temperature=0.07, seed=seed,
                               progress=False)


def test_planted_aligner_retrieves_perfectly_and_is_deterministic():
    tr, va, te = planted(120, 1), planted(40, 2), planted(40, 3)
    heads, log, best, initial = _fit(tr, va)
    m = retrieval_metrics(heads, te)
    assert m["i2t_R@1"] == 100.0 and m["t2i_R@1"] == 100.0
    assert retrieval_metrics(initial, te)["mean_R"] < m["mean_R"]
    assert 1 <= best <= len(log) and log[best - 1].val["mean_R"] == max(e.val["mean_R"]
                                                                        for e in log)
    first, *_ = _fit(tr, va, epochs=2)
    again, *_ = _fit(tr, va, epochs=2)
    for (k, v), (_, w) in zip(first.state_dict().items(), again.state_dict().items()):
        assert torch.equal(v, w), k
    other, *_ = _fit(tr, va, seed=1, epochs=2)
    assert not torch.equal(other.image.weight, first.image.weight)


def test_chance_level():
    f = planted(10, 0)
    c = chance_metrics(f)
    assert c["t2i_R@1"] == pytest.approx(10.0)
    assert c["i2t_R@1"] == pytest.approx(10.0)  # 5 positives of 50 texts
    assert c["i2t_R@10"] == pytest.approx(100 * (1 - math.comb(45, 10) / math.comb(50, 10)))


def test_test_images_are_refused_by_content():
    tr, te = planted(5, 1), planted(3, 2)
    tr.image_digests[2] = te.image_digests[0]
    with pytest.raises(DataError, match="refuses to touch test images"):
        check_no_test_images(tr, te)


# -- end to end on a tiny Flickr8k-like parquet with tiny towers --------------------------
def _config(tmp_path: Path) -> dict:
    root = tmp_path / "flickr"
    for j, (split, n) in enumerate((("train", 12), ("validation", 4), ("test", 4))):
        write_split(root, split, n, 100 * j)
    vit = tiny_spec("hf_vit", tmp_path / "towers")
    bert = tiny_spec("hf_text", tmp_path / "towers")
    return {
        "name": "tiny_aligned", "kind": "aligned", "seed": 0,
        "output_dir": str(tmp_path / "ckpt"),
        "data": {"loader": "flickr8k", "path": str(root)},
        "image_tower": {"adapter": "hf_vit", "config": vit.config, "random_init": True,
                        "sites": ["vision.blocks.1", "vision.pooled"]},
        "text_tower": {"adapter": "hf_text", "config": bert.config, "random_init": True,
                       "sites": ["text.pooled"]},
        "head": {"kind": "mlp", "embed_dim": 8, "hidden": 16},
        "optim": {"epochs": 3, "batch_size": 4, "patience": 2},
    }


def test_train_writes_a_checkpoint_that_loads_as_a_dual_encoder(tmp_path):
    from PIL import Image

    from vlprobe.models import ModelSpec, load_model

    out = train(parse_train_config(_config(tmp_path)), progress=False)
    record = json.loads((out / "training_record.json").read_text())
    assert record["data"]["test"] == {"fingerprint": record["data"]["test"]["fingerprint"],
                                      "n_images": 4, "n_texts": 20}
    assert set(record["controls"]) == {"untrained_heads", "chance"}
    assert 1 <= record["best_epoch"] <= 3 and len(record["epochs"]) <= 3
    model = load_model(ModelSpec(adapter="aligned_dual", checkpoint=str(out)))
    assert model.modalities == ("image", "text") and model.embedding_site("text") == "text.proj"
    assert "vision.blocks.0" in model.sites() and "text.blocks.1" in model.sites()
    images = [Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)) for i in range(3)]
    trace = model.forward(model.prepare(images, "image"), ["vision.proj", "vision.blocks.0"])
    assert trace.hidden["vision.proj"].shape == (3, 8) and "vision.pooled" not in trace.hidden
    # the same numbers as heads(tower features): round trip of the checkpoint
    tower = model.towers["image"]
    t = tower.forward(tower.prepare(images, "image"), ["vision.blocks.1", "vision.pooled"])
    x = torch.cat([t.hidden["vision.blocks.1"][:, 0], t.hidden["vision.pooled"]], dim=1)
    with torch.no_grad():
        want = model.heads.embed_image(x)
    assert torch.allclose(trace.hidden["vision.proj"], want, atol=1e-5)
    again = load_model(ModelSpec(adapter="aligned_dual", checkpoint=str(out)))
    t2 = again.forward(again.prepare(["a cat"], "text"), ["text.proj"]).hidden["text.proj"]
    t1 = model.forward(model.prepare(["a cat"], "text"), ["text.proj"]).hidden["text.proj"]
    assert torch.equal(t1, t2)
    grad_px = model.image_pixels(images).requires_grad_(True)
    model.forward_differentiable(grad_px, ["vision.proj"])["vision.proj"].sum().backward()
    assert grad_px.grad is not None and torch.isfinite(grad_px.grad).all()
    assert model.logit_scale()["scale"] > 1.0


def test_checkpoint_whose_config_does_not_match_its_tensors(tmp_path):
    from vlprobe.models import ModelSpec, load_model

    out = train(parse_train_config(_config(tmp_path)), progress=False)
    config = json.loads((out / "config.json").read_text())
    config["head"]["embed_dim"] = 9
    config["tensors"]["image.2.weight"] = [9, 16]
    (out / "config.json").write_text(json.dumps(config))
    model = load_model(ModelSpec(adapter="aligned_dual", checkpoint=str(out)))
    with pytest.raises(ModelLoadError, match=r"image\.2\.weight.*shape \[8, 16\]"):
        model.heads  # noqa: B018


def test_bad_configs(tmp_path):
    cfg = _config(tmp_path)
    with pytest.raises(Exception, match=r"[Dd]id you mean"):
        parse_train_config({**cfg, "image_tower": {**cfg["image_tower"], "adapter": "hf_vitt"}})
    with pytest.raises(ConfigError, match="sites"):
        parse_train_config({**cfg, "text_tower": {"adapter": "hf_text"}})
    with pytest.raises(ConfigError, match="kind must be one of"):
        parse_train_config({**cfg, "kind": "contrastive"})
    with pytest.raises(ConfigError, match="unknown key 'optimizer'"):
        parse_train_config({**cfg, "optimizer": {}})
    path = tmp_path / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    assert load_train_config(path, ["optim.epochs=1"]).optim.epochs == 1
    with pytest.raises(ModelLoadError, match="does not exist"):
        from vlprobe.models import ModelSpec, load_model

        load_model(ModelSpec(adapter="aligned_dual", checkpoint=str(tmp_path / "none")))

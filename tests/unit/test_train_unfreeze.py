"""`unfreeze_last: k` of `kind: aligned` (LiT's ablation): tails reproduce the towers, k = 0
is the frozen path, k = 1 trains exactly the last block, checkpoints round-trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_data_flickr8k import write_split  # noqa: E402

from tiny_models import tiny_spec  # noqa: E402
from vlprobe.errors import ConfigError  # noqa: E402
from vlprobe.models import ModelSpec, load_model  # noqa: E402
from vlprobe.train import parse_train_config, train  # noqa: E402
from vlprobe.train.tails import build_tail  # noqa: E402

IMAGE_SITES = ["vision.blocks.13", "vision.pooled"]


def _config(tmp: Path, name: str, image_k: int | None = None, text_k: int | None = None,
            tail_lr: float | None = None):
    root = tmp / "flickr"
    if not root.exists():
        for j, (split, n) in enumerate((("train", 10), ("validation", 4), ("test", 4))):
            write_split(root, split, n, 100 * j)
    bert = tiny_spec("hf_text", tmp / "towers")
    image = {"adapter": "efficientnet_lite0", "random_init": True,
             "options": {"image_size": 64}, "sites": IMAGE_SITES}
    text = {"adapter": "hf_text", "config": bert.config, "random_init": True,
            "sites": ["text.blocks.0", "text.pooled"]}
    if image_k is not None:
        image["unfreeze_last"] = image_k
    if text_k is not None:
        text["unfreeze_last"] = text_k
    return {
        "name": name, "kind": "aligned", "seed": 0, "output_dir": str(tmp / name),
        "data": {"loader": "flickr8k", "path": str(root)},
        "image_tower": image, "text_tower": text,
        "head": {"kind": "linear", "embed_dim": 8},
        "optim": {"epochs": 1, "batch_size": 4, "patience": 1, "lr": 1e-2,
                  **({"tail_lr": tail_lr} if tail_lr else {})},
    }


def _tensors(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def test_tails_reproduce_the_towers(tmp_path):
    from PIL import Image

    cnn = load_model(ModelSpec(adapter="efficientnet_lite0", random_init=True,
                               options={"image_size": 64}))
    images = [Image.fromarray(np.full((40, 50, 3), 30 * i, np.uint8)) for i in range(3)]
    tail = build_tail(cnn, 2)
    assert tail.cut_site == "vision.blocks.13" and tail.sites[:2] == ["vision.blocks.14",
                                                                       "vision.blocks.15"]
    want = cnn.forward(cnn.prepare(images, "image"),
                       ["vision.blocks.13", "vision.blocks.15", "vision.head", "vision.pooled"])
    with torch.no_grad():
        got = tail(want.hidden["vision.blocks.13"])
    for site in ("vision.blocks.15", "vision.head", "vision.pooled"):
        assert torch.allclose(got[site], want.hidden[site], atol=1e-5), site

    bert = load_model(tiny_spec("hf_text", tmp_path))
    texts = ["a cat", "a dog runs on the grass", "red"]
    tail = build_tail(bert, 1)
    assert tail.cut_site == "text.blocks.0" and tail.sites == ["text.blocks.1", "text.pooled"]
    want = bert.forward(bert.prepare(texts, "text"), ["text.blocks.0", "text.blocks.1",
                                                      "text.pooled"])
    mask = want.attention_mask
    with torch.no_grad():
        got = tail(want.hidden["text.blocks.0"], mask)
    real = mask.bool()
    assert torch.allclose(got["text.blocks.1"][real], want.hidden["text.blocks.1"][real],
                          atol=1e-5)
    assert torch.allclose(got["text.pooled"], want.hidden["text.pooled"], atol=1e-5)
    tail_all = build_tail(bert, 2)
    assert tail_all.cut_site == "text.stem"


def test_unsupported_towers_and_bad_k_are_clear_errors(tmp_path):
    vit = load_model(tiny_spec("hf_vit", tmp_path))
    with pytest.raises(ConfigError, match="cannot run its last blocks"):
        build_tail(vit, 1)
    bert = load_model(tiny_spec("hf_text", tmp_path))
    with pytest.raises(ConfigError, match=r"k must lie in \[1, 2\]"):
        build_tail(bert, 3)
    cfg = _config(tmp_path, "bad", image_k=-1)
    with pytest.raises(ConfigError, match="unfreeze_last: expected an integer"):
        parse_train_config(cfg)
    with pytest.raises(ConfigError, match="tail_lr: expected a learning rate"):
        parse_train_config(_config(tmp_path, "bad", 1, 1, tail_lr=-1.0))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """k = 0 (explicit and absent), k = 1 on each tower, and k = 1 again (same seed)."""
    tmp = tmp_path_factory.mktemp("unfreeze")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLPROBE_CACHE", str(tmp / "cache"))
        for name, ik, tk, lr in (("absent", None, None, None), ("zero", 0, 0, None),
                                 ("k1", 1, 1, None), ("k1_again", 1, 1, None),
                                 ("k1_still", 1, 1, 1e-12)):
            out[name] = train(parse_train_config(_config(tmp, name, ik, tk, lr)),
                              progress=False)
    return tmp, out


def test_k0_is_the_frozen_path(runs):
    _, out = runs
    a, b = _tensors(out["absent"]), _tensors(out["zero"])
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((out["zero"] / "config.json").read_text())
    assert "unfreeze_last" not in config["image_tower"]
    assert not any(k.startswith(("image_tower.", "text_tower.")) for k in a)


def test_k1_trains_only_the_last_block_and_is_deterministic(runs, tmp_path):
    tmp, out = runs
    tensors = _tensors(out["k1"])
    tower_keys = {k for k in tensors if k.startswith(("image_tower.", "text_tower."))}
    image_mods = {k.split(".")[1] for k in tower_keys if k.startswith("image_tower.")}
    assert image_mods == {"_blocks", "_conv_head", "_bn1"}
    assert {k.split(".")[2] for k in tower_keys if k.startswith("image_tower._blocks")} == {
        "15"}
    text_layers = {k.split(".")[3] for k in tower_keys if k.startswith("text_tower.")}
    assert text_layers == {"1"}  # of a 2-layer BERT
    again = _tensors(out["k1_again"])
    assert all(torch.equal(tensors[k], again[k]) for k in tensors)
    # the loaded dual encoder: only the tail's weights differ from the pretrained towers
    model = load_model(ModelSpec(adapter="aligned_dual", checkpoint=str(out["k1"])))
    fresh = {"image": load_model(ModelSpec(adapter="efficientnet_lite0", random_init=True,
                                           options={"image_size": 64})),
             "text": load_model(tiny_spec("hf_text", tmp / "towers"))}
    for modality in ("image", "text"):
        new = model.towers[modality].model.state_dict()
        old = fresh[modality].model.state_dict()
        changed = {k for k in new if not torch.equal(new[k], old[k])}
        saved = {k.split(".", 1)[1] for k in tower_keys if k.startswith(modality)}
        assert changed and changed <= saved, modality
        assert "finetuned_from" in model.towers[modality].identity()


def test_checkpoint_round_trip_gives_the_recorded_test_metrics(runs):
    from vlprobe.data import DatasetSpec, load_dataset
    from vlprobe.extract import ActivationStore
    from vlprobe.train.aligned import retrieval_metrics
    from vlprobe.train.features import paired_features

    tmp, out = runs
    record = json.loads((out["k1"] / "training_record.json").read_text())
    model = load_model(ModelSpec(adapter="aligned_dual", checkpoint=str(out["k1"])))
    test = load_dataset(DatasetSpec(name="flickr8k", loader="flickr8k",
                                    path=str(tmp / "flickr")))["test"]
    feats = paired_features(test, model.towers["image"], model.towers["text"], IMAGE_SITES,
                            ["text.blocks.0", "text.pooled"], ActivationStore(tmp / "rt"),
                            progress=False)
    got = retrieval_metrics(model.heads, feats)
    assert got == pytest.approx(record["test"], abs=1e-9)
    # and the adapter's own projection agrees with heads(tower features)
    from PIL import Image

    images = [Image.fromarray(np.full((30, 30, 3), 50 * i, np.uint8)) for i in range(2)]
    proj = model.forward(model.prepare(images, "image"), ["vision.proj"]).hidden["vision.proj"]
    t = model.towers["image"].forward(model.towers["image"].prepare(images, "image"),
                                      IMAGE_SITES)
    x = torch.cat([t.hidden["vision.blocks.13"].mean(dim=(2, 3)), t.hidden["vision.pooled"]],
                  dim=1)
    with torch.no_grad():
        assert torch.allclose(proj, model.heads.embed_image(x), atol=1e-5)


def test_tail_lr_is_the_learning_rate_of_the_unfrozen_blocks(runs):
    _, out = runs
    still, moved = _tensors(out["k1_still"]), _tensors(out["k1"])
    heads_still = {k for k in still if not k.startswith(("image_tower.", "text_tower."))}
    fresh = load_model(ModelSpec(adapter="efficientnet_lite0", random_init=True,
                                 options={"image_size": 64})).model.state_dict()
    w = "image_tower._conv_head.weight"
    assert torch.allclose(still[w], fresh[w[len("image_tower."):]], atol=1e-8)
    assert not torch.allclose(moved[w], fresh[w[len("image_tower."):]], atol=1e-4)
    assert any(not torch.equal(still[k], moved[k]) for k in heads_still)

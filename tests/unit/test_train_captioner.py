"""`vlprobe train` kind captioner: a tiny end-to-end run on a Flickr8k-like parquet, the
checkpoint round trip through the grid_captioner adapter, decoding, determinism, the test
image guard and bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pycocoevalcap.bleu.bleu")

from test_data_flickr8k import write_split  # noqa: E402

from tiny_models import tiny_spec  # noqa: E402
from vlprobe.errors import ConfigError, DataError  # noqa: E402
from vlprobe.train import parse_train_config, train  # noqa: E402

WORDS = ["a", "dog", "cat", "runs", "sits", "on", "the", "grass", "red", "ball", "man", "woman"]


def _captions(n: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [[" ".join(rng.choice(WORDS, size=int(rng.integers(3, 7)))) + " ." for _ in range(5)]
            for _ in range(n)]


def _data(root: Path, test_seed: int = 200) -> Path:
    for split, n, seed in (("train", 10, 0), ("validation", 3, 100), ("test", 3, test_seed)):
        write_split(root, split, n, seed, captions=_captions(n, seed))
    return root


def _config(tmp: Path, root: Path, **over) -> dict:
    vit = tiny_spec("hf_vit", tmp / "towers")
    cfg = {
        "name": "tiny_captioner", "kind": "captioner", "seed": 0,
        "output_dir": str(tmp / "ckpt"), "data": {"loader": "flickr8k", "path": str(root)},
        "image_tower": {"adapter": "hf_vit", "config": vit.config, "random_init": True,
                        "sites": ["vision.blocks.1"], "pooling": "grid2"},
        "decoder": {"width": 16, "layers": 2, "heads": 2, "ffn": 32, "min_count": 2,
                    "max_words": 8, "dropout": 0.1},
        "optim": {"epochs": 3, "batch_size": 8, "patience": 3, "warmup_steps": 2,
                  "lr": 0.01},
        "decode": {"max_length": 10, "beams": [1, 3], "meteor": False},
    }
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("captioner")
    data = _data(tmp / "flickr")
    cfg = _config(tmp, data)
    return tmp, data, cfg, train(parse_train_config(cfg), progress=False)


@pytest.fixture(scope="module")
def model(trained):
    from vlprobe.models import ModelSpec, load_model

    return load_model(ModelSpec(adapter="grid_captioner", checkpoint=str(trained[3])))


def _test_images(data: Path):
    from vlprobe.data import DatasetSpec, load_dataset

    test = load_dataset(DatasetSpec(loader="flickr8k", name="f", path=str(data),
                                    options={"view": "image"}))["test"]
    return test, test.payloads("image", range(len(test)))


def test_record_holds_data_losses_metrics_and_times(trained):
    _, _, _, out = trained
    record = json.loads((out / "training_record.json").read_text())
    assert record["seed"] == 0 and record["kind"] == "captioner"
    assert record["data"]["test"]["n_images"] == 3 and record["data"]["test"]["n_captions"] == 15
    assert len(record["data"]["train"]["fingerprint"]) > 8
    epochs = record["epochs"]
    assert 1 <= record["best_epoch"] <= len(epochs) <= 3
    assert all(np.isfinite(e["loss"]) and np.isfinite(e["val_loss"]) for e in epochs)
    assert epochs[-1]["loss"] < epochs[0]["loss"]  # it learns the toy captions
    assert set(epochs[0]["val"]) >= {"BLEU-4", "CIDEr", "ROUGE-L"}
    assert set(record["test"]) == {"greedy", "beam3"}
    for scores in (*record["test"].values(), *record["controls"].values()):
        assert 0.0 <= scores["BLEU-1"] <= 1.0 and scores["METEOR"] is None
    assert any("METEOR skipped" in n for n in record["metric_notes"])
    assert record["vocabulary"]["size"] == 4 + len(WORDS)
    assert set(record["seconds"]) == {"features", "training", "evaluation"}
    assert record["config"]["decoder"]["kind"] == "grid_transformer"
    assert "text_tower" not in record["config"]
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "generations.json"} <= files


def test_checkpoint_round_trip_through_the_adapter(trained, model):
    """The adapter rebuilds the tower, the grid pooling and the decoder: its captions of the
    test images are the trainer's (from cached features), and its teacher-forced loss on
    caption #0 of each validation image is the best epoch's recorded validation loss."""
    _, data, _, out = trained
    gens = json.loads((out / "generations.json").read_text())
    test, images = _test_images(data)
    ids = list(test.ids)
    assert model.generate(images, max_length=10) == [gens["test"]["greedy"][i] for i in ids]
    assert model.generate(images, max_length=10, num_beams=3) == [
        gens["test"]["beam3"][i] for i in ids]
    from vlprobe.data import DatasetSpec, load_dataset

    val = load_dataset(DatasetSpec(loader="flickr8k", name="f", path=str(data),
                                   options={"captions_per_image": 1}))["validation"]
    pairs = val.payloads("pair", range(len(val)))
    batch = model.prepare(pairs, "pair")
    logits = model.teacher_forced_logits(batch)
    ids_in, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    labels = torch.full_like(ids_in, -100)
    for b in range(len(ids_in)):
        n = int(mask[b].sum())
        labels[b, : n - 1] = ids_in[b, 1:n]
        labels[b, n - 1] = 2  # <eos>
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             labels.reshape(-1), ignore_index=-100)
    record = json.loads((out / "training_record.json").read_text())
    want = record["epochs"][record["best_epoch"] - 1]["val_loss"]
    assert float(loss) == pytest.approx(want, abs=1e-4)


def test_greedy_is_deterministic_and_beam_one_is_the_argmax_path(trained, model):
    _, data, _, _ = trained
    _, images = _test_images(data)
    first = model.generate(images, max_length=10)
    assert first == model.generate(images, max_length=10)
    assert model.generate(images, 10, 3) == model.generate(images, 10, 3)
    gen = model.generate_with_attention(images, max_length=10)
    assert gen.texts == first
    # beam search with one beam == the step-by-step argmax of teacher forcing (over words
    # and <eos>: <pad>, <bos> and <unk> are never generated)
    from vlprobe.captioning.grid_decoder import SUPPRESSED

    grid = model._image_grid(images)
    seq = torch.ones(len(images), 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(9):
            logits = model.decoder(grid, seq, torch.ones_like(seq))[:, -1]
            logits[:, list(SUPPRESSED)] = -float("inf")
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    for b, toks in enumerate(gen.token_ids):
        assert seq[b, 1 : len(toks) + 1].tolist() == toks
        assert not set(toks) & set(SUPPRESSED)


def test_generated_cross_attention_rows_sum_to_one_and_are_causal(trained, model):
    _, data, _, _ = trained
    _, images = _test_images(data)
    gen = model.generate_with_attention(images, max_length=10, num_beams=3)
    grid = model._image_grid(images)
    for b, att in enumerate(gen.cross_attention):
        n = len(gen.token_ids[b])
        assert att.shape == (2, 2, n, 4)  # layers, heads, generated words, 2 x 2 cells
        assert torch.allclose(att.sum(-1), torch.ones(att.shape[:-1]), atol=1e-5)
        # row t is what the decoder computed when it read [<bos>] + generated[:t] alone
        t = n - 1
        prefix = torch.tensor([[1, *gen.token_ids[b][:t]]])
        from vlprobe.models._hooks import capture

        table = model.decoder.hook_table()
        sites = ["cross.blocks.0.t2v.attn", "cross.blocks.1.t2v.attn"]
        with torch.no_grad(), capture(model.decoder, {s: table[s] for s in sites}) as got:
            model.decoder.final_states(grid[b : b + 1], prefix, torch.ones_like(prefix))
        for layer, site in enumerate(sites):
            assert torch.allclose(att[layer, :, t], got[site][0, :, -1], atol=1e-5)


def test_same_seed_same_weights_and_cli_dispatch(trained, tmp_path, capsys):
    import yaml
    from safetensors.torch import load_file

    from vlprobe.cli import main

    _, _, cfg, out = trained
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**cfg, "output_dir": str(tmp_path / "again")}))
    assert main(["train", str(path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "greedy: BLEU-1" in printed and "beam3: " in printed
    a = load_file(str(out / "model.safetensors"))
    b = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = train(parse_train_config({**cfg, "seed": 1, "output_dir": str(tmp_path / "s1"),
                                      "optim": {**cfg["optim"], "epochs": 1}}), progress=False)
    c = load_file(str(other / "model.safetensors"))
    assert not torch.equal(a["visual.weight"], c["visual.weight"])


def test_training_refuses_test_images(tmp_path):
    data = _data(tmp_path / "flickr", test_seed=0)  # test image bytes = train image bytes
    with pytest.raises(DataError, match="refuses to touch test images"):
        train(parse_train_config(_config(tmp_path, data)), progress=False)


def test_data_must_be_one_item_per_image(tmp_path):
    data = _data(tmp_path / "flickr")
    cfg = _config(tmp_path, data, data={"loader": "flickr8k", "path": str(data),
                                        "options": {"view": "caption"}})
    with pytest.raises(DataError, match="one item per image"):
        train(parse_train_config(cfg), progress=False)


def test_bad_configs(tmp_path):
    cfg = _config(tmp_path, tmp_path)
    parse_train_config(cfg)  # the base is valid
    cases = [
        ({"text_tower": {"adapter": "hf_text", "sites": ["text.pooled"]}},
         "does not apply to kind 'captioner'"),
        ({"head": {"kind": "mlp"}}, "does not apply"),
        ({"decoder": {"kind": "prefix_lm"}}, "not available"),
        ({"decoder": {"depth": 2}}, "unknown key 'depth'"),
        ({"image_tower": {**cfg["image_tower"], "sites": ["vision.blocks.0",
                                                          "vision.blocks.1"]}}, "ONE grid site"),
        ({"image_tower": {**cfg["image_tower"], "pooling": "mean"}}, "needs a grid pooling"),
        ({"image_tower": {**cfg["image_tower"], "pooling": "grid"}}, "unknown pooling"),
        ({"optim": {"select_on": "SPICE"}}, "select_on must be one of"),
        ({"optim": {"epochs": 2.5}}, "expected an integer"),
        ({"optim": {"captions_per_image": 0}}, "captions_per_image"),
        ({"optim": {"label_smoothing": 1.0}}, "label_smoothing"),
        ({"optim": {"optimiser": "sgd"}}, "unknown key"),
        ({"decode": {"beams": [0]}}, "beam widths >= 1"),
        ({"decode": {"beams": "three"}}, "beam widths"),
        ({"decode": {"max_length": 11}}, r"max_length must lie in \[2, 10\]"),
        ({"decode": {"meteor": "yes"}}, "expected true or false"),
    ]
    for over, message in cases:
        with pytest.raises(ConfigError, match=message):
            parse_train_config({**cfg, **over})
    aligned = {k: v for k, v in cfg.items() if k not in ("decoder", "decode", "optim")}
    with pytest.raises(ConfigError, match="missing required key 'text_tower'"):
        parse_train_config({**aligned, "kind": "aligned"})
    ok = parse_train_config({**cfg, "decode": {**cfg["decode"], "beams": 3}})
    assert ok.decode.beams == (3,) and ok.image_tower.pooling == "grid2"
    assert parse_train_config({**cfg, "image_tower": {
        k: v for k, v in cfg["image_tower"].items() if k != "pooling"}}).image_tower.pooling == (
        "grid7")

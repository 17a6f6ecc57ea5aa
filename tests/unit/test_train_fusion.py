"""`vlprobe train` kinds fusion_single / fusion_two: tiny VisualBERT / LXMERT trained with ITM +
MLM on frozen grid features; checkpoints load through the adapters; determinism; bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_data_flickr8k import write_split  # noqa: E402

from tiny_models import tiny_spec  # noqa: E402
from vlprobe.errors import ConfigError, DataError  # noqa: E402
from vlprobe.models import ModelSpec, load_model  # noqa: E402
from vlprobe.train import parse_train_config, train  # noqa: E402
from vlprobe.train.fusion import (  # noqa: E402
    TextSpec,
    encode,
    itm_scores,
    model_inputs,
    train_fusion,
)
from vlprobe.train.fusion_config import FusionTrainConfig  # noqa: E402
from vlprobe.train.fusion_data import (  # noqa: E402
    ItmPairs,
    RegionSplit,
    cell_boxes,
    epoch_plan,
    mask_tokens,
    pad_tokens,
)
from vlprobe.train.fusion_models import (  # noqa: E402
    build_model,
    hf_config,
    load_fusion_checkpoint,
    read_meta,
)

ARCH = {"fusion_single": {"layers": 2},
        "fusion_two": {"text_layers": 1, "vision_layers": 1, "cross_layers": 2}}
NOUNS = ("cat", "dog", "kitten", "puppy", "bird", "car", "house", "tree", "man", "woman",
         "child", "market")


def _captions(split: str, n: int) -> list[list[str]]:
    """Five captions per image from the tiny tokenizer's words (image i is about NOUNS[i])."""
    colours = ("red", "blue", "green", "black", "white")
    return [[f"a {colours[k]} {NOUNS[(i + 3 * (split == 'test')) % len(NOUNS)]} sits on the "
             f"{'big' if k % 2 else 'small'} tree" for k in range(5)] for i in range(n)]


def _flickr(root: Path, leak: bool = False) -> Path:
    for j, (split, n) in enumerate((("train", 10), ("validation", 4), ("test", 4))):
        seed = 100 * j if not (leak and split == "test") else 0  # test image 0 = train image 0
        write_split(root, split, n, seed, captions=_captions(split, n))
    return root


def _config(tmp: Path, kind: str, seed: int = 0, leak: bool = False) -> dict:
    bert = tiny_spec("hf_text", tmp / "towers")
    return {
        "name": f"tiny_{kind}", "kind": kind, "seed": seed,
        "output_dir": str(tmp / f"{kind}_{seed}"),
        "data": {"loader": "flickr8k", "path": str(_flickr(tmp / "flickr", leak))},
        "regions": {"adapter": "efficientnet_lite0", "random_init": True,
                    "options": {"image_size": 64}, "site": "vision.head"},
        "text": {"model": {"adapter": "hf_text", "config": bert.config, "random_init": True},
                 "max_length": 16},
        "model": {**ARCH[kind], "width": 32, "heads": 2, "intermediate": 64},
        "objectives": {"itc": 0.5 if kind == "fusion_two" else 0.0},
        "optim": {"epochs": 2, "batch_size": 4, "lr": 1e-3,
                  "precision": "bfloat16" if kind == "fusion_two" else "float32"},
        "eval": {"batch_size": 16, "mlm_captions_per_image": 5},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Each kind trained once on the tiny parquet (its own activation store)."""
    tmp = tmp_path_factory.mktemp("fusion")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLPROBE_CACHE", str(tmp / "cache"))
        for kind in ARCH:
            out[kind] = train(parse_train_config(_config(tmp, kind)), progress=False)
    return out


def _pairs(root: Path, split: str, n: int):
    """(PIL image, its first caption) of the first n images of a split parquet."""
    from vlprobe.data import DatasetSpec, load_dataset

    view = load_dataset(DatasetSpec(loader="flickr8k", path=str(root),
                                    options={"view": "image"}))[split]
    return [(view.images[i], view.descriptors["captions"][i][0]) for i in range(n)]


@pytest.mark.parametrize("kind", list(ARCH))
def test_checkpoint_loads_through_its_adapter_with_the_trained_hidden_states(trained, kind):
    out = trained[kind]
    meta = read_meta(out)
    record = json.loads((out / "training_record.json").read_text())
    assert meta["adapter"] == {"fusion_single": "visual_bert", "fusion_two": "lxmert"}[kind]
    assert record["seed"] == 0 and 1 <= record["best_epoch"] <= len(record["epochs"]) <= 2
    for epoch in record["epochs"]:
        assert np.isfinite(epoch["loss"]) and epoch["mlm_loss"] > 0 and "itm_acc" in epoch["val"]
    assert set(record["data"]) >= {"train", "validation", "test", "itm_test"}
    assert record["data"]["itm_test"]["n_pairs"] == 40  # 4 images x 5 captions x (1 + 1)
    assert record["test"]["n_masked"] > 0 and 0 <= record["test"]["itm_acc"] <= 100
    assert record["controls"]["chance_itm_acc"] == 50.0
    assert record["adapter_check"]["max_abs_diff"] < 1e-4
    assert record["parameters"]["transformer"] > 0 and record["seconds"]["training"] > 0

    adapter = load_model(ModelSpec(adapter=meta["adapter"], checkpoint=str(out),
                                   options=meta["adapter_options"]))
    pairs = _pairs(out.parent / "flickr", "test", 3)
    last = ("fusion.blocks.1" if kind == "fusion_single" else "cross.blocks.1.text")
    attn = "fusion.blocks.0.attn" if kind == "fusion_single" else "cross.blocks.0.v2t.attn"
    trace = adapter.forward(adapter.prepare(pairs, "pair"), [last, "fusion.pooled", attn])
    assert trace.attentions[attn].ndim == 4 and trace.modality_tags is not None

    # the trained weights, loaded independently, on regions computed here from the images
    model, _ = load_fusion_checkpoint(out)
    cnn = load_model(ModelSpec(adapter="efficientnet_lite0", random_init=True,
                               options={"image_size": 64}))
    fmap = cnn.forward(cnn.prepare([p[0] for p in pairs], "image"), ["vision.head"])
    regions = fmap.hidden["vision.head"].flatten(2).transpose(1, 2)
    tok = adapter.tokenizer
    ids, mask = pad_tokens([np.asarray(tok(c)["input_ids"]) for _, c in pairs], tok.pad_token_id)
    text = TextSpec(tok.pad_token_id, tok.mask_token_id, list(tok.all_special_ids), len(tok),
                    16 if kind == "fusion_single" else None)
    with torch.no_grad():
        states, pooled = encode(model, kind, model_inputs(kind, ids, mask, regions, text))
    got = trace.hidden[last][:, : ids.shape[1]]
    assert torch.allclose(got, states, atol=1e-4)
    assert torch.allclose(trace.hidden["fusion.pooled"], pooled, atol=1e-4)


@pytest.mark.parametrize("kind", list(ARCH))
def test_itm_scores_can_be_recomputed_from_the_saved_heads(trained, kind):
    out = trained[kind]
    saved = np.load(out / "test_itm_scores.npz")
    model, _ = load_fusion_checkpoint(out)
    pairs = _pairs(out.parent / "flickr", "test", 4)
    cnn = load_model(ModelSpec(adapter="efficientnet_lite0", random_init=True,
                               options={"image_size": 64}))
    fmap = cnn.forward(cnn.prepare([p[0] for p in pairs], "image"), ["vision.head"])
    x = fmap.hidden["vision.head"].flatten(2).numpy()  # [4, C, R]: the grid<g> layout
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    split = RegionSplit(x.reshape(4, -1), 2, [f"test_{i}.jpg" for i in range(4)], [""] * 4,
                        [], [])
    # the first saved pairs: image 0 with its caption 0 (match), then a mismatch
    ids = [str(i) for i in saved["ids"][:2]]
    assert ids[0] == "test/test_0.jpg#0" and saved["labels"][:2].tolist() == [1, 0]
    true_caption = pairs[0][1]
    text = TextSpec(tok.pad_token_id, tok.mask_token_id, list(tok.all_special_ids), len(tok),
                    16 if kind == "fusion_single" else None)
    p = itm_scores(model, kind, split, ItmPairs(np.array([0]), [np.asarray(
        tok(true_caption)["input_ids"])], np.array([1]), ids[:1]), text, 4)
    assert p[0] == pytest.approx(float(saved["p_match"][0]), abs=1e-4)


def _synthetic(n: int, seed: int) -> RegionSplit:
    rng = np.random.default_rng(seed)
    caps = [[np.array([2, 5 + (i % 7), 5 + k, 3]) for k in range(3)] for i in range(n)]
    texts = [[f"caption {i} {k}" for k in range(3)] for i in range(n)]
    return RegionSplit(rng.normal(size=(n, 8 * 4)).astype(np.float32), 2,
                       [f"i{i}" for i in range(n)], [f"d{seed}_{i}" for i in range(n)], caps,
                       texts)


@pytest.mark.parametrize("kind", list(ARCH))
def test_itm_scores_come_back_in_the_pairs_order_whatever_the_batching(kind):
    """Scoring batches pairs by caption length; every score must still be the score of its
    own pair (compared with one pair per batch, where nothing is reordered or padded)."""
    from vlprobe.train.fusion_config import ArchEntry

    arch = ArchEntry(**ARCH[kind], width=16, heads=2, intermediate=32)
    config = hf_config(kind, arch, vocab_size=20, pad_id=0, visual_dim=8, max_length=16,
                       n_regions=4)
    config.initializer_range = 0.5  # large weights, so that the pairs' scores differ visibly
    model = build_model(kind, config, 0)
    split = _synthetic(5, 3)
    rng = np.random.default_rng(0)
    # captions of lengths 2..9 in shuffled order, so that sorting reorders them
    tokens = [np.array([2, *rng.integers(5, 20, size=k), 3]) for k in rng.permutation(8)]
    pairs = ItmPairs(rng.integers(0, 5, size=8), tokens, np.ones(8, dtype=np.int64),
                     [str(i) for i in range(8)])
    text = TextSpec(0, 4, [0, 1, 2, 3, 4], 20, 16 if kind == "fusion_single" else None)
    batched = itm_scores(model, kind, split, pairs, text, 3)
    one_by_one = np.array([itm_scores(model, kind, split, ItmPairs(
        pairs.image_rows[i:i + 1], tokens[i:i + 1], pairs.labels[i:i + 1], pairs.ids[i:i + 1]),
        text, 1)[0] for i in range(8)])
    assert np.ptp(batched) > 0.05  # the scores differ, so a wrong order would show
    assert np.allclose(batched, one_by_one, atol=1e-4)


@pytest.mark.parametrize("kind", list(ARCH))
def test_same_seed_same_weights(kind):
    from vlprobe.train.fusion_config import ArchEntry, FusionOptimEntry, ObjectiveEntry

    arch = ArchEntry(**ARCH[kind], width=16, heads=2, intermediate=32)
    optim = FusionOptimEntry(epochs=2, batch_size=4, lr=1e-3)
    tr, va = _synthetic(12, 1), _synthetic(4, 2)
    pairs = ItmPairs(np.arange(4), [c[0] for c in va.captions], np.ones(4, dtype=np.int64),
                     list("abcd"))
    text = TextSpec(0, 4, [0, 1, 2, 3, 4], 20, 16 if kind == "fusion_single" else None)
    config = hf_config(kind, arch, vocab_size=20, pad_id=0, visual_dim=8, max_length=16,
                       n_regions=4)

    def fit(seed):
        model = build_model(kind, config, seed)
        out, log, _ = train_fusion(model, kind, tr, va, pairs, text,
                                   objectives=ObjectiveEntry(), optim=optim,
                                   eval_batch_size=8, seed=seed, progress=False)
        return out.state_dict(), log

    state = torch.get_rng_state()
    (a, log), (b, _), (c, _) = fit(0), fit(0), fit(1)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched
    assert log[0].loss > 0 and log[0].steps == 3
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("kind", list(ARCH))
def test_stem_capture_and_the_input_alignment_loss(kind):
    from vlprobe.train.fusion import stem_capture, stem_itc_loss
    from vlprobe.train.fusion_config import ArchEntry
    from vlprobe.train.fusion_models import base_of

    config = hf_config(kind, ArchEntry(**ARCH[kind], width=16, heads=2, intermediate=32),
                       vocab_size=20, pad_id=0, visual_dim=8, max_length=16, n_regions=4)
    model = build_model(kind, config, 0).eval()
    ids, mask = pad_tokens([np.array([2, 5, 6, 3]), np.array([2, 7, 3])], 0)
    regions = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0))
    text = TextSpec(0, 4, [0, 1, 2, 3, 4], 20, 16 if kind == "fusion_single" else None)
    inputs = model_inputs(kind, ids, mask, regions, text)
    base = base_of(model)
    with torch.no_grad(), stem_capture(model, kind, ids.shape[1]) as stems:
        out = base(**inputs, output_hidden_states=True)
    if kind == "fusion_single":  # layer 0 of the fused sequence = [text; regions]
        want = torch.cat([stems["text"], stems["vision"]], 1)
        assert torch.equal(want, out.hidden_states[0]) and stems["text"].shape[1] == 4
    else:
        with torch.no_grad():
            assert torch.equal(stems["text"], base.embeddings(ids, inputs["token_type_ids"]))
            assert torch.equal(stems["vision"], base.encoder.visn_fc(regions,
                                                                     inputs["visual_pos"]))
    # planted: text and region means that agree pairwise give a lower loss than crossed ones
    d = 6
    t = torch.randn(8, 1, d, generator=torch.Generator().manual_seed(1)).expand(8, 3, d)
    ids8 = torch.full((8, 3), 7)
    mask8 = torch.ones(8, 3, dtype=torch.long)
    matched = torch.ones(8, dtype=torch.bool)
    aligned = stem_itc_loss({"text": t, "vision": t[:, :2]}, ids8, mask8, [0, 1, 2, 3],
                            matched, 0.1)
    crossed = stem_itc_loss({"text": t, "vision": t.flip(0)[:, :2]}, ids8, mask8,
                            [0, 1, 2, 3], matched, 0.1)
    assert float(aligned) < 0.1 < float(crossed)
    none = stem_itc_loss({"text": t, "vision": t[:, :2]}, ids8, mask8, [0, 1, 2, 3],
                         torch.zeros(8, dtype=torch.bool), 0.1)
    assert float(none) == 0.0  # no matched pairs: nothing to align


def test_itm_negatives_never_equal_the_true_caption():
    split = _synthetic(6, 0)
    # image 1 shares a caption with image 0 (modulo case): never image 0's negative
    split.texts[1][0] = " CAPTION 0 1 "
    gen = torch.Generator().manual_seed(0)
    n_neg = 0
    for _ in range(20):
        for b in epoch_plan(split, 4, gen):
            for row, img, cap, matched in zip(b["rows"], b["image_of_caption"], b["caption"],
                                              b["matched"]):
                text = split.texts[img][cap].strip().lower()
                if matched:
                    assert img == row
                else:
                    n_neg += 1
                    assert img != row
                    assert text not in {t.strip().lower() for t in split.texts[row]}
    assert 20 < n_neg < 100  # about half of the 120 pairs
    again = epoch_plan(split, 4, torch.Generator().manual_seed(5))
    same = epoch_plan(split, 4, torch.Generator().manual_seed(5))
    assert all(np.array_equal(x["caption"], y["caption"]) for x, y in zip(again, same))


def test_masking_never_touches_specials_or_padding():
    ids, mask = pad_tokens([np.array([2] + [7] * 30 + [3]), np.array([2, 8, 3])], 0)
    gen = torch.Generator().manual_seed(0)
    masked, labels = mask_tokens(ids, mask, [0, 1, 2, 3, 4], 0.5, gen, 4, 20)
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[mask == 0].any()
    assert not chosen[0, 31] and chosen.sum() > 5
    assert torch.equal(labels[chosen], ids[chosen])
    assert not torch.isin(masked[chosen], torch.tensor([0, 1, 2, 3])).any()
    evaluation, labels = mask_tokens(ids, mask, [0, 1, 2, 3, 4], 0.5, gen, 4, 20,
                                     bert_mix=False)
    assert (evaluation[labels != -100] == 4).all()


def test_test_images_are_refused_before_any_training(tmp_path):
    with pytest.raises(DataError, match="refuses to touch test images"):
        train(parse_train_config(_config(tmp_path, "fusion_two", leak=True)), progress=False)
    assert not (tmp_path / "fusion_two_0").exists()


def test_cell_boxes_are_the_lxmert_adapters_grid_boxes(tmp_path):
    from PIL import Image

    spec = tiny_spec("lxmert", tmp_path)
    adapter = load_model(spec)
    image = Image.new("RGB", (40, 30), (90, 10, 200))
    pos = adapter.prepare([(image, "a cat")], "pair").inputs["visual_pos"][0]
    g = round(pos.shape[0] ** 0.5)
    assert torch.allclose(pos, torch.from_numpy(cell_boxes(g)), atol=1e-6)


def test_visual_bert_region_positions_from_the_config(tmp_path):
    """With region_position_offset every grid cell gets its own position: identical cell
    features give different region tokens; without it they are identical."""
    import shutil

    from PIL import Image

    spec = tiny_spec("visual_bert", tmp_path)
    plain = load_model(spec)
    image = Image.new("RGB", (64, 64), (128, 128, 128))  # uniform: the cells' features agree
    d = Path(spec.config)
    cfg = json.loads((d / "config.json").read_text())
    n_regions = 4  # 2 x 2 cells at 64 px
    placed = tmp_path / "placed"
    shutil.copytree(d, placed)
    (placed / "config.json").write_text(json.dumps(
        {**cfg, "region_position_offset": 10, "max_position_embeddings": 10 + n_regions}))
    model = load_model(replace(spec, config=str(placed)))
    assert model.max_text_length() == 10 and plain.max_text_length() == 40
    stems = {}
    for name, m in (("plain", plain), ("placed", model)):
        batch = m.prepare([(image, "a cat")], "pair")
        t = batch.inputs["input_ids"].shape[1]
        stems[name] = m.forward(batch, ["fusion.stem"]).hidden["fusion.stem"][0, t:]
    assert torch.allclose(stems["plain"][0], stems["plain"][1], atol=1e-5)
    assert not torch.allclose(stems["placed"][0], stems["placed"][1], atol=1e-3)
    (placed / "config.json").write_text(json.dumps(
        {**cfg, "region_position_offset": 38, "max_position_embeddings": 40}))
    short = load_model(replace(spec, config=str(placed)))
    with pytest.raises(ConfigError, match="position embeddings"):
        short.prepare([(image, "a cat")], "pair")


def test_bad_fusion_configs(tmp_path):
    cfg = _config(tmp_path, "fusion_single")
    parsed = parse_train_config(cfg)
    assert isinstance(parsed, FusionTrainConfig) and parsed.adapter == "visual_bert"
    with pytest.raises(ConfigError, match="kind must be one of"):
        parse_train_config({**cfg, "kind": "fusion_three"})
    with pytest.raises(ConfigError, match="missing required key 'kind'"):
        parse_train_config({k: v for k, v in cfg.items() if k != "kind"})
    with pytest.raises(ConfigError, match=r"model\.layers: missing"):
        parse_train_config({**cfg, "model": {"width": 32, "heads": 2}})
    with pytest.raises(ConfigError, match=r"model\.cross_layers: not a setting of kind"):
        parse_train_config({**cfg, "model": {"layers": 2, "cross_layers": 1}})
    with pytest.raises(ConfigError, match=r"model\.text_layers: missing"):
        parse_train_config({**cfg, "kind": "fusion_two", "model": {"width": 32, "heads": 2}})
    with pytest.raises(ConfigError, match=r"model\.layers: not a setting of kind fusion_two"):
        parse_train_config({**cfg, "kind": "fusion_two"})
    with pytest.raises(ConfigError, match=r"text\.model: missing"):
        parse_train_config({**cfg, "text": {"max_length": 16}})
    with pytest.raises(ConfigError, match="eval: unknown key 'lr'"):
        parse_train_config({**cfg, "eval": {"lr": 1}})
    with pytest.raises(ConfigError, match="multiple of heads"):
        parse_train_config({**cfg, "model": {"layers": 2, "width": 30, "heads": 4}})
    with pytest.raises(ConfigError, match=r"optim\.epochs: expected an integer"):
        parse_train_config({**cfg, "optim": {"epochs": 1.5}})
    with pytest.raises(ConfigError, match="chooses the views itself"):
        parse_train_config({**cfg, "data": {**cfg["data"], "options": {"view": "itm"}}})
    with pytest.raises(Exception, match=r"[Dd]id you mean"):
        parse_train_config({**cfg, "regions": {"adapter": "efficientnet_lite00"}})


@pytest.mark.parametrize("name", ["train_fusion_single.yaml", "train_fusion_two.yaml"])
def test_example_configs_parse(name, reference_dir):
    from vlprobe.train import load_train_config

    root = Path(__file__).resolve().parents[2]
    cfg = load_train_config(root / "examples" / name)
    assert cfg.kind in ARCH and cfg.text.model.adapter == "minilm_l6"
    assert cfg.regions.site == "vision.head" and cfg.regions.model.adapter == "efficientnet_lite0"
    assert Path(cfg.data["path"]).is_dir() or "${reference}" in cfg.data["path"]

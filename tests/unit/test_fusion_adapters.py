"""Single-stream fusion adapters (ViLT, VisualBERT): what the registry-wide conformance tests
in test_adapters.py do not cover (HF equivalence of ViLT's raster-order image tokens, boxes,
region sources, bad input, the published architectures)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from tiny_models import tiny_spec, write_config, write_tiny_tokenizer  # noqa: E402
from vlprobe.errors import ConfigError, DataError, ModelLoadError  # noqa: E402
from vlprobe.modality import TAG_IMAGE, TAG_PAD, TAG_SPECIAL  # noqa: E402
from vlprobe.models import load_model  # noqa: E402
from vlprobe.models._hooks import seeded  # noqa: E402
from vlprobe.models.base import ModelSpec  # noqa: E402
from vlprobe.models.regions_io import write_regions_file  # noqa: E402
from vlprobe.models.vilt import patch_layout  # noqa: E402

TEXTS = ["a photo of a cat .", "the stock market rises today , very quite big"]


def _image(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))


def _pairs(ids: tuple[str, str] | None = None) -> list[tuple[Image.Image, str]]:
    images = [_image(40, 48, 0), _image(24, 60, 1)]
    if ids:
        for im, key in zip(images, ids):
            im.info["image_id"] = key
    return list(zip(images, TEXTS))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_fusion")


@pytest.fixture(scope="module")
def vilt(tiny_dir):
    return load_model(tiny_spec("vilt", tiny_dir))


@pytest.fixture(scope="module")
def vbert(tiny_dir):
    return load_model(tiny_spec("visual_bert", tiny_dir))


# -- ViLT ---------------------------------------------------------------------------------
def test_patch_layout_is_raster_order_padded_and_cut():
    mask = torch.zeros(2, 16, 24, dtype=torch.long)  # patch 8: grid 2 x 3
    mask[0] = 1  # 2 x 3 valid
    mask[1, :8, :16] = 1  # 1 x 2 valid
    lay = patch_layout(mask, 8, -1)
    assert lay.grid == (2, 3)
    assert lay.valid_hw.tolist() == [[2, 3], [1, 2]]
    assert lay.select.tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]]
    assert lay.keep.tolist() == [[1] * 6, [1, 1, 0, 0, 0, 0]]
    assert lay.cut.tolist() == [False, False]
    cut = patch_layout(mask, 8, 3)  # max_image_length 3: an evenly spaced subset
    assert cut.select.tolist() == [[0, 2, 5], [0, 1, 2]]
    assert cut.keep.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert cut.cut.tolist() == [True, False]


def test_vilt_embeddings_and_mask_equal_hf_after_undoing_its_shuffle(vilt):
    """HF's ViltEmbeddings (under a fixed seed) gives the same fused mask and the same
    embedding per token as vlprobe, once its image tokens are put back in raster order; the
    pooled output (the text CLS) is the same."""
    a = vilt
    batch = a.prepare(_pairs(), "pair")
    trace = a.forward(batch, ["fusion.stem", "fusion.pooled"])
    x, emb = batch.inputs, a.model.embeddings
    with seeded(3), torch.no_grad():
        _, _, (cells, _) = emb.visual_embed(x["pixel_values"], x["pixel_mask"], -1)
    with seeded(3), torch.no_grad():
        hf_emb, hf_mask = emb(
            x["input_ids"], x["attention_mask"], x.get("token_type_ids"), x["pixel_values"],
            x["pixel_mask"], None, None, image_token_type_idx=1,
        )
    t0 = x["input_ids"].shape[1] + 1
    lay = patch_layout(x["pixel_mask"], a.patch, -1)
    assert hf_mask.shape == trace.attention_mask.shape
    assert torch.equal(hf_mask[:, :t0].long(), trace.attention_mask[:, :t0])
    assert torch.equal(hf_mask.sum(1).long(), trace.attention_mask.sum(1))
    for b in range(2):
        hf_cell = (cells[b, :, 0] * lay.grid[1] + cells[b, :, 1]).tolist()
        for k in range(lay.select.shape[1]):
            j = hf_cell.index(int(lay.select[b, k])) if lay.keep[b, k] else None
            if j is None:
                assert trace.attention_mask[b, t0 + k] == 0
                continue
            assert hf_mask[b, t0 + j] == 1
            assert torch.allclose(trace.hidden["fusion.stem"][b, t0 + k], hf_emb[b, t0 + j],
                                  atol=1e-6)
        assert torch.allclose(trace.hidden["fusion.stem"][b, :t0], hf_emb[b, :t0], atol=1e-6)
    with seeded(3), torch.no_grad():
        hf_pooled = a.model(**x).pooler_output
    assert torch.allclose(trace.hidden["fusion.pooled"], hf_pooled, atol=1e-5)


def test_vilt_tags_layout_and_boxes(vilt):
    a = vilt
    batch = a.prepare(_pairs(), "pair")
    trace = a.forward(batch, ["fusion.blocks.1", "fusion.blocks.1.attn"])
    t_text = batch.inputs["input_ids"].shape[1]
    tags = trace.modality_tags
    assert (tags[:, t_text] == TAG_SPECIAL).all()  # the image CLS
    # image 0 (40x48 -> 32x32 of a 32x48 padded batch): 4x4 patches; image 1 (24x60 ->
    # 16x48): 2x6 patches + 4 padding patches
    assert (tags[0, t_text + 1:] == TAG_IMAGE).sum() == 16
    assert (tags[1, t_text + 1:] == TAG_IMAGE).sum() == 12
    assert (tags[1, t_text + 1:] == TAG_PAD).sum() == 4
    boxes = trace.extras["boxes"]
    first = boxes[1, t_text + 1]  # top-left patch of a 2 x 6 grid
    assert torch.allclose(first, torch.tensor([0, 0, 1 / 6, 1 / 2]))
    real = boxes[0][tags[0] == TAG_IMAGE]  # 16 patches tile the image exactly once
    area = ((real[:, 2] - real[:, 0]) * (real[:, 3] - real[:, 1])).sum()
    assert float(area) == pytest.approx(1.0)
    att = trace.attentions["fusion.blocks.1.attn"]  # [B, H, T, T]
    for b in range(2):  # no attention to text or patch padding
        pad_keys = trace.attention_mask[b] == 0
        assert pad_keys.sum() > 0
        assert float(att[b][..., pad_keys].abs().max()) < 1e-6


def test_vilt_max_image_length_cuts_and_counts(tmp_path):
    spec = tiny_spec("vilt", tmp_path)
    cfg = json.loads((Path(spec.config) / "config.json").read_text())
    cfg["max_image_length"] = 8
    (Path(spec.config) / "config.json").write_text(json.dumps(cfg))
    a = load_model(spec)
    batch = a.prepare(_pairs(), "pair")
    assert batch.n_truncated == 2  # 16 and 12 patches, 8 kept
    trace = a.forward(batch, ["fusion.blocks.0"])
    t_text = batch.inputs["input_ids"].shape[1]
    assert trace.hidden["fusion.blocks.0"].shape[1] == t_text + 1 + 8
    assert a.identity()["preprocess"]["image_tokens"]["max_image_length"] == 8


def test_vilt_long_caption_is_cut_and_counted_once(vilt):
    long_text = " ".join(["dog"] * 60)
    images = [_image(40, 48), _image(40, 48, 1)]
    batch = vilt.prepare([(images[0], long_text), (images[1], "a cat")], "pair")
    assert batch.n_truncated == 1
    assert batch.inputs["input_ids"].shape[1] == 40
    trace = vilt.forward(batch, ["fusion.pooled"])
    assert torch.isfinite(trace.hidden["fusion.pooled"]).all()


def test_vilt_default_processor_for_a_bare_config(tmp_path):
    from transformers import ViltConfig

    d = tmp_path / "bare"
    ids = write_tiny_tokenizer(d, style="bert", model_max_length=40)
    write_config(d, ViltConfig(
        vocab_size=ids["vocab_size"], hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, image_size=48, patch_size=16,
    ))
    a = load_model(ModelSpec("vilt", config=str(d), random_init=True))
    image = a.identity()["preprocess"]["image"]
    assert image["size"] == {"shortest_edge": 48} and image["size_divisor"] == 16
    assert image["image_mean"] == [0.5, 0.5, 0.5] and image["resample"] == 3
    batch = a.prepare(_pairs(), "pair")
    assert batch.inputs["pixel_values"].shape[2] == 48  # the shorter side


def test_tokenizer_sources(tmp_path, monkeypatch):
    from transformers import ViltConfig

    import vlprobe.models._fusion as fusion

    d = write_config(tmp_path / "no_tok", ViltConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, image_size=32, patch_size=8,
    ))
    monkeypatch.setattr(fusion, "DEFAULT_BERT_TOKENIZER", "vlprobe-test/not-cached-tokenizer")
    a = load_model(ModelSpec("vilt", config=str(d), random_init=True))
    with pytest.raises(ModelLoadError) as err:
        a.prepare(_pairs(), "pair")
    msg = str(err.value)
    assert "no tokenizer files" in msg and "vlprobe-test/not-cached-tokenizer" in msg
    assert "options.tokenizer" in msg
    tok_dir = tmp_path / "tok"
    write_tiny_tokenizer(tok_dir, style="bert")
    b = load_model(ModelSpec("vilt", config=str(d), random_init=True,
                             options={"tokenizer": str(tok_dir)}))
    b.forward(b.prepare(_pairs(), "pair"), ["fusion.pooled"])
    source = b.identity()["preprocess"]["text"]["tokenizer_source"]
    assert source["source"] == str(tok_dir.resolve()) and "tokenizer.json" in source["files"]
    missing = load_model(ModelSpec("vilt", config=str(d), random_init=True,
                                   options={"tokenizer": str(tmp_path / "nope")}))
    with pytest.raises(ModelLoadError, match="not a tokenizer directory"):
        missing.prepare(_pairs(), "pair")
    small = write_config(tmp_path / "small_vocab", ViltConfig(
        vocab_size=10, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, image_size=32, patch_size=8,
    ))
    c = load_model(ModelSpec("vilt", config=str(small), random_init=True,
                             options={"tokenizer": str(tok_dir)}))
    with pytest.raises(ModelLoadError, match=r"ids but the model's vocab_size is 10"):
        c.prepare(_pairs(), "pair")


# -- both ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["vilt", "vbert"])
def test_bad_pairs_and_sites_are_named(fixture, request):
    a = request.getfixturevalue(fixture)
    image = _image(40, 48)
    with pytest.raises(DataError, match="pair item 1 has no image"):
        a.prepare([(image, "a cat"), (None, "a dog")], "pair")
    for empty in ("", "   ", None):
        with pytest.raises(DataError, match="pair item 1 has an empty caption"):
            a.prepare([(image, "a cat"), (image, empty)], "pair")
    with pytest.raises(ConfigError, match="pair item 0 is not an"):
        a.prepare([image], "pair")
    with pytest.raises(ConfigError, match="does not take image inputs"):
        a.prepare([image], "image")
    with pytest.raises(ConfigError, match=r"Did you mean fusion\.blocks\.0"):
        a.forward(a.prepare(_pairs(), "pair"), ["vision.blocks.0"])
    with pytest.raises(ConfigError, match="unknown option"):
        load_model(replace(a.spec, options={**a.spec.options, "pooling": "cls"}))


# -- VisualBERT ---------------------------------------------------------------------------
def test_visual_bert_grid_regions_are_the_region_module_cells(vbert):
    """The fused sequence carries the region source's cells and boxes (the region module's
    own geometry is tested in test_regions.py)."""
    a = vbert
    pairs = _pairs()
    batch = a.prepare(pairs, "pair")
    regions = a.regions([p[0] for p in pairs])
    assert batch.inputs["visual_embeds"].shape == (2, 4, 1280)
    assert torch.equal(batch.inputs["visual_embeds"], regions.features)
    t_text = batch.inputs["input_ids"].shape[1]
    boxes = batch.extras["boxes"]
    assert torch.equal(boxes[:, t_text:], regions.boxes)
    assert torch.isnan(boxes[:, :t_text]).all()
    ident = a.identity()["preprocess"]["regions"]
    assert ident == {"source": "grid", "model": a.regions.cnn.identity(), "site": "vision.head"}


def test_visual_bert_regions_file_tags_and_boxes(vbert, tmp_path):
    rng = np.random.default_rng(0)
    regions = {
        "img_a": (rng.normal(size=(3, 1280)), np.array([[0, 0, .5, .5], [.5, 0, 1, .5],
                                                        [0, .5, 1, 1]])),
        "img_b": (rng.normal(size=(5, 1280)), np.tile([[.1, .2, .3, .4]], (5, 1))),
    }
    path = write_regions_file(tmp_path / "regions.safetensors", regions)
    a = load_model(replace(vbert.spec, options={"regions": {"source": "file",
                                                            "path": str(path)}}))
    batch = a.prepare(_pairs(("img_a", "img_b")), "pair")
    feats, mask = batch.inputs["visual_embeds"], batch.inputs["visual_attention_mask"]
    assert feats.shape == (2, 5, 1280) and mask.tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    trace = a.forward(batch, ["fusion.blocks.1"])
    t_text = batch.inputs["input_ids"].shape[1]
    assert trace.modality_tags[0, t_text:].tolist() == [TAG_IMAGE] * 3 + [TAG_PAD] * 2
    assert torch.allclose(trace.extras["boxes"][0, t_text + 1], torch.tensor([.5, 0, 1, .5]))
    assert torch.isnan(trace.extras["boxes"][0, t_text + 3:]).all()  # padded regions
    assert a.identity()["preprocess"]["regions"]["path"] == str(path.resolve())
    narrow = write_regions_file(tmp_path / "narrow.npz", {
        k: (np.ones((1, 16)), np.array([[0, 0, 1, 1.0]])) for k in ("img_a", "img_b")})
    b = load_model(replace(vbert.spec, options={"regions": {"source": "file",
                                                            "path": str(narrow)}}))
    with pytest.raises(ConfigError, match=r"regions are 16-d \(regions file .*narrow.npz\) "
                       r"but the model's visual_embedding_dim is 1280"):
        b.prepare(_pairs(("img_a", "img_b")), "pair")


# -- the published architectures, random weights, offline -----------------------------
def test_published_vilt_architecture_random_init(tmp_path):
    """``dandelin/vilt-b32-mlm``'s architecture is ViltConfig()'s defaults."""
    from transformers import ViltConfig

    config = ViltConfig()
    want = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "image_size": 384, "patch_size": 32,
            "max_position_embeddings": 40, "vocab_size": 30522, "max_image_length": -1,
            "modality_type_vocab_size": 2, "hidden_act": "gelu"}
    assert {k: getattr(config, k) for k in want} == want
    d = write_config(tmp_path / "vilt-b32-mlm", config)
    write_tiny_tokenizer(d, style="bert", model_max_length=40)
    a = load_model(ModelSpec("vilt", config=str(d), random_init=True))
    assert len(a.layer_sites("pair")) == 13 and a.layer_sites("pair")[-1] == "fusion.blocks.11"
    assert len([s for s in a.sites() if s.endswith(".attn")]) == 12
    batch = a.prepare([(_image(40, 48), "a cat")], "pair")
    assert batch.inputs["pixel_values"].shape[2] == 384  # the default processor
    trace = a.forward(batch, ["fusion.blocks.11", "fusion.pooled"])
    t = batch.inputs["input_ids"].shape[1] + 1 + 12 * 14  # 384 x 460 -> 384 x 448
    assert trace.hidden["fusion.blocks.11"].shape == (1, t, 768)


def test_published_visual_bert_architecture_random_init(tmp_path, tiny_dir):
    """``uclanlp/visualbert-vqa-coco-pre``: VisualBertConfig() defaults with 2048-d detector
    features; EfficientNet grid cells (1280-d) are refused with both numbers."""
    from transformers import VisualBertConfig

    config = VisualBertConfig(visual_embedding_dim=2048)
    want = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "max_position_embeddings": 512, "vocab_size": 30522,
            "type_vocab_size": 2, "bypass_transformer": False,
            "special_visual_initialize": True}
    assert {k: getattr(config, k) for k in want} == want
    d = write_config(tmp_path / "visualbert-vqa-coco-pre", config)
    write_tiny_tokenizer(d, style="bert")
    regions = tiny_spec("visual_bert", tiny_dir).options["regions"]
    a = load_model(ModelSpec("visual_bert", config=str(d), random_init=True,
                             options={"regions": regions}))
    assert len(a.layer_sites("pair")) == 13 and a.max_text_length() == 512
    with pytest.raises(ConfigError) as err:
        a.prepare([(_image(40, 48), "a cat")], "pair")
    assert "1280" in str(err.value) and "2048" in str(err.value)
    bypass = write_config(tmp_path / "bypass", VisualBertConfig(bypass_transformer=True))
    with pytest.raises(ModelLoadError, match="bypass_transformer"):
        load_model(ModelSpec("visual_bert", config=str(bypass), random_init=True))

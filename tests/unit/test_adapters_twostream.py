"""Family checks of the two-stream / encoder-decoder multimodal adapters: LXMERT and the
VisionEncoderDecoder captioner (the registry-wide conformance lives in test_adapters.py)."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from tiny_models import tiny_spec  # noqa: E402
from vlprobe.errors import ConfigError, DataError  # noqa: E402
from vlprobe.modality import TAG_IMAGE, TAG_PAD, TAG_SPECIAL, TAG_TEXT  # noqa: E402
from vlprobe.models import load_model  # noqa: E402
from vlprobe.models.regions_io import write_regions_file  # noqa: E402

TEXTS = ["a photo of a cat .", "the stock market rises today , very quite big"]


def _images(n: int = 2) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    shapes = [(40, 48), (36, 30), (32, 50)][:n]
    return [Image.fromarray((rng.random((*s, 3)) * 255).astype("uint8")) for s in shapes]


def _pairs(texts=TEXTS):
    return list(zip(_images(len(texts)), texts))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_twostream")


@pytest.fixture(scope="module")
def lx(tiny_dir):
    return load_model(tiny_spec("lxmert", tiny_dir))


@pytest.fixture(scope="module")
def cap(tiny_dir):
    return load_model(tiny_spec("vision_encoder_decoder", tiny_dir))


# -- LXMERT ---------------------------------------------------------------------------------
def test_lxmert_sites_and_layer_paths(lx):
    assert lx.modalities == ("pair", "text")  # text: the language stream alone (F7)
    assert lx.layer_sites("pair") == [
        "text.stem", "text.blocks.0", "text.blocks.1", "cross.blocks.0.text",
        "cross.blocks.1.text",
    ]
    vision = lx.stream_layer_sites("vision")
    assert vision == ["vision.stem", "vision.blocks.0", "cross.blocks.0.vision",
                      "cross.blocks.1.vision"]
    assert [lx.layer_index(s) for s in vision] == [0, 1, 2, 3]
    assert lx.layer_index("cross.blocks.1.text") == 4 and lx.layer_index("fusion.pooled") is None
    for sub in ("t2v.attn", "v2t.attn", "text.attn", "vision.attn", "text", "vision"):
        assert f"cross.blocks.1.{sub}" in lx.sites()
    assert lx.embedding_site("pair") == "fusion.pooled"
    with pytest.raises(ConfigError, match="streams text and vision"):
        lx.stream_layer_sites("fusion")


def _extended(mask):
    return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min


def _recompute(att_module, queries, keys, key_mask):
    """Eager LXMERT attention probabilities of ``queries`` over ``keys`` (eval mode)."""
    h = att_module.num_attention_heads
    d = att_module.attention_head_size

    def heads(x):
        return x.view(*x.shape[:2], h, d).transpose(1, 2)

    q, k = heads(att_module.query(queries)), heads(att_module.key(keys))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d) + _extended(key_mask)
    return scores.softmax(-1)


def test_lxmert_cross_attention_directions_are_right(lx):
    batch = lx.prepare(_pairs(), "pair")
    trace = lx.forward(batch, lx.sites())
    t = batch.inputs["input_ids"].shape[1]
    r = batch.inputs["visual_feats"].shape[1]
    assert t != r  # planted: 11 text tokens vs 16 regions, so a swap cannot hide
    text_mask = batch.inputs["attention_mask"]
    vis_mask = batch.inputs["visual_attention_mask"]
    x_layers = lx.model.encoder.x_layers
    for k in range(2):
        assert trace.attentions[f"cross.blocks.{k}.t2v.attn"].shape == (2, 2, t, r)
        assert trace.attentions[f"cross.blocks.{k}.v2t.attn"].shape == (2, 2, r, t)
        lang = trace.hidden["text.blocks.1" if k == 0 else f"cross.blocks.{k - 1}.text"]
        vis = trace.hidden["vision.blocks.0" if k == 0 else f"cross.blocks.{k - 1}.vision"]
        att = x_layers[k].visual_attention.att
        with torch.no_grad():
            t2v = _recompute(att, lang, vis, vis_mask)
            v2t = _recompute(att, vis, lang, text_mask)
        assert torch.allclose(trace.attentions[f"cross.blocks.{k}.t2v.attn"], t2v, atol=1e-5)
        assert torch.allclose(trace.attentions[f"cross.blocks.{k}.v2t.attn"], v2t, atol=1e-5)
        # padded text keys get no weight from any region
        pad = text_mask[0] == 0
        assert pad.any()
        assert trace.attentions[f"cross.blocks.{k}.v2t.attn"][0][..., pad].abs().max() < 1e-6


def test_lxmert_cross_layer_self_attentions_and_outputs(lx):
    batch = lx.prepare(_pairs(), "pair")
    trace = lx.forward(batch, lx.sites())
    x0 = lx.model.encoder.x_layers[0]
    with torch.no_grad():
        lang_in, vis_in = trace.hidden["text.blocks.1"], trace.hidden["vision.blocks.0"]
        text_mask = _extended(batch.inputs["attention_mask"])
        vis_mask = _extended(batch.inputs["visual_attention_mask"])
        lang_x, vis_x = x0.cross_att(lang_in, text_mask, vis_in, vis_mask)
        want_text = _recompute(x0.lang_self_att.self, lang_x[0], lang_x[0],
                               batch.inputs["attention_mask"])
        want_vis = _recompute(x0.visn_self_att.self, vis_x[0], vis_x[0],
                              batch.inputs["visual_attention_mask"])
        lang_out, vis_out = x0(lang_in, text_mask, vis_in, vis_mask)[:2]
    assert torch.allclose(trace.attentions["cross.blocks.0.text.attn"], want_text, atol=1e-5)
    assert torch.allclose(trace.attentions["cross.blocks.0.vision.attn"], want_vis, atol=1e-5)
    assert torch.allclose(trace.hidden["cross.blocks.0.text"], lang_out, atol=1e-5)
    assert torch.allclose(trace.hidden["cross.blocks.0.vision"], vis_out, atol=1e-5)


def test_lxmert_hooks_equal_hf_outputs(lx):
    batch = lx.prepare(_pairs(), "pair")
    trace = lx.forward(batch, lx.sites())
    with torch.no_grad():
        out = lx.model(**batch.inputs, output_hidden_states=True, output_attentions=True)
        ids = batch.inputs["input_ids"]
        emb = lx.model.embeddings(ids, torch.zeros_like(ids))
        vis_emb = lx.model.encoder.visn_fc(batch.inputs["visual_feats"],
                                           batch.inputs["visual_pos"])
    # HF's hidden states have no stem: language = l_layers + x_layers text outputs
    assert torch.allclose(trace.hidden["text.stem"], emb, atol=1e-6)
    assert torch.allclose(trace.hidden["vision.stem"], vis_emb, atol=1e-6)
    for j, h in enumerate(out.language_hidden_states):
        assert torch.allclose(trace.hidden[lx.layer_sites("pair")[j + 1]], h, atol=1e-5)
    for j, h in enumerate(out.vision_hidden_states):
        assert torch.allclose(trace.hidden[lx.stream_layer_sites("vision")[j + 1]], h, atol=1e-5)
    for i, a in enumerate(out.language_attentions):
        assert torch.allclose(trace.attentions[f"text.blocks.{i}.attn"], a, atol=1e-6)
    assert torch.allclose(trace.attentions["vision.blocks.0.attn"], out.vision_attentions[0])
    for k, a in enumerate(out.cross_encoder_attentions):  # HF returns the t2v direction only
        assert torch.allclose(trace.attentions[f"cross.blocks.{k}.t2v.attn"], a, atol=1e-6)
    assert torch.allclose(trace.hidden["fusion.pooled"], out.pooled_output, atol=1e-6)
    # forcing attention weights out of the modules changes no number
    plain = lx.forward(batch, ["cross.blocks.1.text", "fusion.pooled"])
    assert torch.equal(plain.hidden["fusion.pooled"], trace.hidden["fusion.pooled"])


def test_lxmert_tags(lx):
    batch = lx.prepare(_pairs(), "pair")
    trace = lx.forward(batch, ["fusion.pooled"])
    text, vision = trace.tags_by_stream["text"], trace.tags_by_stream["vision"]
    ids = batch.inputs["input_ids"]
    tok = lx.tokenizer
    assert (text[ids == tok.cls_token_id] == TAG_SPECIAL).all()
    assert (text[ids == tok.sep_token_id] == TAG_SPECIAL).all()
    assert torch.equal(text == TAG_PAD, batch.inputs["attention_mask"] == 0)
    assert int((text == TAG_TEXT).sum()) == int(batch.inputs["attention_mask"].sum()) - 4
    assert (vision == TAG_IMAGE).all() and vision.shape == (2, 16)
    assert trace.attention_mask.shape == (2, ids.shape[1] + 16)


def test_lxmert_region_file_with_padded_regions(lx, tmp_path):
    rng = np.random.default_rng(1)
    regions = {}
    for key, n in (("img-a", 5), ("img-b", 3)):
        corner = rng.random((n, 2)) * 0.5
        boxes = np.concatenate([corner, corner + 0.5 * rng.random((n, 2))], axis=1)
        regions[key] = (rng.random((n, 16)), boxes)
    path = write_regions_file(tmp_path / "regions.npz", regions)
    a = load_model(replace(lx.spec, options={"regions": {"source": "file", "path": str(path)}}))
    images = _images()
    for image, key in zip(images, ("img-b", "img-a")):
        image.info["image_id"] = key
    batch = a.prepare(list(zip(images, TEXTS)), "pair")
    assert batch.inputs["visual_attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert batch.inputs["visual_pos"][0, 3:].abs().sum() == 0  # padding boxes are zeros
    trace = a.forward(batch, a.sites())
    assert all(torch.isfinite(v).all() for v in trace.hidden.values())
    assert trace.tags_by_stream["vision"][0].tolist() == [TAG_IMAGE] * 3 + [TAG_PAD] * 2
    t2v = trace.attentions["cross.blocks.0.t2v.attn"]
    assert t2v[0, ..., 3:].abs().max() < 1e-6  # padded regions get no weight
    assert torch.allclose(t2v[0, ..., :3].sum(-1), torch.ones(2, t2v.shape[2]), atol=1e-5)
    ident = a.identity()["preprocess"]["regions"]
    assert ident["source"] == "file" and ident["path"] == str(path.resolve())
    assert len(ident["sha256"]) == 64
    assert a.identity() != lx.identity()
    with pytest.raises(DataError, match="pair item 0: the regions file is keyed by image id"):
        a.prepare(_pairs(), "pair")


def test_lxmert_identity_records_grid_region_source(lx):
    regions = lx.identity()["preprocess"]["regions"]
    assert regions["source"] == "grid" and regions["site"] == "vision.stages.1"
    assert regions["model"]["adapter"] == "hf_resnet" and regions["model"]["seed"] == 0
    options = lx.spec.options["regions"]
    other = {**options, "model": {**options["model"], "seed": 1}}
    b = load_model(replace(lx.spec, options={"regions": other}))
    assert b.identity()["preprocess"]["regions"] != regions


def test_lxmert_feature_width_mismatch_is_clear(lx):
    narrow = dict(lx.spec.options["regions"], site="vision.stages.0")  # 8 channels, not 16
    a = load_model(replace(lx.spec, options={"regions": narrow}))
    with pytest.raises(ConfigError, match=r"8-d features \(hf_resnet vision.stages.0 grid "
                       r"cells\) but the model's visual_feat_dim is 16"):
        a.prepare(_pairs(), "pair")


# -- shared bad input ------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["lxmert", "vision_encoder_decoder"])
def test_bad_pairs_name_the_item(family, lx, cap):
    a = lx if family == "lxmert" else cap
    img = _images(1)[0]
    with pytest.raises(DataError, match=r"pair item 1 has no image"):
        a.prepare([(img, "a cat"), (None, "a dog")], "pair")
    with pytest.raises(DataError, match=r"pair item 1 has an empty caption \(None\)"):
        a.prepare([(img, "a cat"), (img, None)], "pair")
    with pytest.raises(DataError, match=r"pair item 0 has an empty caption \('  '\)"):
        a.prepare([(img, "  "), (img, "a dog")], "pair")
    with pytest.raises(ConfigError, match="pair item 0 is not an"):
        a.prepare([img], "pair")


def test_sites_of_other_families_are_refused(lx, cap):
    batch = lx.prepare(_pairs(), "pair")
    for foreign in ("fusion.blocks.0", "vision.proj", "text.proj"):
        with pytest.raises(ConfigError, match=re.escape(f"has no site '{foreign}'")):
            lx.forward(batch, [foreign])
    with pytest.raises(ConfigError, match=r"has no site 'cross\.blocks\.0\.v2t\.attn'"):
        cap.forward(cap.prepare(_pairs(), "pair"), ["cross.blocks.0.v2t.attn"])
    with pytest.raises(ConfigError, match="cannot be captured from image inputs"):
        cap.forward(cap.prepare(_images(), "image"), ["text.blocks.0"])
    with pytest.raises(ConfigError, match="does not take text inputs"):
        cap.prepare(TEXTS, "text")


# -- captioner --------------------------------------------------------------------------------
def test_captioner_sites(cap):
    assert cap.modalities == ("image", "pair")
    assert cap.layer_sites("image") == ["vision.stem", "vision.blocks.0", "vision.blocks.1"]
    assert cap.layer_sites("pair") == ["text.stem", "text.blocks.0", "text.blocks.1"]
    assert cap.embedding_site("image") == "vision.pooled"
    assert cap.embedding_site("pair") == "text.pooled"
    assert cap.pooling_for("image") == "cls" and cap.pooling_for("pair") == "mean"
    assert "cross.blocks.1.t2v.attn" in cap.sites()


def test_captioner_teacher_forcing_inputs_and_tags(cap):
    batch = cap.prepare(_pairs(), "pair")
    ids = batch.inputs["decoder_input_ids"]
    mask = batch.inputs["decoder_attention_mask"]
    start = cap.config.decoder_start_token_id
    assert (ids[:, 0] == start).all()
    for row, text in enumerate(TEXTS):
        toks = cap.tokenizer(text, add_special_tokens=False)["input_ids"]
        n = len(toks)
        assert ids[row, 1 : n + 1].tolist() == toks  # no EOS appended
        assert mask[row].tolist() == [1] * (n + 1) + [0] * (ids.shape[1] - n - 1)
    assert cap.text_lengths(TEXTS) == mask.sum(1).tolist()
    assert batch.offsets[0, 0].tolist() == [0, 0] and batch.offsets[0, 1].tolist() == [0, 1]
    trace = cap.forward(batch, ["text.pooled", "vision.pooled"])
    text, vision = trace.tags_by_stream["text"], trace.tags_by_stream["vision"]
    assert (text[:, 0] == TAG_SPECIAL).all()
    assert torch.equal(text == TAG_PAD, mask == 0)
    assert ((text == TAG_TEXT) == (mask.bool() & (torch.arange(ids.shape[1]) > 0))).all()
    assert vision.shape == (2, 17) and (vision[:, 0] == TAG_SPECIAL).all()
    assert (vision[:, 1:] == TAG_IMAGE).all()


def test_captioner_hooks_equal_hf_outputs(cap):
    batch = cap.prepare(_pairs(), "pair")
    trace = cap.forward(batch, cap.sites())
    with torch.no_grad():
        out = cap.model(**batch.inputs, output_hidden_states=True, output_attentions=True)
    for j, h in enumerate(out.encoder_hidden_states):
        assert torch.allclose(trace.hidden[cap.layer_sites("image")[j]], h, atol=1e-5)
    dec = out.decoder_hidden_states  # the last entry has the final norm ln_f applied
    for j, h in enumerate(dec[:-1]):
        assert torch.allclose(trace.hidden[cap.layer_sites("pair")[j]], h, atol=1e-5)
    ln_f = cap.model.decoder.transformer.ln_f
    with torch.no_grad():
        assert torch.allclose(ln_f(trace.hidden["text.blocks.1"]), dec[-1], atol=1e-5)
    last = batch.inputs["decoder_attention_mask"].sum(1) - 1
    assert torch.allclose(trace.hidden["text.pooled"], dec[-1][torch.arange(2), last], atol=1e-5)
    assert torch.allclose(trace.hidden["vision.pooled"], out.encoder_last_hidden_state[:, 0],
                          atol=1e-5)
    for i in range(2):
        assert torch.allclose(trace.attentions[f"cross.blocks.{i}.t2v.attn"],
                              out.cross_attentions[i], atol=1e-6)
        assert torch.allclose(trace.attentions[f"text.blocks.{i}.attn"],
                              out.decoder_attentions[i], atol=1e-6)
        assert torch.allclose(trace.attentions[f"vision.blocks.{i}.attn"],
                              out.encoder_attentions[i], atol=1e-6)
    causal = trace.attentions["text.blocks.0.attn"]
    assert torch.allclose(causal.triu(1), torch.zeros_like(causal))
    # the image batch runs the encoder alone and gives the same vision numbers
    img = cap.forward(cap.prepare(_images(), "image"), ["vision.blocks.1", "vision.pooled"])
    assert torch.allclose(img.hidden["vision.blocks.1"], trace.hidden["vision.blocks.1"])
    assert img.modality_tags is None


@pytest.fixture(scope="module")
def cap2(tiny_dir):
    """Seed 2 of the tiny captioner: greedy decoding emits no EOS within 8 tokens."""
    return load_model(tiny_spec("vision_encoder_decoder", tiny_dir, seed=2))


def test_generate_is_deterministic_and_matches_teacher_forcing(cap2):
    images = _images()
    texts = cap2.generate(images, max_length=8)
    assert texts == cap2.generate(images, max_length=8)
    assert all(isinstance(t, str) and t for t in texts)
    gen = cap2.generate_with_attention(images, max_length=8)
    assert gen.texts == texts
    assert [len(t) for t in gen.token_ids] == [7, 7]
    assert gen.tokens[0] == cap2.tokenizer.convert_ids_to_tokens(gen.token_ids[0])
    # teacher forcing the generated caption reproduces it: same decoder input convention
    batch = cap2.prepare(list(zip(images, texts)), "pair")
    ids = batch.inputs["decoder_input_ids"]
    assert ids[:, 1:].tolist() == gen.token_ids
    with torch.no_grad():
        logits = cap2.model(**batch.inputs).logits  # [B, T, V]
    assert logits[:, :-1].argmax(-1).tolist() == ids[:, 1:].tolist()
    assert cap2.generate(images, max_length=8, num_beams=3) == cap2.generate(
        images, max_length=8, num_beams=3)


def test_generated_cross_attention_matches_hf_generate(cap2):
    images = _images()
    first = cap2.generate_with_attention(images, max_length=8).token_ids
    stop = first[0][1]  # plant an EOS: image 0 stops after 2 tokens, image 1 runs on
    assert stop not in first[1]
    old = cap2.config.eos_token_id
    try:
        cap2.config.eos_token_id = stop
        gen = cap2.generate_with_attention(images, max_length=8)
        px = cap2.prepare(images, "image").inputs["pixel_values"]
        with torch.no_grad():
            ref = cap2.model.generate(
                pixel_values=px, max_length=8, num_beams=1, do_sample=False,
                decoder_start_token_id=cap2.config.decoder_start_token_id, eos_token_id=stop,
                pad_token_id=cap2.config.pad_token_id, output_attentions=True,
                return_dict_in_generate=True,
            )
    finally:
        cap2.config.eos_token_id = old
    assert gen.token_ids[0] == first[0][:2] and gen.token_ids[1] == first[1]
    assert [c.shape for c in gen.cross_attention] == [(2, 2, 2, 17), (2, 2, 7, 17)]
    for b, att in enumerate(gen.cross_attention):
        assert torch.allclose(att.sum(-1), torch.ones(att.shape[:-1]), atol=1e-5)
        for step in range(att.shape[2]):
            for layer in range(2):
                want = ref.cross_attentions[step][layer][b, :, -1]
                assert torch.allclose(att[layer, :, step], want, atol=1e-5), (b, step, layer)


def test_generation_arguments_are_checked(cap):
    with pytest.raises(ConfigError, match="max_length 1"):
        cap.generate(_images(1), max_length=1)
    with pytest.raises(ConfigError, match="num_beams"):
        cap.generate(_images(1), max_length=4, num_beams=0)


def test_captioner_image_tower_is_differentiable(cap, lx):
    images = _images()
    px = cap.image_pixels(images)
    assert torch.allclose(cap.normalize_pixels(px), cap.prepare(images, "image").inputs[
        "pixel_values"], atol=1e-6)
    px.requires_grad_(True)
    out = cap.forward_differentiable(px, ["vision.blocks.1", "vision.pooled"])
    out["vision.pooled"].sum().backward()
    assert px.grad is not None and px.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="no differentiable image path"):
        lx.image_pixels(images)

"""The published multimodal architectures built offline with random weights:
nlpconnect/vit-gpt2-image-captioning (config, GPT-2 tokenizer and ViT preprocessor from the
reference kit; no weights) and unc-nlp/lxmert-base-uncased (= ``LxmertConfig()`` defaults)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from tiny_models import write_tiny_tokenizer  # noqa: E402
from vlprobe.modality import TAG_IMAGE, TAG_SPECIAL  # noqa: E402
from vlprobe.models import load_model  # noqa: E402
from vlprobe.models.base import ModelSpec  # noqa: E402

GPT2_EOS = 50256


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((300, 400, 3)) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def vit_gpt2_dir(reference_dir) -> Path:
    path = reference_dir / "model_configs" / "vit-gpt2-image-captioning"
    if not (path / "config.json").is_file():
        pytest.skip(f"no vit-gpt2 config in the reference kit ({path})")
    return path


def test_vit_gpt2_architecture_tokenizer_and_processor(vit_gpt2_dir):
    """Sites, real GPT-2 tokenizer, real ViT preprocessing. No forward: building the 240M
    random parameters and one forward take ~30-45 s on the shared 2-core test machine
    (see test_vit_gpt2_shallow_forward for a forward at the published widths)."""
    a = load_model(ModelSpec("vit_gpt2", config=str(vit_gpt2_dir), random_init=True))
    assert len(a.layer_sites("image")) == 13 and len(a.layer_sites("pair")) == 13
    assert sum(s.endswith(".t2v.attn") for s in a.sites()) == 12
    assert a.sites()[-1] == "text.pooled" and "vision.blocks.11.attn" in a.sites()
    assert a.max_text_length() == 1024
    batch = a.prepare([(_image(), "a cat sitting on a red car")], "pair")
    ids = batch.inputs["decoder_input_ids"][0].tolist()
    assert ids[0] == GPT2_EOS  # decoder_start_token_id, as vit-gpt2 generates
    assert ids[1:] == a.tokenizer("a cat sitting on a red car")["input_ids"]
    assert GPT2_EOS not in ids[1:]
    assert tuple(batch.inputs["pixel_values"].shape) == (1, 3, 224, 224)
    ident = a.identity()["preprocess"]
    assert ident["image"]["image_mean"] == [0.5, 0.5, 0.5]
    assert ident["text"]["decoder_start_token_id"] == GPT2_EOS
    long = a.prepare([(_image(), "cat " * 1100), (_image(), "a dog")], "pair")
    assert long.n_truncated == 1 and long.inputs["decoder_input_ids"].shape[1] == 1024


def test_vit_gpt2_shallow_forward(vit_gpt2_dir, tmp_path):
    """The published widths, heads, vocabulary, tokenizer and 224 px preprocessing with one
    encoder and one decoder block: a real-size pair forward, tags and generation."""
    d = tmp_path / "vit-gpt2-1+1"
    shutil.copytree(vit_gpt2_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["encoder"]["num_hidden_layers"] = 1
    cfg["decoder"]["n_layer"] = 1
    (d / "config.json").write_text(json.dumps(cfg))
    a = load_model(ModelSpec("vit_gpt2", config=str(d), random_init=True))
    batch = a.prepare([(_image(), "a cat"), (_image(), "a dog on a sofa")], "pair")
    trace = a.forward(batch, a.sites())
    t = batch.inputs["decoder_input_ids"].shape[1]
    assert trace.attentions["cross.blocks.0.t2v.attn"].shape == (2, 12, t, 197)
    assert trace.hidden["vision.blocks.0"].shape == (2, 197, 768)
    assert trace.hidden["text.pooled"].shape == (2, 768)
    vision = trace.tags_by_stream["vision"]
    assert (vision[:, 0] == TAG_SPECIAL).all() and (vision[:, 1:] == TAG_IMAGE).all()
    gen = a.generate_with_attention([_image()], max_length=4)
    assert gen.cross_attention[0].shape == (1, 12, len(gen.token_ids[0]), 197)


@pytest.mark.slow
def test_lxmert_base_defaults_random_init(tmp_path):
    """unc-nlp/lxmert-base-uncased = LxmertConfig() defaults (9 language, 5
    object-relationship, 5 cross layers, 2048-d region features), built offline with
    random weights; one forward on 36 file regions."""
    from transformers import LxmertConfig

    d = tmp_path / "lxmert-base"
    write_tiny_tokenizer(d, style="bert", model_max_length=512)
    LxmertConfig().save_pretrained(str(d))
    rng = np.random.default_rng(0)
    corner = rng.random((1, 36, 2)) * 0.5
    regions = tmp_path / "regions.npz"
    np.savez(regions, **{  # the per-image keyed format of vlprobe.models.regions
        "img/features": rng.random((36, 2048)).astype(np.float32),
        "img/boxes": np.concatenate([corner, corner + 0.4], axis=2)[0].astype(np.float32)})
    a = load_model(ModelSpec("lxmert", config=str(d), random_init=True,
                             options={"regions": {"source": "file", "path": str(regions)}}))
    assert len(a.layer_sites("pair")) == 1 + 9 + 5
    assert len(a.stream_layer_sites("vision")) == 1 + 5 + 5
    assert sum(s.endswith(".t2v.attn") for s in a.sites()) == 5
    assert a.max_text_length() == 512
    from PIL import Image

    image = Image.new("RGB", (32, 32))
    image.info["image_id"] = "img"  # what Stimuli.payloads sets; the regions file is keyed by it
    trace = a.forward(a.prepare([(image, "a cat on a red car")], "pair"),
                      ["cross.blocks.4.t2v.attn", "cross.blocks.4.v2t.attn", "fusion.pooled"])
    assert trace.attentions["cross.blocks.4.t2v.attn"].shape == (1, 12, 8, 36)
    assert trace.attentions["cross.blocks.4.v2t.attn"].shape == (1, 12, 36, 8)
    assert trace.hidden["fusion.pooled"].shape == (1, 768)

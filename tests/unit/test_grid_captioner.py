"""The grid_captioner adapter on its tiny checkpoint (untrained decoder): sites against the
GPT-2 decoder's own outputs, teacher-forcing inputs and tags, loading errors, the
differentiable path (registry-wide conformance: test_adapters.py; training and generation:
test_train_captioner.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from tiny_models import tiny_spec  # noqa: E402
from vlprobe.errors import ConfigError, ModelLoadError  # noqa: E402
from vlprobe.modality import TAG_IMAGE, TAG_PAD, TAG_SPECIAL, TAG_TEXT  # noqa: E402
from vlprobe.models import load_model  # noqa: E402

TEXTS = ["a photo of a cat .", "the dog sits"]


def _images(n: int = 2):
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((40 + 6 * i, 48, 3)) * 255).astype("uint8"))
            for i in range(n)]


@pytest.fixture(scope="module")
def cap(tmp_path_factory):
    return load_model(tiny_spec("grid_captioner", tmp_path_factory.mktemp("grid_cap")))


def test_sites_and_paths(cap):
    assert cap.modalities == ("image", "pair")
    assert cap.layer_sites("pair") == ["text.stem", "text.blocks.0", "text.blocks.1"]
    assert cap.layer_sites("image")[-1] == "vision.head"
    assert cap.embedding_site("image") == "vision.pooled"
    assert cap.embedding_site("pair") == "text.pooled"
    sites = cap.sites()
    assert {"vision.memory", "cross.blocks.1.t2v.attn", "text.blocks.0.attn"} <= set(sites)
    assert sites.index("vision.memory") < sites.index("text.stem")
    with pytest.raises(ConfigError, match="does not take text inputs"):
        cap.prepare(TEXTS, "text")
    with pytest.raises(ConfigError, match="cannot be captured from image"):
        cap.forward(cap.prepare(_images(), "image"), ["text.blocks.0"])


def test_teacher_forcing_inputs_and_tags(cap):
    batch = cap.prepare(list(zip(_images(), TEXTS)), "pair")
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    assert (ids[:, 0] == 1).all()  # <bos>
    words = cap.tokenizer(TEXTS[1], add_special_tokens=False)["input_ids"]
    assert ids[1, 1 : len(words) + 1].tolist() == words and 2 not in ids.tolist()[1]
    assert mask.sum(1).tolist() == cap.text_lengths(TEXTS)
    trace = cap.forward(batch, ["text.pooled", "vision.memory"])
    text, vision = trace.tags_by_stream["text"], trace.tags_by_stream["vision"]
    assert (text[:, 0] == TAG_SPECIAL).all() and torch.equal(text == TAG_PAD, mask == 0)
    assert ((text == TAG_TEXT) == (mask.bool() & (torch.arange(ids.shape[1]) > 0))).all()
    assert vision.shape == (2, 4) and (vision == TAG_IMAGE).all()
    assert trace.hidden["vision.memory"].shape == (2, 4, 32)


def test_sites_equal_the_decoders_own_outputs(cap):
    batch = cap.prepare(list(zip(_images(), TEXTS)), "pair")
    trace = cap.forward(batch, cap.sites())
    tower = cap.tower.forward(cap.tower.prepare(_images(), "image"), cap.tower.sites())
    for site in cap.tower.sites():
        assert torch.allclose(trace.hidden[site], tower.hidden[site], atol=1e-5), site
    cells = torch.nn.functional.adaptive_avg_pool2d(tower.hidden["vision.blocks.15"], 2)
    grid = cells.flatten(2).transpose(1, 2)  # [B, 4, 320] row-major
    dec = cap.decoder
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    with torch.no_grad():
        memory = dec.memory(grid)
        out = dec.lm(input_ids=ids, attention_mask=mask, encoder_hidden_states=memory,
                     output_hidden_states=True, output_attentions=True, use_cache=False)
    assert torch.allclose(trace.hidden["vision.memory"], memory, atol=1e-5)
    for j, site in enumerate(cap.layer_sites("pair")):
        want = out.hidden_states[j]
        if j == len(out.hidden_states) - 1:  # HF's last entry has ln_f applied
            with torch.no_grad():
                got = dec.lm.transformer.ln_f(trace.hidden[site])
        else:
            got = trace.hidden[site]
        assert torch.allclose(got, want, atol=1e-5), site
    for i in range(2):
        assert torch.allclose(trace.attentions[f"text.blocks.{i}.attn"], out.attentions[i],
                              atol=1e-6)
        assert torch.allclose(trace.attentions[f"cross.blocks.{i}.t2v.attn"],
                              out.cross_attentions[i], atol=1e-6)
    last = mask.sum(1) - 1
    assert torch.allclose(trace.hidden["text.pooled"],
                          out.hidden_states[-1][torch.arange(2), last], atol=1e-5)
    with torch.no_grad():
        logits = dec.lm.lm_head(out.hidden_states[-1])
    assert torch.allclose(cap.teacher_forced_logits(batch), logits, atol=1e-4)


def test_differentiable_memory(cap):
    px = cap.image_pixels(_images()).requires_grad_(True)
    out = cap.forward_differentiable(px, ["vision.memory", "vision.pooled"])
    ref = cap.forward(cap.prepare(_images(), "image"), ["vision.memory"]).hidden
    assert torch.allclose(out["vision.memory"].detach(), ref["vision.memory"], atol=1e-4)
    out["vision.memory"].sum().backward()
    assert px.grad is not None and px.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="cannot be captured from image"):
        cap.forward_differentiable(px, ["text.pooled"])


def test_loading_errors(cap, tmp_path):
    spec = cap.spec
    with pytest.raises(ModelLoadError, match="set checkpoint"):
        load_model(replace(spec, checkpoint=None))
    with pytest.raises(ModelLoadError, match="random_init is not supported"):
        load_model(replace(spec, random_init=True))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(replace(spec, checkpoint=str(tmp_path / "nope")))
    aligned = tiny_spec("aligned_dual", tmp_path)
    with pytest.raises(ModelLoadError, match="holds a 'aligned_dual' checkpoint"):
        load_model(replace(spec, checkpoint=aligned.checkpoint))
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(spec.checkpoint, bad)
    config = json.loads((bad / "config.json").read_text())
    config["decoder"]["width"] = 16
    config["tensors"]["visual.weight"] = [16, 320]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"visual\.weight.*shape \[32, 320\]"):
        load_model(replace(spec, checkpoint=str(bad))).decoder  # noqa: B018

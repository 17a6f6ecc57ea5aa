"""Conformance tests over EVERY registered model adapter, on tiny seeded random models.

Each registered adapter has a tiny spec in ``tests/tiny_models.py`` (``TINY_SPECS``). Golden
numbers live in ``tests/unit/golden/adapters.json``;
regenerate them with ``VLPROBE_REGEN_GOLDEN=1``.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from tiny_models import TINY_SPECS, tiny_spec  # noqa: E402
from vlprobe.errors import ConfigError, ModelLoadError  # noqa: E402
from vlprobe.models import MODELS, load_model  # noqa: E402
from vlprobe.models._hooks import count_hooks  # noqa: E402
from vlprobe.models.base import ModelSpec  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "adapters.json"
REGEN = os.environ.get("VLPROBE_REGEN_GOLDEN") == "1"
TEXTS = ["a photo of a cat .", "the stock market rises today , very quite big"]
NAMES = MODELS.names()


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    shapes = [(40, 48), (36, 30)]
    return [Image.fromarray((rng.random((*s, 3)) * 255).astype("uint8")) for s in shapes]


def _payloads(modality: str):
    return _images() if modality == "image" else TEXTS


def _prefix(modality: str) -> str:
    return "vision." if modality == "image" else "text."


def _unavailable(name: str) -> str | None:
    """Why an adapter of an optional extra cannot run here (``cls.unavailable()``), or None."""
    check = getattr(MODELS.get(name), "unavailable", None)
    return check() if check is not None else None


def _tiny(name: str, tmp: Path, seed: int = 0) -> ModelSpec:
    assert name in TINY_SPECS, f"adapter {name!r} has no tiny spec in tests/tiny_models.py"
    why = _unavailable(name)
    if why:
        pytest.skip(f"adapter {name!r} is not usable here: {why}")
    return tiny_spec(name, tmp, seed=seed)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="module")
def adapters(tiny_dir):
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_model(_tiny(name, tiny_dir))
        return cache[name]

    return get


def _pool(adapter, trace, site: str, modality: str):
    x = trace.hidden[site]
    if x.ndim == 2:
        return x
    if x.ndim == 4:  # CNN feature map: spatial mean
        return x.mean(dim=(2, 3))
    how = adapter.pooling_for(modality)
    if how == "cls":
        return x[:, 0]
    if how == "eos":
        return x[torch.arange(x.shape[0]), trace.eos_index]
    mask = trace.attention_mask
    if mask is None:
        return x.mean(dim=1)
    m = mask.float().unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1)


# -- registry-wide conformance ------------------------------------------------------------
def test_every_adapter_has_a_tiny_spec(tiny_dir):
    assert NAMES, "no adapters registered"
    for name in NAMES:
        assert name in TINY_SPECS, f"adapter {name!r} has no tiny spec in tests/tiny_models.py"
        spec = tiny_spec(name, tiny_dir)
        assert isinstance(spec, ModelSpec)
        assert MODELS.canonical(spec.adapter) == name


@pytest.mark.parametrize("name", NAMES)
def test_offline_status_is_cheap_and_typed(name):
    ok, why = MODELS.get(name).offline_status()
    assert isinstance(ok, bool) and isinstance(why, str) and why


@pytest.mark.parametrize("name", NAMES)
def test_sites_and_shapes(name, adapters):
    a = adapters(name)
    sites = a.sites()
    assert len(sites) == len(set(sites))
    for modality in a.modalities:
        layers = a.layer_sites(modality)
        assert set(layers) <= set(sites)
        assert [a.layer_index(s) for s in layers] == list(range(len(layers)))
        emb = a.embedding_site(modality)
        assert emb in sites
        tower = [s for s in sites if s.startswith(_prefix(modality))]
        batch = a.prepare(_payloads(modality), modality)
        assert len(batch) == 2
        trace = a.forward(batch, tower)
        assert set(trace.hidden) | set(trace.attentions) == set(tower)
        for site in layers:
            x = trace.hidden[site]
            assert x.dtype == torch.float32 and x.shape[0] == 2
            assert x.ndim in (3, 4), (site, x.shape)
            assert torch.isfinite(x).all()
        assert trace.hidden[emb].ndim == 2 and trace.hidden[emb].shape[0] == 2
        for site, att in trace.attentions.items():
            hidden = trace.hidden[site.removesuffix(".attn")]
            t = hidden.shape[1]
            assert att.shape[0] == 2 and att.shape[2:] == (t, t), (site, att.shape)
            rows = att.sum(-1)  # [B, H, T]
            if trace.attention_mask is not None:
                real = trace.attention_mask.bool()[:, None, :].expand_as(rows)
                rows = rows[real]
            assert torch.allclose(rows, torch.ones_like(rows), atol=1e-4)
        if modality == "text":
            assert trace.attention_mask.shape == batch.inputs["input_ids"].shape
            assert trace.eos_index.shape == (2,)
            assert a.pooling_for("text") in ("mean", "cls", "eos")
        assert a.default_pooling in ("mean", "cls", "eos")


@pytest.mark.parametrize("name", NAMES)
def test_hooks_removed_after_forward_and_after_errors(name, adapters):
    a = adapters(name)
    modality = a.modalities[0]
    batch = a.prepare(_payloads(modality), modality)
    a.forward(batch, [a.embedding_site(modality)])  # transformers installs its own hooks once
    before = count_hooks(a.model)
    a.forward(batch, a.layer_sites(modality))
    assert count_hooks(a.model) == before
    if modality == "image":  # one colour channel: the stem conv fails
        bad = replace(batch, inputs={"pixel_values": batch.inputs["pixel_values"][:, :1]})
    else:  # token ids outside the vocabulary: the embedding lookup fails
        ids = batch.inputs["input_ids"] + 10**6
        bad = replace(batch, inputs={**batch.inputs, "input_ids": ids})
    with pytest.raises(Exception):  # noqa: B017 - any failure inside the forward
        a.forward(bad, a.layer_sites(modality))
    assert count_hooks(a.model) == before


@pytest.mark.parametrize("name", NAMES)
def test_seeded_random_init_is_deterministic(name, tiny_dir, adapters):
    a0 = adapters(name)
    a0b = load_model(_tiny(name, tiny_dir, seed=0))
    a1 = load_model(_tiny(name, tiny_dir, seed=1))
    modality = a0.modalities[0]
    site = a0.layer_sites(modality)[-1]
    outs = []
    for a in (a0, a0b, a1):
        batch = a.prepare(_payloads(modality), modality)
        outs.append(a.forward(batch, [site]).hidden[site])
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])
    assert a0.identity() == a0b.identity()
    assert a0.identity() != a1.identity()
    json.dumps(a0.identity())


@pytest.mark.parametrize("name", NAMES)
def test_unknown_site_suggests(name, adapters):
    a = adapters(name)
    modality = a.modalities[0]
    typo = a.layer_sites(modality)[1].replace("blocks", "blokcs").replace("stages", "stagse")
    with pytest.raises(ConfigError, match=r"[Dd]id you mean"):
        a.check_sites([typo])
    batch = a.prepare(_payloads(modality), modality)
    with pytest.raises(ConfigError, match=r"[Dd]id you mean"):
        a.forward(batch, [typo])


@pytest.mark.parametrize("name", NAMES)
def test_truncation_is_counted(name, adapters):
    a = adapters(name)
    if "text" not in a.modalities:
        assert a.max_text_length() is None
        with pytest.raises(NotImplementedError):
            a.text_lengths(["x"])
        return
    max_len = a.max_text_length()
    long_text = " ".join(["cat"] * (max_len + 10))
    lengths = a.text_lengths(["a cat", long_text])
    assert lengths[1] > max_len >= lengths[0]
    batch = a.prepare(["a cat", long_text], "text")
    assert batch.n_truncated == 1
    assert batch.inputs["input_ids"].shape[1] == max_len
    short = a.prepare(["a cat", "a dog sits"], "text")
    assert short.n_truncated == 0
    longest = max(a.text_lengths(["a cat", "a dog sits"]))
    padded = max_len if getattr(a, "text_padding", "longest") == "max_length" else longest
    assert short.inputs["input_ids"].shape[1] == padded


@pytest.mark.parametrize("name", NAMES)
def test_weightless_config_dir_needs_random_init(name, tiny_dir, tmp_path):
    spec = _tiny(name, tiny_dir)
    cfg = Path(spec.config) if spec.config else tmp_path
    (cfg / "config.json").exists() or (cfg / "config.json").write_text("{}")
    bad = replace(spec, random_init=False, checkpoint=str(cfg), config=None)
    with pytest.raises(ModelLoadError, match="random_init"):
        load_model(bad)


@pytest.mark.parametrize("name", NAMES)
def test_missing_local_path_is_named(name, tiny_dir, tmp_path):
    missing = str(tmp_path / "does" / "not" / "exist")
    spec = replace(_tiny(name, tiny_dir), random_init=False, checkpoint=missing, config=None)
    with pytest.raises(ModelLoadError, match="does not exist") as err:
        load_model(spec)
    assert missing in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_hub_id_offline_is_a_clear_error(name, tiny_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = "vlprobe-test/definitely-not-cached-model"
    spec = replace(_tiny(name, tiny_dir), random_init=False, checkpoint=hub_id, config=None)
    with pytest.raises(ModelLoadError) as err:
        load_model(spec)
    msg = str(err.value)
    assert hub_id in msg
    assert "Traceback" not in msg and len(msg) < 600
    if name != "efficientnet_lite0":
        assert "offline" in msg and "local directory" in msg


# -- the differentiable image path (V6 PGD, V8 feature visualisation) ----------------------
@pytest.mark.parametrize("name", NAMES)
def test_differentiable_image_path(name, adapters):
    """image_pixels + normalize_pixels reproduce prepare; forward_differentiable matches the
    no-grad forward and carries finite, non-zero pixel gradients; forward stays no-grad; pixels
    outside [0, 1] are refused. Models without an image tower refuse all three methods."""
    from vlprobe.errors import DataError

    a = adapters(name)
    images = _images()
    if "image" not in a.modalities:
        for call in (
            lambda: a.image_pixels(images),
            lambda: a.normalize_pixels(torch.zeros(1, 3, 8, 8)),
            lambda: a.forward_differentiable(torch.zeros(1, 3, 8, 8), ["text.stem"]),
        ):
            with pytest.raises(ConfigError, match="no differentiable image path"):
                call()
        return
    pixels = a.image_pixels(images)
    want = a.prepare(images, "image").inputs["pixel_values"]
    assert pixels.dtype == torch.float32 and pixels.shape == want.shape
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0
    assert torch.allclose(a.normalize_pixels(pixels), want, atol=1e-5)  # (a)
    emb, last = a.embedding_site("image"), a.layer_sites("image")[-1]
    before = count_hooks(a.model)
    px = pixels.clone().requires_grad_(True)
    got = a.forward_differentiable(px, [emb, last])
    assert count_hooks(a.model) == before
    ref = a.forward(a.prepare(images, "image"), [emb, last])
    for site in (emb, last):  # (b)
        assert got[site].requires_grad
        assert torch.allclose(got[site].detach().float().cpu(), ref.hidden[site], atol=1e-4)
    w = torch.randn(got[emb].shape, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((got[emb] * w).sum(), px)  # (c)
    assert grad.shape == px.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    for tensor in [*ref.hidden.values(), *ref.attentions.values()]:  # (d)
        assert tensor.grad_fn is None and not tensor.requires_grad
    assert not a.model.training
    for bad in (pixels * 2.0 - 0.5, want):  # outside [0, 1]; already normalised
        with pytest.raises(DataError, match=r"\[0, 1\]"):
            a.forward_differentiable(bad, [emb])
    with pytest.raises(DataError, match=r"\[B, 3, S, S\]"):
        a.forward_differentiable(pixels[:, :1], [emb])


# -- golden numbers -----------------------------------------------------------------------
def _golden_stats(a) -> dict[str, dict[str, list[float] | float]]:
    out = {}
    for modality in a.modalities:
        batch = a.prepare(_payloads(modality), modality)
        sites = [*a.layer_sites(modality), a.embedding_site(modality)]
        trace = a.forward(batch, sites)
        for site in sites:
            v = _pool(a, trace, site, modality)
            out[site] = {
                "mean": float(v.mean()),
                "std": float(v.std()),
                "first": [float(x) for x in v[0, :4]],
            }
    return out


def test_golden_outputs(adapters):
    usable = [name for name in NAMES if not _unavailable(name)]
    got = {name: _golden_stats(adapters(name)) for name in usable}
    if REGEN or not GOLDEN.exists():
        if not REGEN:
            pytest.fail(f"{GOLDEN} is missing: run with VLPROBE_REGEN_GOLDEN=1 to create it")
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        kept = {k: v for k, v in old.items() if k in NAMES and k not in got}  # not usable here
        GOLDEN.write_text(json.dumps({**kept, **got}, indent=1, sort_keys=True) + "\n")
        pytest.skip("golden outputs regenerated")
    want = json.loads(GOLDEN.read_text())
    missing = sorted(set(usable) - set(want))
    assert not missing, f"no golden numbers for {missing}: run with VLPROBE_REGEN_GOLDEN=1"
    for name in usable:
        assert set(got[name]) == set(want[name]), name
        for site, stats in want[name].items():
            for key in ("mean", "std", "first"):
                np.testing.assert_allclose(
                    got[name][site][key], stats[key], atol=1e-4, err_msg=f"{name} {site} {key}"
                )


# -- family specifics ---------------------------------------------------------------------
def test_clip_eos_pooling_matches_hf(adapters):
    a = adapters("clip")
    batch = a.prepare(TEXTS, "text")
    trace = a.forward(batch, ["text.blocks.1", "text.proj"])
    ids = batch.inputs["input_ids"]
    eos = a.config.text_config.eos_token_id
    for row in range(ids.shape[0]):
        assert ids[row, trace.eos_index[row]] == eos
        assert (ids[row, : trace.eos_index[row]] != eos).all()
    model = a.model
    with torch.no_grad():
        last = model.text_model.final_layer_norm(trace.hidden["text.blocks.1"])
        emb = model.text_projection(last[torch.arange(2), trace.eos_index])
    assert torch.allclose(emb, trace.hidden["text.proj"], atol=1e-5)
    # legacy configs (eos_token_id == 2) pool at argmax(input_ids), like HF CLIP
    cfg = a.config.text_config
    old = cfg.eos_token_id
    try:
        cfg.eos_token_id = 2
        legacy = a._eos_index({"input_ids": torch.tensor([[0, 5, 9, 1, 1]])})
        assert legacy.tolist() == [2]
    finally:
        cfg.eos_token_id = old
    assert a.pooling_for("text") == "eos" and a.pooling_for("image") == "cls"


def test_clip_projected_embeddings_and_logit_scale(adapters):
    a = adapters("clip")
    assert a.embedding_site("image") == "vision.proj" and a.embedding_site("text") == "text.proj"
    img = a.forward(a.prepare(_images(), "image"), ["vision.proj"]).hidden["vision.proj"]
    txt = a.forward(a.prepare(TEXTS, "text"), ["text.proj"]).hidden["text.proj"]
    assert img.shape == (2, 16) and txt.shape == (2, 16)
    assert not torch.allclose(img.norm(dim=1), torch.ones(2))  # raw, not normalised
    with torch.no_grad():
        ref = a.model(
            **a.prepare(TEXTS, "text").inputs, pixel_values=a.prepare(_images(), "image").inputs[
                "pixel_values"]
        )
    unit = torch.nn.functional.normalize
    assert torch.allclose(unit(img, dim=1), unit(ref.image_embeds, dim=1), atol=1e-5)
    assert torch.allclose(unit(txt, dim=1), unit(ref.text_embeds, dim=1), atol=1e-5)
    scale = a.logit_scale()
    assert scale["bias"] is None and scale["scale"] == pytest.approx(
        float(a.model.logit_scale.exp())
    )
    cos = torch.nn.functional.normalize(img, dim=1) @ torch.nn.functional.normalize(txt, dim=1).T
    assert torch.allclose(scale["scale"] * cos, ref.logits_per_image, atol=1e-4)


def test_bert_embedding_is_mean_of_last_block(adapters):
    a = adapters("hf_text")
    batch = a.prepare(TEXTS, "text")
    trace = a.forward(batch, ["text.blocks.1", "text.pooled"])
    m = trace.attention_mask.float().unsqueeze(-1)
    mean = (trace.hidden["text.blocks.1"] * m).sum(1) / m.sum(1)
    assert torch.allclose(mean, trace.hidden["text.pooled"], atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_causal_lms_pad_right_with_eos(arch, tmp_path):

    a = load_model(tiny_spec("hf_text", tmp_path, arch=arch))
    assert a.tokenizer.pad_token is not None
    batch = a.prepare(["a cat", "the dog sits on the big red car"], "text")
    mask = batch.inputs["attention_mask"]
    assert mask[0, 0] == 1 and mask[0, -1] == 0  # right padding
    trace = a.forward(batch, a.sites())
    assert trace.eos_index.tolist() == (mask.sum(1) - 1).tolist()
    att = trace.attentions["text.blocks.0.attn"]
    assert torch.allclose(att.triu(1), torch.zeros_like(att))  # causal
    assert a.layer_sites("text") == ["text.stem", "text.blocks.0", "text.blocks.1"]


def test_pooling_option_and_vision_only_errors(tiny_dir):

    spec = replace(tiny_spec("hf_text", tiny_dir), options={"pooling": "cls"})
    a = load_model(spec)
    assert a.default_pooling == "cls" and a.pooling_for("text") == "cls"
    with pytest.raises(ConfigError):
        load_model(replace(spec, options={"pooling": "median"}))
    vit = load_model(_tiny("hf_vit", tiny_dir))
    with pytest.raises(ConfigError):
        vit.prepare(["text"], "text")
    with pytest.raises(ConfigError):
        vit.layer_sites("text")


def test_bad_dtype_is_config_error(tiny_dir):
    with pytest.raises(ConfigError, match="dtype"):
        load_model(replace(_tiny("hf_vit", tiny_dir), dtype="float64"))


def test_resnet_and_efficientnet_sites(adapters):
    r = adapters("hf_resnet")
    assert r.layer_sites("image") == ["vision.stem", "vision.stages.0", "vision.stages.1"]
    e = adapters("efficientnet_lite0")
    layers = e.layer_sites("image")
    assert layers[0] == "vision.stem" and layers[-1] == "vision.head" and len(layers) == 18
    batch = e.prepare(_images(), "image")
    assert tuple(batch.inputs["pixel_values"].shape) == (2, 3, 64, 64)
    trace = e.forward(batch, ["vision.head", "vision.pooled", "vision.logits"])
    assert trace.hidden["vision.head"].shape[1] == 1280
    head = trace.hidden["vision.head"]
    assert torch.allclose(head.mean((2, 3)), trace.hidden["vision.pooled"])
    assert trace.hidden["vision.logits"].shape == (2, 1000)
    assert not e.model.training


def test_resolve_source_rules(tmp_path):
    from vlprobe.models.hf_source import looks_like_path, resolve_source

    assert not looks_like_path("openai/clip-vit-base-patch32")
    assert looks_like_path("./models/clip") and looks_like_path("/abs/dir")
    assert resolve_source(ModelSpec("clip", checkpoint="openai/clip-vit-base-patch32")).kind == (
        "hub"
    )
    with pytest.raises(ModelLoadError, match="random_init needs"):
        resolve_source(ModelSpec("clip", random_init=True))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert resolve_source(ModelSpec("clip", checkpoint=str(tmp_path))).kind == "local"


@pytest.mark.parametrize("name", NAMES)
def test_local_checkpoint_roundtrip(name, tiny_dir, tmp_path, adapters):
    """Weights saved to a local directory load back (random_init false) to the same numbers."""
    import shutil

    a = adapters(name)
    spec = _tiny(name, tiny_dir)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    if hasattr(a.model, "save_pretrained"):
        a.model.save_pretrained(str(ckpt))
        for f in Path(spec.config).iterdir():
            if f.name != "config.json":
                shutil.copy(f, ckpt / f.name)
    else:
        torch.save(a.model.state_dict(), ckpt / "weights.pth")
    b = load_model(replace(spec, random_init=False, checkpoint=str(ckpt), config=None))
    assert b.identity()["random_init"] is False
    assert "files" in b.identity()
    for modality in a.modalities:
        site = a.layer_sites(modality)[-1]
        want = a.forward(a.prepare(_payloads(modality), modality), [site]).hidden[site]
        got = b.forward(b.prepare(_payloads(modality), modality), [site]).hidden[site]
        assert torch.allclose(want, got, atol=1e-6)


def test_bfloat16_runs_and_returns_float32(tiny_dir):
    a = load_model(replace(_tiny("hf_vit", tiny_dir), dtype="bfloat16"))
    trace = a.forward(a.prepare(_images(), "image"), ["vision.blocks.1", "vision.pooled"])
    assert trace.hidden["vision.blocks.1"].dtype == torch.float32
    assert a.identity()["dtype"] == "bfloat16"


# -- SigLIP ---------------------------------------------------------------------------------
def test_siglip_embeddings_match_the_model_and_logits(tiny_dir):
    """proj = SiglipModel's image_embeds / text_embeds (before normalisation), pooled exactly
    as the model pools (MAP head; last position + head), and the model's logits are
    ``scale * cos + bias``."""
    a = load_model(_tiny("siglip", tiny_dir))
    model = a.model
    with torch.no_grad():  # non-trivial scale and bias (random init sets both to 0)
        model.logit_scale.fill_(1.7)
        model.logit_bias.fill_(-3.2)
    img_batch, txt_batch = a.prepare(_images(), "image"), a.prepare(TEXTS, "text")
    vis = a.forward(img_batch, [*a.layer_sites("image"), "vision.proj"])
    txt = a.forward(txt_batch, [*a.layer_sites("text"), "text.proj"])
    img, emb = vis.hidden["vision.proj"], txt.hidden["text.proj"]
    with torch.no_grad():
        ref = model(input_ids=txt_batch.inputs["input_ids"], pixel_values=img_batch.inputs[
            "pixel_values"])
        v_out = model.vision_model(pixel_values=img_batch.inputs["pixel_values"],
                                   output_hidden_states=True)
        t_out = model.text_model(input_ids=txt_batch.inputs["input_ids"],
                                 output_hidden_states=True)
        # pooling by hand, as the model does
        last_v = model.vision_model.post_layernorm(vis.hidden["vision.blocks.1"])
        last_t = model.text_model.final_layer_norm(txt.hidden["text.blocks.1"])
        head_t = model.text_model.head(last_t[torch.arange(2), txt.eos_index])
    unit = torch.nn.functional.normalize
    assert torch.allclose(img, v_out.pooler_output, atol=1e-6)
    assert torch.allclose(emb, t_out.pooler_output, atol=1e-6)
    assert torch.allclose(unit(img, dim=1), ref.image_embeds, atol=1e-5)
    assert torch.allclose(unit(emb, dim=1), ref.text_embeds, atol=1e-5)
    assert torch.allclose(model.vision_model.head(last_v), img, atol=1e-5)
    assert torch.allclose(head_t, emb, atol=1e-5)
    assert not torch.allclose(img.norm(dim=1), torch.ones(2))  # raw, not normalised
    for out, trace, modality in ((v_out, vis, "image"), (t_out, txt, "text")):
        sites = a.layer_sites(modality)
        assert len(out.hidden_states) == len(sites)
        for hs, site in zip(out.hidden_states, sites):
            assert torch.allclose(hs, trace.hidden[site], atol=1e-6), site
    scale = a.logit_scale()
    assert scale["scale"] == pytest.approx(np.exp(1.7), rel=1e-6)
    assert scale["bias"] == pytest.approx(-3.2, rel=1e-6)
    cos = unit(img, dim=1) @ unit(emb, dim=1).T
    assert torch.allclose(scale["scale"] * cos + scale["bias"], ref.logits_per_image, atol=1e-4)
    assert a.embedding_site("image") == "vision.proj" and a.embedding_site("text") == "text.proj"
    assert a.pooling_for("image") == "mean" and a.pooling_for("text") == "eos"


def test_siglip_pads_to_max_length_without_a_model_mask(adapters):
    """The published pipeline: pad with ``</s>`` to 64 (here 16) tokens and run the text tower
    on all of them; a text's embedding does not depend on its batch."""
    a = adapters("siglip")
    max_len = a.max_text_length()
    batch = a.prepare(TEXTS, "text")
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    eos = a.tokenizer.eos_token_id
    assert ids.shape == (2, max_len) and eos == a.tokenizer.pad_token_id
    assert (ids[:, -1] == eos).all()  # position T-1 (the one pooled) is always </s>
    lengths = a.text_lengths(TEXTS)
    assert mask.sum(1).tolist() == lengths  # the trace mask marks the texts' own tokens
    trace = a.forward(batch, ["text.blocks.1", "text.proj"])
    assert trace.eos_index.tolist() == [max_len - 1] * 2
    assert torch.equal(trace.attention_mask, mask)
    alone = a.forward(a.prepare(TEXTS[:1], "text"), ["text.proj"]).hidden["text.proj"]
    assert torch.allclose(alone[0], trace.hidden["text.proj"][0], atol=1e-5)
    # the model attends to its padding (no mask is passed): masking it changes the output
    with torch.no_grad():
        masked = a.model.text_model(input_ids=ids, attention_mask=mask).pooler_output
    assert not torch.allclose(masked, trace.hidden["text.proj"], atol=1e-3)
    assert a.identity()["preprocess"]["text"]["padding"] == "max_length/right"


def test_siglip_published_architecture_from_default_config(tmp_path):
    """google/siglip-base-patch16-224 = SiglipConfig defaults: 12 + 12 blocks, width 768,
    224 px, patch 16, 64 text positions; 203.16 M parameters (counted on the meta device, no
    weights, no forward)."""
    from transformers import SiglipConfig, SiglipModel

    SiglipConfig().save_pretrained(str(tmp_path))
    a = load_model(ModelSpec(adapter="siglip", config=str(tmp_path), random_init=True))
    vc, tc = a.config.vision_config, a.config.text_config
    assert (vc.num_hidden_layers, tc.num_hidden_layers) == (12, 12)
    assert (vc.hidden_size, tc.hidden_size, vc.image_size, vc.patch_size) == (768, 768, 224, 16)
    assert a.max_text_length() == 64 and tc.vocab_size == 32000
    assert len(a.layer_sites("image")) == 13 and len(a.layer_sites("text")) == 13
    assert len(a.sites()) == 2 * (1 + 2 * 12 + 1)
    assert a._model is None  # the weights are not built by load()
    with torch.device("meta"):
        n_params = sum(p.numel() for p in SiglipModel(a.config).parameters())
    assert n_params == 203_155_970
    proc = a.processor  # the published preprocessing: 224 x 224 bicubic, mean = std = 0.5
    assert proc.size == {"height": 224, "width": 224} and int(proc.resample) == 3
    assert list(proc.image_mean) == [0.5] * 3 and list(proc.image_std) == [0.5] * 3


# -- open_clip (optional extra) -------------------------------------------------------------
def test_open_clip_without_the_extra_is_a_clear_error(tiny_dir):
    """Where open_clip (or a torchvision matching torch) does not import, loading names the
    extra and the torchvision requirement, and ``vlprobe models`` says it is not usable."""
    cls = MODELS.get("open_clip")
    if cls.unavailable() is None:
        pytest.skip("open_clip imports here; the conformance tests cover it")
    with pytest.raises(ModelLoadError) as err:
        load_model(tiny_spec("open_clip", tiny_dir))
    msg = str(err.value)
    assert "vlprobe[open_clip]" in msg and "torchvision" in msg and "Traceback" not in msg
    ok, why = cls.offline_status()
    assert ok is False and "vlprobe[open_clip]" in why


def test_open_clip_broken_torchvision_import_is_a_clear_error(tiny_dir, monkeypatch):
    """A torchvision built for another torch fails with RuntimeError (seen here: PyPI's CUDA
    torchvision 0.28.0 beside the CPU torch 2.13.0), not ImportError: still a clear error.
    The failing import is simulated by a meta-path finder (the real one cannot be installed
    into the test environment)."""
    import importlib.abc
    import sys

    class BrokenTorchvision(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname == "open_clip":
                raise RuntimeError("operator torchvision::nms does not exist")
            return None

    monkeypatch.delitem(sys.modules, "open_clip", raising=False)
    monkeypatch.setattr(sys, "meta_path", [BrokenTorchvision(), *sys.meta_path])
    with pytest.raises(ModelLoadError, match=r"RuntimeError: operator torchvision::nms") as err:
        load_model(tiny_spec("open_clip", tiny_dir))
    assert "vlprobe[open_clip]" in str(err.value)
    assert "torchvision::nms" in MODELS.get("open_clip").unavailable()


def test_open_clip_embeddings_pool_as_the_model_does(adapters):
    """proj = open_clip's encode_image / encode_text, recomputed from the hooked last blocks
    with the model's own final norm, pooling and projection; logit scale as the model's."""
    a = adapters("open_clip")
    model = a.model
    vis = a.forward(a.prepare(_images(), "image"), ["vision.stem", "vision.blocks.1",
                                                     "vision.proj"])
    txt_batch = a.prepare(TEXTS, "text")
    txt = a.forward(txt_batch, ["text.blocks.1", "text.proj"])
    ids = txt_batch.inputs["input_ids"]
    with torch.no_grad():
        img = model.visual.ln_post(vis.hidden["vision.blocks.1"])[:, 0] @ model.visual.proj
        last = model.ln_final(txt.hidden["text.blocks.1"])
        emb = last[torch.arange(2), ids.argmax(dim=-1)] @ model.text_projection
        feats_img, feats_txt, scale = model(
            a.prepare(_images(), "image").inputs["pixel_values"], ids
        )
    assert torch.allclose(img, vis.hidden["vision.proj"], atol=1e-5)
    assert torch.allclose(emb, txt.hidden["text.proj"], atol=1e-5)
    unit = torch.nn.functional.normalize
    assert torch.allclose(unit(vis.hidden["vision.proj"], dim=1), feats_img, atol=1e-5)
    assert torch.allclose(unit(txt.hidden["text.proj"], dim=1), feats_txt, atol=1e-5)
    assert a.logit_scale() == {"scale": pytest.approx(float(scale)), "bias": None}
    assert txt.eos_index.tolist() == ids.argmax(dim=-1).tolist()
    assert txt.attention_mask.sum(1).tolist() == a.text_lengths(TEXTS)
    assert a.pooling_for("image") == "cls" and a.pooling_for("text") == "eos"
    assert vis.hidden["vision.stem"].shape == (2, 1 + 16, 32)

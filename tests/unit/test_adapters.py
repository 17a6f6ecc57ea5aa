"""Conformance tests over EVERY registered model adapter, on tiny seeded random models.

Each registered adapter has a tiny spec in ``tests/tiny_models.py`` (``TINY_SPECS``). Golden
numbers live in ``tests/unit/golden/adapters.json``;
regenerate them with ``VLPROBE_REGEN_GOLDEN=1``.
"""

from __future__ import annotations

import inspect
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
from vlprobe.modality import (  # noqa: E402
    STREAMS_OF,
    TAG_IMAGE,
    TAG_NAMES,
    TAG_PAD,
    TAG_SPECIAL,
    TAG_TEXT,
    site_stream,
)
from vlprobe.models import MODELS, load_model  # noqa: E402
from vlprobe.models._hooks import count_hooks, seeded  # noqa: E402
from vlprobe.models.base import ModelSpec  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "adapters.json"
REGEN = os.environ.get("VLPROBE_REGEN_GOLDEN") == "1"
TEXTS = ["a photo of a cat .", "the stock market rises today , very quite big"]
NAMES = MODELS.names()


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    shapes = [(40, 48), (36, 30)]
    return [Image.fromarray((rng.random((*s, 3)) * 255).astype("uint8")) for s in shapes]


def _pair_images() -> list[Image.Image]:
    """Two aspect ratios far apart, so that patch-based fusion models pad one image."""
    rng = np.random.default_rng(1)
    shapes = [(40, 48), (24, 60)]
    return [Image.fromarray((rng.random((*s, 3)) * 255).astype("uint8")) for s in shapes]


def _payloads(modality: str):
    if modality == "pair":
        return list(zip(_pair_images(), TEXTS))
    return _images() if modality == "image" else TEXTS


def _tower(a, modality: str) -> list[str]:
    """The sites a ``modality`` batch of adapter ``a`` produces (``a.streams_for``: a pair
    batch every stream; VisualBERT's text batch its fusion stack)."""
    streams = a.streams_for(modality)
    assert set(streams) <= set(STREAMS_OF["pair"]), (a.family, modality, streams)
    return [s for s in a.sites() if site_stream(s) in streams]


# -- which token sequence a site lives on (two-stream models keep one per stream) ----------
def _seq_stream(site: str) -> str:
    """The token sequence of a hidden-state site: ``cross.blocks.k.text`` lives on the text
    stream, ``cross.blocks.k.vision`` on the vision stream, others on their own stream."""
    parts = site.removesuffix(".attn").split(".")
    if parts[0] == "cross" and parts[-1] in ("text", "vision"):
        return parts[-1]
    return parts[0]


def _attn_streams(site: str) -> tuple[str, str]:
    """(query stream, key stream) of an attention site (t2v: text queries, vision keys)."""
    parts = site.split(".")
    if parts[0] == "cross" and parts[-2] in ("t2v", "v2t"):
        return ("text", "vision") if parts[-2] == "t2v" else ("vision", "text")
    return _seq_stream(site), _seq_stream(site)


def _stream_mask(trace, stream: str):
    """``[B, T_stream]`` bool (True = real token) of a stream, or None (every token real):
    ``tags_by_stream`` for two-stream models, else the trace's attention mask."""
    tags = trace.tags_by_stream.get(stream)
    if tags is not None:
        return tags != TAG_PAD
    return None if trace.attention_mask is None else trace.attention_mask.bool()


def _check_attention(trace, site: str, att, masked: bool = True) -> None:
    """Shape ``[B, H, Tq, Tk]`` and, on every real query row, weights that sum to 1 over the
    real keys (so masked keys, which may belong to the OTHER stream, get none)."""
    hidden = trace.hidden.get(site.removesuffix(".attn"))
    if hidden is not None:  # self-attention of a captured sequence
        t = hidden.shape[1]
        assert att.shape[0] == 2 and att.shape[2:] == (t, t), (site, att.shape)
    q_stream, k_stream = _attn_streams(site)
    qm, km = _stream_mask(trace, q_stream), _stream_mask(trace, k_stream)
    if not masked:  # the model attends to its padding (SigLIP): every key counts
        km = None
    b, _, tq, tk = att.shape
    qm = torch.ones(b, tq, dtype=torch.bool) if qm is None else qm
    km = torch.ones(b, tk, dtype=torch.bool) if km is None else km
    assert qm.shape == (b, tq) and km.shape == (b, tk), (site, att.shape, qm.shape, km.shape)
    rows = (att * km[:, None, None, :]).sum(-1)  # [B, H, Tq]
    rows = rows[qm[:, None, :].expand_as(rows)]
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-4), site


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


#: adapters whose checkpoint is not a transformers / package checkpoint: the hub / local
#: loading tests below do not apply, and each says where its own loading is tested.
OWN_CHECKPOINTS = {
    "aligned_dual": "loads a `vlprobe train` directory; tested in tests/unit/test_train.py",
    "grid_captioner": "loads a `vlprobe train` directory; tested in "
                      "tests/unit/test_train_captioner.py",
}


def _torch_models(a) -> list:
    """The torch modules the adapter runs (a trained dual encoder: both towers' models)."""
    towers = getattr(a, "towers", None)
    return [t.model for t in towers.values()] if towers else [a.model]


def _hook_count(a) -> int:
    """Hooks on every torch module the adapter runs."""
    return sum(count_hooks(m) for m in _torch_models(a))


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
    mask = _stream_mask(trace, _seq_stream(site))
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
        tower = _tower(a, modality)
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
            _check_attention(trace, site, att, masked=getattr(a, "masks_padding", True))
        if modality == "text":
            assert trace.attention_mask.shape == batch.inputs["input_ids"].shape
            assert trace.eos_index.shape == (2,)
            assert a.pooling_for("text") in ("mean", "cls", "eos")
        if modality == "pair":
            _check_pair_tags(a, trace, layers)
        assert a.default_pooling in ("mean", "cls", "eos")


def _check_pair_tags(a, trace, layers: list[str]) -> None:
    """Every position of the fused sequence tagged; pad exactly where the mask is 0."""
    tags, mask = trace.modality_tags, trace.attention_mask
    assert tags is not None and tags.dtype == torch.int8, a.family
    assert mask is not None and tuple(mask.shape) == tuple(tags.shape)
    assert set(torch.unique(tags).tolist()) <= set(TAG_NAMES)
    assert torch.equal(tags == TAG_PAD, mask == 0)
    for row in tags:
        present = set(row.tolist())
        assert {TAG_SPECIAL, TAG_TEXT, TAG_IMAGE} <= present, (a.family, row)
    by = trace.tags_by_stream
    if by:  # two streams: the tags are [text; vision], each stream's width its sequence's
        assert set(by) == {"text", "vision"}
        assert torch.equal(torch.cat([by["text"], by["vision"]], dim=1), tags)
        for site, x in trace.hidden.items():
            if x.ndim == 3 and _seq_stream(site) in by:
                assert x.shape[1] == by[_seq_stream(site)].shape[1], site
    if site_stream(layers[0]) == "fusion":  # single stream: tags describe its sequence
        assert trace.hidden[layers[0]].shape[1] == tags.shape[1]
        boxes = trace.extras.get("boxes")
        if boxes is not None:  # a box exactly at image tokens
            assert boxes.shape == (*tags.shape, 4)
            assert torch.equal(~torch.isnan(boxes).any(-1), tags == TAG_IMAGE)


@pytest.mark.parametrize("name", NAMES)
def test_hooks_removed_after_forward_and_after_errors(name, adapters):
    a = adapters(name)
    modality = a.modalities[0]
    batch = a.prepare(_payloads(modality), modality)
    a.forward(batch, [a.embedding_site(modality)])  # transformers installs its own hooks once
    before = _hook_count(a)
    a.forward(batch, a.layer_sites(modality))
    assert _hook_count(a) == before
    if modality == "image":  # one colour channel: the stem conv fails
        bad = replace(batch, inputs={"pixel_values": batch.inputs["pixel_values"][:, :1]})
    else:  # token ids outside the vocabulary: the embedding lookup fails
        ids = batch.inputs["input_ids"] + 10**6
        bad = replace(batch, inputs={**batch.inputs, "input_ids": ids})
    with pytest.raises(Exception):  # noqa: B017 - any failure inside the forward
        a.forward(bad, a.layer_sites(modality))
    assert _hook_count(a) == before


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
    if "text" not in a.modalities and "pair" not in a.modalities:
        assert a.max_text_length() is None
        with pytest.raises(NotImplementedError):
            a.text_lengths(["x"])
        return
    modality = "text" if "text" in a.modalities else "pair"

    def items(texts):
        return texts if modality == "text" else list(zip(_pair_images(), texts))

    max_len = a.max_text_length()
    long_text = " ".join(["cat"] * (max_len + 10))
    lengths = a.text_lengths(["a cat", long_text])
    assert lengths[1] > max_len >= lengths[0]
    if modality == "pair":  # texts reach the model only in (image, text) pairs
        batch = a.prepare(items(["a cat", long_text]), "pair")
        assert batch.n_truncated == 1
        trace = a.forward(batch, [a.layer_sites("pair")[-1]])  # runs: within position limit
        if trace.tags_by_stream:
            assert trace.tags_by_stream["text"].shape[1] == max_len
        assert a.prepare(items(["a cat", "a dog"]), "pair").n_truncated == 0
        return
    batch = a.prepare(items(["a cat", long_text]), modality)
    assert batch.n_truncated == 1
    assert batch.inputs["input_ids"].shape[1] == max_len
    short = a.prepare(items(["a cat", "a dog sits"]), modality)
    assert short.n_truncated == 0
    longest = max(a.text_lengths(["a cat", "a dog sits"]))
    padded = max_len if getattr(a, "text_padding", "longest") == "max_length" else longest
    assert short.inputs["input_ids"].shape[1] == padded


@pytest.mark.parametrize("name", NAMES)
def test_weightless_config_dir_needs_random_init(name, tiny_dir, tmp_path):
    if name in OWN_CHECKPOINTS:
        pytest.skip(OWN_CHECKPOINTS[name])
    spec = _tiny(name, tiny_dir)
    cfg = Path(spec.config) if spec.config else tmp_path
    (cfg / "config.json").exists() or (cfg / "config.json").write_text("{}")
    bad = replace(spec, random_init=False, checkpoint=str(cfg), config=None)
    with pytest.raises(ModelLoadError, match="random_init"):
        load_model(bad)


@pytest.mark.parametrize("name", NAMES)
def test_missing_local_path_is_named(name, tiny_dir, tmp_path):
    if name in OWN_CHECKPOINTS:
        pytest.skip(OWN_CHECKPOINTS[name])
    missing = str(tmp_path / "does" / "not" / "exist")
    spec = replace(_tiny(name, tiny_dir), random_init=False, checkpoint=missing, config=None)
    with pytest.raises(ModelLoadError, match="does not exist") as err:
        load_model(spec)
    assert missing in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_hub_id_offline_is_a_clear_error(name, tiny_dir, monkeypatch):
    if name in OWN_CHECKPOINTS:
        pytest.skip(OWN_CHECKPOINTS[name])
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


# -- hooked hidden states == the model's own output_hidden_states -------------------------
def _auto_states(a, batch, modality):
    """``model(**inputs, output_hidden_states=True).hidden_states``."""
    params = inspect.signature(a.model.forward).parameters
    kw = {k: v for k, v in batch.inputs.items() if k in params}
    if "use_cache" in params:
        kw["use_cache"] = False
    with torch.no_grad():
        return a.model(**kw, output_hidden_states=True).hidden_states


def _clip_states(a, batch, modality):
    x = batch.inputs
    with torch.no_grad():
        if modality == "image":
            out = a.model.vision_model(pixel_values=x["pixel_values"], output_hidden_states=True)
        else:
            out = a.model.text_model(
                input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                output_hidden_states=True,
            )
    return out.hidden_states


def _vilt_states(a, batch, modality):
    """HF's own pixel path (it shuffles image tokens with torch.multinomial): run it under a
    fixed seed, read which grid cell each image token came from (``visual_embed``'s
    ``patch_index``, same seed, same draws) and put the tokens back in raster order."""
    from vlprobe.models.vilt import patch_layout

    m, x = a.model, batch.inputs
    with seeded(0), torch.no_grad():
        _, _, (cells, _) = m.embeddings.visual_embed(
            x["pixel_values"], x["pixel_mask"], max_image_length=m.config.max_image_length
        )
    with seeded(0), torch.no_grad():
        out = m(**x, output_hidden_states=True)
    layout = patch_layout(x["pixel_mask"], a.patch, a._max_image_length())
    start = x["input_ids"].shape[1] + 1  # after the text and the image CLS
    hf_cell = cells[..., 0] * layout.grid[1] + cells[..., 1]  # [B, N]
    order = torch.zeros_like(layout.select)
    for b in range(order.shape[0]):
        for k in range(order.shape[1]):
            if layout.keep[b, k]:
                order[b, k] = (hf_cell[b] == layout.select[b, k]).nonzero()[0, 0]
    states = []
    for h in out.hidden_states:
        h = h.clone()
        image = h[:, start:]
        h[:, start:] = torch.gather(image, 1, order[..., None].expand_as(image))
        states.append(h)
    return tuple(states)


def _siglip_states(a, batch, modality):
    """SigLIP's towers; its text tower runs without a padding mask, as published."""
    x = batch.inputs
    with torch.no_grad():
        if modality == "image":
            out = a.model.vision_model(pixel_values=x["pixel_values"], output_hidden_states=True)
        else:
            out = a.model.text_model(input_ids=x["input_ids"], output_hidden_states=True)
    return out.hidden_states


def _aligned_states(a, batch, modality):
    """A trained dual encoder's towers are the frozen HF models themselves."""
    tower = a.towers[modality]
    return HF_HIDDEN[tower.family][0](tower, batch, modality)


#: family -> (HF hidden_states of a batch, final norm HF applies to its last entry or None)
HF_HIDDEN = {
    "clip": (_clip_states, None),
    "hf_text": (_auto_states, None),  # the tiny spec is BERT (no final norm)
    "minilm_l6": (_auto_states, None),
    "smollm2_135m": (_auto_states, lambda a: a.model.norm),  # Llama: last entry after norm
    "hf_vit": (_auto_states, None),
    "hf_resnet": (_auto_states, None),
    "vilt": (_vilt_states, None),  # the last entry is before ViltModel.layernorm
    "visual_bert": (_auto_states, None),
    "aligned_dual": (_aligned_states, None),  # the tiny checkpoint's towers: ViT + BERT
    "siglip": (_siglip_states, None),
}
NOT_TRANSFORMERS = {
    "efficientnet_lite0": "not a transformers model (package efficientnet-lite-pytorch)",
    # two streams / encoder + decoder: HF returns one hidden-state tuple per stream, compared
    # stream by stream (attentions too) in tests/unit/test_adapters_twostream.py
    "lxmert": "compared per stream in test_lxmert_hooks_equal_hf_outputs",
    "vision_encoder_decoder": "compared per stream in test_captioner_hooks_equal_hf_outputs",
    "open_clip": "open_clip's own modules (no HF hidden_states); its pooling is compared in "
                 "test_open_clip_embeddings_pool_as_the_model_does where the extra imports",
    "grid_captioner": "tower + GPT-2 decoder: compared in tests/unit/test_grid_captioner.py",
}


@pytest.mark.parametrize("name", NAMES)
def test_hooked_hidden_states_equal_hf_output_hidden_states(name, adapters):
    if name in NOT_TRANSFORMERS:
        pytest.skip(NOT_TRANSFORMERS[name])
    assert name in HF_HIDDEN, (
        f"adapter {name!r} is not in HF_HIDDEN (how to get its HF hidden_states) nor in "
        "NOT_TRANSFORMERS (with the reason): add it"
    )
    states_of, final_norm = HF_HIDDEN[name]
    a = adapters(name)
    for modality in a.modalities:
        batch = a.prepare(_payloads(modality), modality)
        layers = a.layer_sites(modality)
        trace = a.forward(batch, layers)
        states = states_of(a, batch, modality)
        assert len(states) == len(layers), (name, modality, len(states), len(layers))
        # padding positions of a fused sequence carry no meaning (ViLT fills them at random)
        real = trace.attention_mask.bool() if modality == "pair" else None
        for k, site in enumerate(layers):
            got = trace.hidden[site]
            if final_norm is not None and k == len(layers) - 1:
                with torch.no_grad():
                    got = final_norm(a)(got)
            want = states[k].float()
            if real is not None:
                got, want = got[real], want[real]
            assert torch.allclose(got, want, atol=1e-5), (name, site)


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
    before = _hook_count(a)
    px = pixels.clone().requires_grad_(True)
    got = a.forward_differentiable(px, [emb, last])
    assert _hook_count(a) == before
    ref = a.forward(a.prepare(images, "image"), [emb, last])
    for site in (emb, last):  # (b)
        assert got[site].requires_grad
        assert torch.allclose(got[site].detach().float().cpu(), ref.hidden[site], atol=1e-4)
    w = torch.randn(got[emb].shape, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((got[emb] * w).sum(), px)  # (c)
    assert grad.shape == px.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    for tensor in [*ref.hidden.values(), *ref.attentions.values()]:  # (d)
        assert tensor.grad_fn is None and not tensor.requires_grad
    assert not any(m.training for m in _torch_models(a))
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
            # a fusion model's text-only forward reuses the pair batch's site names
            key = site if site not in out else f"{modality}:{site}"
            out[key] = {
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
    if name in OWN_CHECKPOINTS:
        pytest.skip(OWN_CHECKPOINTS[name])
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

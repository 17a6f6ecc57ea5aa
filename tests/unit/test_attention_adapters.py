"""Attention reducers and raw attention through extract_features on the real tiny adapters:
shapes, mass rows that sum to one where a query class exists (and NaN where it does not, per
direction), raw attention equal to the adapter's own trace on the real tokens, and the layer
index of each attention feature."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _helpers import tiny_adapter  # noqa: E402
from vlprobe.data.stimuli import ImageSource, Stimuli  # noqa: E402
from vlprobe.extract import ActivationStore, extract_features  # noqa: E402
from vlprobe.extract.attention import attention_layer_index, split_raw_tags  # noqa: E402
from vlprobe.extract.reducers import attention_context  # noqa: E402
from vlprobe.modality import TAG_PAD, site_stream  # noqa: E402

REDUCERS = ["reduce:mass", "reduce:cls_mass", "reduce:max_image_to_text", "reduce:entropy",
            "reduce:distance"]
SPECIAL, TEXT, IMAGE = 0, 1, 2  # rows / columns of the mass matrix

#: adapter -> (modality, {site: (query classes present, key classes present)}): what each
#: direction's mass matrix must show (rows of absent query classes NaN; columns of absent
#: key classes 0).
CASES = {
    "vilt": ("pair", {"fusion.blocks.1.attn": ({0, 1, 2}, {0, 1, 2})}),
    "visual_bert": ("pair", {"fusion.blocks.0.attn": ({0, 1, 2}, {0, 1, 2})}),
    "lxmert": ("pair", {
        "cross.blocks.1.t2v.attn": ({0, 1}, {2}),
        "cross.blocks.1.v2t.attn": ({2}, {0, 1}),
        "text.blocks.0.attn": ({0, 1}, {0, 1}),
        "vision.blocks.0.attn": ({2}, {2}),
    }),
    "clip": ("image", {"vision.blocks.1.attn": ({0, 2}, {0, 2})}),
    "siglip": ("image", {"vision.blocks.0.attn": ({2}, {2})}),  # no class token: all patches
    "vision_encoder_decoder": ("pair", {
        "cross.blocks.1.t2v.attn": ({0, 1}, {0, 2}),
        "text.blocks.0.attn": ({0, 1}, {0, 1}),
    }),
}


def stimuli(n: int = 3) -> Stimuli:
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
              for _ in range(n)]
    texts = ["a cat", "the big dog runs in the house", "two red birds sit"][:n]
    return Stimuli(dataset="att", split="test", ids=[f"a{i}" for i in range(n)], texts=texts,
                   images=ImageSource([lambda im=im: im for im in images],
                                      [f"i{i}.png" for i in range(n)],
                                      [f"d{i}" for i in range(n)]))


@pytest.mark.parametrize("name", sorted(CASES))
def test_reducers_and_raw_on_tiny_adapters(name, tmp_path):
    modality, expect = CASES[name]
    adapter = tiny_adapter(name, tmp_path)
    stim = stimuli()
    if modality == "image":
        stim = Stimuli(dataset="att", split="test", ids=stim.ids, images=stim.images)
    sites = list(expect)
    res = extract_features(adapter, stim, modality=modality, sites=sites,
                           attention=[*REDUCERS, "raw"], store=ActivationStore(tmp_path / "s"),
                           batch_size=2, progress=False)
    n = len(stim)
    for site, (queries, keys) in expect.items():
        heads = res.features[f"{site}@entropy"].shape[1]
        assert heads == 2  # every tiny model has 2 heads
        assert res.features[f"{site}@mass"].shape == (n, heads, 3, 3)
        assert res.features[f"{site}@cls_mass"].shape == (n, heads, 3)
        for r in ("max_image_to_text", "entropy", "distance"):
            assert res.features[f"{site}@{r}"].shape == (n, heads), (site, r)
        assert np.isfinite(res.features[f"{site}@entropy"]).all()
        mass = res.features[f"{site}@mass"]
        for q in range(3):
            rows = mass[:, :, q, :]
            if q in queries:
                np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-4, err_msg=f"{site} q{q}")
                absent = [k for k in range(3) if k not in keys]
                assert np.all(rows[..., absent] == 0), site
            else:
                assert np.isnan(rows).all(), (site, q)
        # raw attention = the adapter's own attention of each item on its real tokens
        raw, tags = res.features[f"{site}@raw"], res.features[f"{site}@raw_tags"]
        assert len(raw) == n and raw.dtype == np.float16
        for i in range(n):
            batch = adapter.prepare(stim.payloads(modality, [i]), modality)
            with torch.inference_mode():
                trace = adapter.forward(batch, [site])
            attn = trace.attentions[site]
            ctx = attention_context(trace, site, tuple(attn.shape),
                                    adapter.vision_class_token)
            q = (ctx.query_tags[0] != TAG_PAD).numpy()
            k = (ctx.key_tags[0] != TAG_PAD).numpy()
            own = attn[0].numpy()[:, q][:, :, k]
            assert raw[i].shape == own.shape, site
            np.testing.assert_allclose(raw[i].astype(np.float32), own, atol=2e-3, err_msg=site)
            qt, kt = split_raw_tags(tags[i], raw[i])
            np.testing.assert_array_equal(qt, ctx.query_tags[0].numpy()[q])
            np.testing.assert_array_equal(kt, ctx.key_tags[0].numpy()[k])
    # the estimate that sized the raw entries is exact here (text lengths, fixed image tokens)
    assert res.raw_bytes_estimate == sum(res.features[f"{s}@raw"].nbytes for s in sites)


def test_attention_features_get_their_block_layer_index(tmp_path):
    lx = tiny_adapter("lxmert", tmp_path)
    text_path = lx.layer_sites("pair")
    assert attention_layer_index(lx, "text.blocks.1.attn") == text_path.index("text.blocks.1")
    assert attention_layer_index(lx, "cross.blocks.1.t2v.attn") == text_path.index(
        "cross.blocks.1.text")
    vision_path = lx.stream_layer_sites("vision")
    assert attention_layer_index(lx, "cross.blocks.0.v2t.attn") == vision_path.index(
        "cross.blocks.0.vision")
    assert attention_layer_index(lx, "cross.blocks.0.vision.attn") == vision_path.index(
        "cross.blocks.0.vision")
    cap = tiny_adapter("vision_encoder_decoder", tmp_path)
    assert attention_layer_index(cap, "cross.blocks.1.t2v.attn") == 2  # decoder block 1
    vilt = tiny_adapter("vilt", tmp_path)
    assert attention_layer_index(vilt, "fusion.blocks.0.attn") == 1
    for adapter in (lx, cap, vilt):
        for modality in adapter.modalities:
            for site in adapter.sites():
                if site.endswith(".attn") and site_stream(site) in adapter.streams_for(modality):
                    assert attention_layer_index(adapter, site) is not None, site

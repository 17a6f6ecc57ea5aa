"""Pooling methods, and padding-invariance of extraction (bucketed == unbucketed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _helpers import tiny_adapter, toy_text_stimuli
from vlprobe.errors import ConfigError
from vlprobe.extract import ActivationStore, extract_features, pool


def _seq(b=3, t=5, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, d, generator=g)


MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])


def test_mean_ignores_padding():
    x = _seq()
    out = pool(x, "mean", attention_mask=MASK)
    for b, n in enumerate([5, 2, 3]):
        torch.testing.assert_close(out[b], x[b, :n].mean(0))
    # changing the padded positions does not change the result
    y = x.clone()
    y[MASK == 0] = 1e6
    torch.testing.assert_close(pool(y, "mean", attention_mask=MASK), out)
    torch.testing.assert_close(pool(x, "mean"), x.mean(1))


def test_max_ignores_padding():
    x = _seq()
    y = x.clone()
    y[MASK == 0] = 1e6
    out = pool(y, "max", attention_mask=MASK)
    for b, n in enumerate([5, 2, 3]):
        torch.testing.assert_close(out[b], x[b, :n].amax(0))


def test_eos_picks_the_right_token():
    x = _seq()
    eos = torch.tensor([4, 1, 2])
    out = pool(x, "eos", attention_mask=MASK, eos_index=eos)
    for b in range(3):
        torch.testing.assert_close(out[b], x[b, eos[b]])
    # numpy in -> numpy out
    out_np = pool(x.numpy(), "eos", eos_index=eos.numpy())
    assert isinstance(out_np, np.ndarray) and out_np.shape == (3, 4)
    np.testing.assert_allclose(out_np, out.numpy())


def test_last_and_cls():
    x = _seq()
    out = pool(x, "last", attention_mask=MASK)
    for b, n in enumerate([5, 2, 3]):
        torch.testing.assert_close(out[b], x[b, n - 1])
    left = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])  # left padding
    torch.testing.assert_close(pool(x, "last", attention_mask=left), x[:, -1])
    torch.testing.assert_close(pool(x, "last"), x[:, -1])
    torch.testing.assert_close(pool(x, "cls", attention_mask=MASK), x[:, 0])


def test_cnn_maps_and_pooled_outputs():
    fmap = torch.randn(2, 6, 3, 3)
    torch.testing.assert_close(pool(fmap, "mean"), fmap.mean(dim=(2, 3)))
    torch.testing.assert_close(pool(fmap, "max"), fmap.amax(dim=(2, 3)))
    emb = torch.randn(2, 7)
    torch.testing.assert_close(pool(emb, "none"), emb)
    half = _seq().half()
    assert pool(half, "mean").dtype == torch.float32


@pytest.mark.parametrize(
    "x,method,kwargs,match",
    [
        (torch.randn(2, 6, 3, 3), "cls", {}, "no tokens"),
        (torch.randn(2, 6, 3, 3), "last", {}, "no tokens"),
        (torch.randn(2, 5, 4), "eos", {}, "eos_index"),
        (torch.randn(2, 5, 4), "none", {}, "choose"),
        (torch.randn(2, 4), "mean", {}, "already"),
        (torch.randn(2, 5, 4), "avg", {}, "unknown pooling"),
        (torch.randn(2, 5, 4), "mean", {"attention_mask": torch.ones(2, 3)}, "does not match"),
    ],
)
def test_inapplicable_methods_raise_clear_errors(x, method, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        pool(x, method, **kwargs)


# -- padding invariance through real (tiny, random) adapters ---------------------------------


@pytest.mark.parametrize(
    "name,arch", [("hf_text", "bert"), ("hf_text", "gpt2"), ("smollm2_135m", "llama")]
)
def test_bucketed_equals_unbucketed(name, arch, tmp_path):
    """Padding must not change results: sorted batches, unsorted batches and batch size 1."""
    adapter = tiny_adapter(name, tmp_path, arch=arch)
    stim = toy_text_stimuli(14, lengths=(1, 20), n_classes=None)
    sites = list(adapter.layer_sites("text"))
    emb = adapter.embedding_site("text")
    if emb in adapter.sites():
        sites.append(emb)
    for pooling in ("mean", "last", "max", "cls"):
        opts = dict(modality="text", sites=sites, pooling=pooling, batch_size=4, shard_size=8,
                    progress=False)
        a = extract_features(adapter, stim, bucket_by_length=True,
                             store=ActivationStore(tmp_path / f"a_{pooling}"), **opts)
        b = extract_features(adapter, stim, bucket_by_length=False,
                             store=ActivationStore(tmp_path / f"b_{pooling}"), **opts)
        # one item per batch: no padding at all
        c = extract_features(adapter, stim, bucket_by_length=False,
                             store=ActivationStore(tmp_path / f"c_{pooling}"),
                             **{**opts, "batch_size": 1})
        for site in sites:
            np.testing.assert_allclose(a.features[site], b.features[site], atol=1e-5, rtol=1e-5,
                                       err_msg=f"{name} {site} {pooling}")
            np.testing.assert_allclose(a.features[site], c.features[site], atol=1e-5, rtol=1e-5,
                                       err_msg=f"{name} {site} {pooling} vs unpadded")


# -- grid pooling (catalogue V5) ---------------------------------------------------------------


@pytest.mark.parametrize("hw,g", [((9, 9), 3), ((7, 5), 3), ((8, 8), 3), ((2, 3), 4), ((4, 4), 4)])
def test_grid_pools_cnn_maps_like_adaptive_avg_pool2d(hw, g):
    import torch.nn.functional as F

    from vlprobe.pooling import grid_size, unflatten_grid

    fmap = torch.randn(2, 5, *hw, generator=torch.Generator().manual_seed(1))
    out = pool(fmap, f"grid{g}")
    want = F.adaptive_avg_pool2d(fmap, (g, g))  # replicates when the map is smaller than g
    assert out.shape == (2, 5 * g * g) and grid_size(f"grid{g}") == g
    torch.testing.assert_close(out, want.reshape(2, -1), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(unflatten_grid(out.numpy(), g), want.numpy(), atol=1e-5)


@pytest.mark.parametrize("n_extra", [0, 1, 5])
def test_grid_pools_vit_patch_tokens(n_extra):
    import torch.nn.functional as F

    b, s, d, g = 2, 6, 4, 3
    gen = torch.Generator().manual_seed(2)
    patches = torch.randn(b, d, s, s, generator=gen)  # the map a patch-embedding conv makes
    tokens = patches.flatten(2).transpose(1, 2)  # [B, s*s, D], row-major patch order
    extra = torch.full((b, n_extra, d), 1e6)  # CLS / register tokens must be dropped
    x = torch.cat([extra, tokens], dim=1)
    out = pool(x, f"grid{g}")
    torch.testing.assert_close(out, F.adaptive_avg_pool2d(patches, g).reshape(b, -1),
                               atol=1e-4, rtol=1e-5)


def test_grid_errors_are_clear():
    from vlprobe.extract.extractor import resolve_pooling

    with pytest.raises(ConfigError, match="needs its size"):
        pool(torch.randn(2, 3, 4, 4), "grid")
    for bad in ("grid0", "grid-1", "grid7x", "gridx"):
        with pytest.raises(ConfigError, match="unknown pooling"):
            pool(torch.randn(2, 3, 4, 4), bad)
    with pytest.raises(ConfigError, match="already one vector"):
        pool(torch.randn(2, 7), "grid4")
    with pytest.raises(ConfigError, match="not a text"):
        pool(torch.randn(2, 5, 4), "grid2", attention_mask=torch.ones(2, 5))

    class Fake:
        default_pooling = "mean"

    with pytest.raises(ConfigError, match="not to the text tower"):
        resolve_pooling(Fake(), ["text.blocks.0"], "grid4", "text")
    assert resolve_pooling(Fake(), ["vision.blocks.0", "vision.pooled"], "grid4", "image") == {
        "vision.blocks.0": "grid4", "vision.pooled": "none"}


def test_grid_extraction_through_a_tiny_cnn_keys_apart_from_mean(tmp_path):
    """grid features of a tiny ResNet: stored 2-D, own store key, mean of the grid = GAP."""
    from PIL import Image

    from vlprobe.data.stimuli import ImageSource, Stimuli

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)) for _ in range(5)]
    src = ImageSource([(lambda im=im: im) for im in imgs], [f"i{i}" for i in range(5)],
                      [f"d{i}" for i in range(5)])
    stim = Stimuli(dataset="toy", split="train", ids=[f"i{i}" for i in range(5)], images=src)
    adapter = tiny_adapter("hf_resnet", tmp_path)
    store = ActivationStore(tmp_path / "store")
    site = adapter.layer_sites("image")[1]  # 8x8 map of 8 channels (divisible into 4x4)
    opts = dict(modality="image", sites=[site], store=store, progress=False, batch_size=2)
    grid = extract_features(adapter, stim, pooling="grid4", **opts)
    mean = extract_features(adapter, stim, pooling="mean", **opts)
    grid2 = extract_features(adapter, stim, pooling="grid2", **opts)
    assert len({grid.keys[site], mean.keys[site], grid2.keys[site]}) == 3
    g = grid.features[site]
    assert g.ndim == 2 and g.shape[1] % 16 == 0
    maps = g.reshape(5, -1, 4, 4)
    np.testing.assert_allclose(maps.mean(axis=(2, 3)), mean.features[site], atol=1e-5)
    again = extract_features(adapter, stim, pooling="grid4", **opts)
    assert again.n_forward_batches == 0

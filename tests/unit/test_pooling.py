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

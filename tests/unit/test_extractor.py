"""extract_features: one forward per batch for all sites, sharding, caching, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest

from _helpers import tiny_adapter, toy_text_stimuli
from vlprobe.data.stimuli import ImageSource, Stimuli
from vlprobe.errors import ConfigError
from vlprobe.extract import ActivationStore, extract_features


def _image_stimuli(n: int, seed: int = 0) -> Stimuli:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, size=(20 + i % 5, 24, 3), dtype=np.uint8) for i in range(n)]
    loaders = [lambda a=a: Image.fromarray(a) for a in arrays]
    source = ImageSource(loaders, [f"img{i}" for i in range(n)], [f"d{i}" for i in range(n)])
    return Stimuli(dataset="toy_images", split="test", ids=[f"i{i}" for i in range(n)],
                   images=source, labels=rng.integers(0, 2, size=n))


class ForwardSpy:
    """Wraps adapter.forward on the instance, recording the sites and batch sizes."""

    def __init__(self, adapter):
        self.calls: list[tuple[tuple[str, ...], int]] = []
        self._orig = adapter.forward
        adapter.forward = self

    def __call__(self, batch, sites):
        self.calls.append((tuple(sites), len(batch)))
        return self._orig(batch, sites)


@pytest.fixture
def text_adapter(tmp_path):
    return tiny_adapter("hf_text", tmp_path)


def _kw(store, **over):
    kw = dict(modality="text", batch_size=3, shard_size=5, progress=False, store=store)
    kw.update(over)
    return kw


def test_second_extraction_does_no_forward(text_adapter, tmp_path):
    stim = toy_text_stimuli(12)
    store = ActivationStore(tmp_path / "acts")
    first = extract_features(text_adapter, stim, **_kw(store))
    assert first.n_forward_batches > 0 and first.n_items_computed == 12
    spy = ForwardSpy(text_adapter)
    second = extract_features(text_adapter, stim, **_kw(store))
    assert second.n_forward_batches == 0 and second.n_items_computed == 0
    assert spy.calls == []
    assert second.keys == first.keys
    for site, arr in first.features.items():
        np.testing.assert_array_equal(second.features[site], arr)
        assert arr.shape[0] == 12 and arr.dtype == np.float32


def test_default_sites_and_pooling(text_adapter, tmp_path):
    stim = toy_text_stimuli(4)
    res = extract_features(text_adapter, stim, **_kw(ActivationStore(tmp_path / "a")))
    layers = list(text_adapter.layer_sites("text"))
    emb = text_adapter.embedding_site("text")
    expected = layers + ([emb] if emb in text_adapter.sites() else [])
    assert list(res.features) == expected
    for site in layers:
        assert res.poolings[site] == text_adapter.pooling_for("text")
    if emb in res.poolings:
        assert res.poolings[emb] == "none"
    # a string pooling applies to hidden-state sites only; a dict is per site
    res2 = extract_features(text_adapter, stim, pooling={layers[0]: "max"}, sites=layers[:2],
                            **_kw(ActivationStore(tmp_path / "b")))
    assert res2.poolings == {layers[0]: "max", layers[1]: text_adapter.pooling_for("text")}


def test_one_forward_per_batch_captures_all_sites(text_adapter, tmp_path):
    stim = toy_text_stimuli(11)
    store = ActivationStore(tmp_path / "acts")
    sites = list(text_adapter.layer_sites("text"))
    written: list[tuple[str, int, int]] = []
    orig_write = store.write_shard

    def spy_write(key, index, array, n_truncated=0):
        written.append((key, index, array.shape[0]))
        return orig_write(key, index, array, n_truncated=n_truncated)

    store.write_shard = spy_write
    spy = ForwardSpy(text_adapter)
    res = extract_features(text_adapter, stim, sites=sites, **_kw(store, shard_size=5))
    # shards of 5, 5, 1 items; batches of <= 3 never cross a shard: 2 + 2 + 1 forwards
    assert [n for _, n in spy.calls] == [3, 2, 3, 2, 1]
    assert all(set(s) == set(sites) for s, _ in spy.calls)
    assert res.n_forward_batches == 5
    # every site's shard is written as soon as the shard is done, never more than one shard
    assert sorted((i, n) for _, i, n in written) == sorted(
        [(0, 5)] * len(sites) + [(1, 5)] * len(sites) + [(2, 1)] * len(sites)
    )
    # adding a site later computes only the new one
    emb = text_adapter.embedding_site("text")
    if emb in text_adapter.sites():
        spy.calls.clear()
        more = extract_features(text_adapter, stim, sites=[*sites, emb], **_kw(store))
        assert more.n_items_computed == 11
        assert all(s == (emb,) for s, _ in spy.calls)


def test_text_order_is_restored(text_adapter, tmp_path):
    stim = toy_text_stimuli(9, seed=3)
    sites = text_adapter.layer_sites("text")[-1:]
    res = extract_features(text_adapter, stim, sites=sites, **_kw(ActivationStore(tmp_path / "a")))
    single = extract_features(
        text_adapter, stim.subset([4]), sites=sites, **_kw(ActivationStore(tmp_path / "b"))
    )
    np.testing.assert_allclose(res.features[sites[0]][4], single.features[sites[0]][0],
                               atol=1e-5, rtol=1e-5)


def test_truncation_is_counted_and_cached(text_adapter, tmp_path):
    max_len = text_adapter.max_text_length()
    assert max_len is not None
    texts = ["short text", " ".join(["word"] * (max_len + 20)), "another short one"]
    stim = Stimuli(dataset="long", split="train", ids=["a", "b", "c"], texts=texts)
    store = ActivationStore(tmp_path / "acts")
    sites = text_adapter.layer_sites("text")[:1]
    res = extract_features(text_adapter, stim, sites=sites, **_kw(store))
    assert res.n_truncated == 1
    again = extract_features(text_adapter, stim, sites=sites, **_kw(store))
    assert again.n_forward_batches == 0 and again.n_truncated == 1


def test_attention_site_without_a_method_lists_the_reducers(text_adapter, tmp_path):
    attn = [s for s in text_adapter.sites() if s.endswith(".attn")]
    if not attn:
        pytest.skip("adapter exposes no attention sites")
    store = ActivationStore(tmp_path / "a")
    with pytest.raises(ConfigError, match=r"needs a method.*reduce:entropy.*'raw'"):
        extract_features(text_adapter, toy_text_stimuli(3), sites=attn[:1], **_kw(store))
    with pytest.raises(ConfigError, match=r"did you mean 'reduce:entropy'"):
        extract_features(text_adapter, toy_text_stimuli(3), sites=attn[:1],
                         attention="entropy", **_kw(store))
    with pytest.raises(ConfigError, match="is an attention method"):
        extract_features(text_adapter, toy_text_stimuli(3), sites=attn[:1],
                         pooling="reduce:entropy", **_kw(store))
    with pytest.raises(ConfigError, match=r"no attention site \(\*\.attn\) was requested"):
        extract_features(text_adapter, toy_text_stimuli(3), attention="reduce:mass",
                         **_kw(store))
    assert not list(store.keys())  # nothing was opened


def test_unknown_site_and_pooling(text_adapter, tmp_path):
    store = ActivationStore(tmp_path / "a")
    with pytest.raises(ConfigError, match="no site"):
        extract_features(text_adapter, toy_text_stimuli(3), sites=["text.blocks.999"], **_kw(store))
    with pytest.raises(ConfigError, match="unknown pooling"):
        extract_features(text_adapter, toy_text_stimuli(3), pooling="avg", **_kw(store))


def test_modality_mismatch_is_a_config_error(text_adapter, tmp_path):
    store = ActivationStore(tmp_path / "a")
    images = _image_stimuli(3)
    with pytest.raises(ConfigError, match="image"):
        extract_features(text_adapter, images, **_kw(store, modality=None))
    with pytest.raises(ConfigError, match="takes text input, not image"):
        extract_features(text_adapter, images, **_kw(store, modality="image"))
    vit = tiny_adapter("hf_vit", tmp_path)
    with pytest.raises(ConfigError, match="has text items, not image"):
        extract_features(vit, toy_text_stimuli(3), **_kw(store, modality="image"))


@pytest.mark.parametrize("name", ["hf_vit", "hf_resnet", "efficientnet_lite0"])
def test_image_models(name, tmp_path):
    adapter = tiny_adapter(name, tmp_path)
    stim = _image_stimuli(5)
    store = ActivationStore(tmp_path / "acts")
    sites = list(adapter.layer_sites("image"))
    sites = sites[:1] + sites[-1:]
    res = extract_features(adapter, stim, modality=None, sites=sites, store=store, batch_size=2,
                           shard_size=3, progress=False)
    for site in sites:
        arr = res.features[site]
        assert arr.shape[0] == 5 and arr.ndim == 2 and np.isfinite(arr).all()
    # same images one at a time give the same rows (no cross-item leakage)
    one = extract_features(adapter, stim, modality="image", sites=sites,
                           store=ActivationStore(tmp_path / "one"), batch_size=1, progress=False)
    for site in sites:
        np.testing.assert_allclose(res.features[site], one.features[site], atol=1e-4, rtol=1e-4)
    again = extract_features(adapter, stim, sites=sites, store=store, batch_size=2, shard_size=3,
                             progress=False)
    assert again.n_forward_batches == 0


def test_progress_bar_reports_items_per_second(text_adapter, tmp_path, monkeypatch):
    import sys

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    extract_features(text_adapter, toy_text_stimuli(4),
                     **_kw(ActivationStore(tmp_path / "a"), progress=True))
    assert "item" in err.getvalue()
    err.truncate(0)
    extract_features(text_adapter, toy_text_stimuli(4, seed=9),
                     **_kw(ActivationStore(tmp_path / "b"), progress=False))
    assert "item" not in err.getvalue()


def test_prefetch_gives_same_features_and_propagates_errors(text_adapter, tmp_path):
    stim = toy_text_stimuli(10, seed=5)
    sites = text_adapter.layer_sites("text")[-2:]
    on = extract_features(text_adapter, stim, sites=sites, prefetch=True,
                          **_kw(ActivationStore(tmp_path / "on")))
    off = extract_features(text_adapter, stim, sites=sites, prefetch=False,
                           **_kw(ActivationStore(tmp_path / "off")))
    for site in sites:
        np.testing.assert_array_equal(on.features[site], off.features[site])

    calls = {"n": 0}
    orig = text_adapter.prepare

    def failing_prepare(payloads, modality):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ValueError("broken item")
        return orig(payloads, modality)

    text_adapter.prepare = failing_prepare
    store = ActivationStore(tmp_path / "fail")
    with pytest.raises(ValueError, match="broken item"):
        extract_features(text_adapter, stim, sites=sites, **_kw(store))
    # the first shard (batches 1-2) was committed before the failure; a rerun resumes
    del text_adapter.prepare
    resumed = extract_features(text_adapter, stim, sites=sites, **_kw(store))
    assert resumed.n_items_computed == 5
    for site in sites:
        np.testing.assert_array_equal(resumed.features[site], on.features[site])

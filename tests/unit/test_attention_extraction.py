"""Attention capture in the single extraction pass: streaming reducers and raw attention
through ``extract_features``, end to end on a model whose attention is fixed by construction
(values computed by hand), then on the real tiny adapters."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fusion_fakes import N_PATCHES, PlantedFusion  # noqa: E402

from _helpers import tiny_adapter  # noqa: E402
from vlprobe.data.stimuli import ImageSource, Stimuli  # noqa: E402
from vlprobe.errors import ConfigError  # noqa: E402
from vlprobe.extract import ActivationStore, extract_features  # noqa: E402
from vlprobe.extract.attention import (  # noqa: E402
    attention_output,
    parse_output,
    split_raw_tags,
)
from vlprobe.extract.reducers import reducer_names  # noqa: E402
from vlprobe.modality import TAG_IMAGE, TAG_PAD, TAG_SPECIAL, TAG_TEXT  # noqa: E402
from vlprobe.models.base import Batch, ModelSpec, Trace  # noqa: E402

ATTN = "fusion.blocks.0.attn"
# the reducers that read attention and tags only (``similarity`` also reads token vectors:
# planted in test_fusion_analyses.py; ``objects`` reads object boxes: test_objects_reducer.py);
# every other registered reducer must be listed here
TAG_REDUCERS = ("mass", "cls_mass", "max_image_to_text", "entropy", "distance")
ALL_REDUCERS = [f"reduce:{r}" for r in TAG_REDUCERS]


def test_every_tag_only_reducer_is_planted_here():
    from vlprobe.extract.reducers import needs_features, needs_objects

    assert sorted(TAG_REDUCERS) == [r for r in reducer_names()
                                    if not needs_features(r) and not needs_objects(r)]


def _w(n_words: int) -> float:
    """Head 1: the mass an image query of an item with ``n_words`` words puts on word 1."""
    return n_words / 10


class PlantedAttention(PlantedFusion):
    """:class:`~fusion_fakes.PlantedFusion` (hidden states = the tags, pads NaN) with a fixed
    attention at ``fusion.blocks.0.attn``:

    - head 0: every real query spreads uniformly over the item's real keys;
    - head 1: special queries uniformly over the 4 patches; word queries 0.5 on [CLS] and 0.5
      on the first patch; patch queries ``w = n_words / 10`` on word 1, ``1 - w`` on themselves.

    Padded rows and columns hold ``pad_fill`` (NaN: a leak would show). ``calls`` records
    every forward.
    """

    family = "planted_attention"

    def __init__(self, spec: ModelSpec, pad_fill: float = float("nan")) -> None:
        super().__init__(spec)
        self.pad_fill = pad_fill
        self.calls: list[tuple[tuple[str, ...], int]] = []

    def sites(self):
        return ["fusion.stem", ATTN, "fusion.blocks.0", "fusion.pooled"]

    def max_text_length(self):
        return 64

    def forward(self, batch: Batch, sites: Sequence[str]) -> Trace:
        n_words = batch.inputs["n_words"]
        self.calls.append((tuple(sites), len(n_words)))
        trace = super().forward(batch, [s for s in sites if s != ATTN])
        if ATTN in sites:
            t = trace.modality_tags.shape[1]
            attn = torch.stack([planted_item(n, t) for n in n_words])
            pad = trace.modality_tags == TAG_PAD
            attn[pad[:, None, :, None].expand_as(attn)] = self.pad_fill
            attn[pad[:, None, None, :].expand_as(attn)] = self.pad_fill
            trace.attentions[ATTN] = attn
        return trace


def planted_item(n: int, t: int | None = None) -> torch.Tensor:
    """``[2, t, t]`` attention of one item with ``n`` words (real tokens first; zeros after)."""
    real = n + 2 + N_PATCHES
    t = real if t is None else t
    a = torch.zeros(2, t, t)
    a[0, :real, :real] = 1 / real
    patches = list(range(n + 2, n + 2 + N_PATCHES))
    for q in (0, n + 1):  # [CLS], [SEP]
        a[1, q, patches] = 1 / N_PATCHES
    for q in range(1, n + 1):
        a[1, q, 0] = a[1, q, patches[0]] = 0.5
    for q in patches:
        a[1, q, 1] = _w(n)
        a[1, q, q] = 1 - _w(n)
    return a


def planted_tags(n: int) -> np.ndarray:
    return np.array([TAG_SPECIAL] + [TAG_TEXT] * n + [TAG_SPECIAL] + [TAG_IMAGE] * N_PATCHES)


def by_hand(n: int) -> dict[str, np.ndarray]:
    """The reducer values of an item with ``n`` words, computed by hand."""
    real = n + 6
    w = _w(n)
    h_w = -(w * math.log(w) + (1 - w) * math.log(1 - w))
    uniform = [2 / real, n / real, 4 / real]
    return {
        "mass": np.array([[uniform] * 3,
                          [[0, 0, 1], [0.5, 0, 0.5], [0, w, 1 - w]]]),
        "cls_mass": np.array([uniform, [0, 0, 1]]),
        "max_image_to_text": np.array([n / real, w]),
        "entropy": np.array([math.log(real),
                             (2 * math.log(4) + n * math.log(2) + 4 * h_w) / real]),
        "distance": np.array([(2 + math.sqrt(2)) / 4, 0.0]),  # 2 x 2 patch grid
    }


def pairs(word_counts: Sequence[int]) -> Stimuli:
    from PIL import Image

    image = Image.new("RGB", (8, 8))
    n = len(word_counts)
    words = ["a", "cat", "sits", "on", "the", "mat"]
    texts = [" ".join(words[:k]) for k in word_counts]
    return Stimuli(
        dataset="planted", split="test", ids=[f"p{i}" for i in range(n)], texts=texts,
        images=ImageSource([lambda: image] * n, [f"i{i}.png" for i in range(n)],
                           [f"d{i}" for i in range(n)]),
    )


WORDS = [3, 1, 5, 2, 4]  # bucketing by length reorders them inside each shard


def _kw(store, **over):
    kw = dict(batch_size=2, shard_size=3, progress=False, store=store)
    kw.update(over)
    return kw


def test_planted_attention_end_to_end_gives_the_hand_computed_values(tmp_path):
    adapter = PlantedAttention(ModelSpec(adapter="planted_attention"))
    res = extract_features(adapter, pairs(WORDS), sites=[ATTN], attention=ALL_REDUCERS,
                           **_kw(ActivationStore(tmp_path / "s")))
    assert list(res.features) == [attention_output(ATTN, m) for m in ALL_REDUCERS]
    for name in TAG_REDUCERS:
        got = res.features[f"{ATTN}@{name}"]
        want = np.stack([by_hand(n)[name] for n in WORDS])
        assert got.dtype == np.float32 and got.shape == want.shape, name
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)
    assert parse_output(f"{ATTN}@mass") == (ATTN, "reduce:mass")


@pytest.mark.parametrize("pad_fill", [float("nan"), 1e6, -3.0])
def test_padding_never_leaks_into_reducers_or_raw(tmp_path, pad_fill):
    adapter = PlantedAttention(ModelSpec(adapter="planted_attention"), pad_fill=pad_fill)
    res = extract_features(adapter, pairs(WORDS), sites=[ATTN], attention=[*ALL_REDUCERS, "raw"],
                           **_kw(ActivationStore(tmp_path / "s")))
    for name in TAG_REDUCERS:
        want = np.stack([by_hand(n)[name] for n in WORDS])
        np.testing.assert_allclose(res.features[f"{ATTN}@{name}"], want, atol=1e-6)
    for i, n in enumerate(WORDS):
        assert np.isfinite(res.features[f"{ATTN}@raw"][i]).all()
        assert res.features[f"{ATTN}@raw"][i].shape == (2, n + 6, n + 6)


def test_raw_round_trip_real_tokens_only_with_their_tags(tmp_path):
    adapter = PlantedAttention(ModelSpec(adapter="planted_attention"))
    store = ActivationStore(tmp_path / "s")
    res = extract_features(adapter, pairs(WORDS), sites=[ATTN], attention="raw", **_kw(store))
    raw, tags = res.features[f"{ATTN}@raw"], res.features[f"{ATTN}@raw_tags"]
    assert raw.dtype == np.float16 and len(raw) == len(WORDS)
    for i, n in enumerate(WORDS):
        np.testing.assert_array_equal(raw[i], planted_item(n).numpy().astype(np.float16))
        q, k = split_raw_tags(tags[i], raw[i])
        np.testing.assert_array_equal(q, planted_tags(n))
        np.testing.assert_array_equal(k, planted_tags(n))
    # the size estimate (one probe forward + text lengths) is exact here
    assert res.raw_bytes_estimate == raw.nbytes
    meta = store.meta(res.keys[f"{ATTN}@raw"])
    assert (meta["kind"], meta["dtype"]) == ("ragged", "float16")


def test_reducers_and_a_hidden_site_share_one_forward_per_batch(tmp_path):
    adapter = PlantedAttention(ModelSpec(adapter="planted_attention"))
    store = ActivationStore(tmp_path / "s")
    res = extract_features(
        adapter, pairs(WORDS), sites=["fusion.blocks.0", ATTN],
        pooling={"fusion.blocks.0": "mean_image", ATTN: ["reduce:mass", "reduce:entropy"]},
        **_kw(store),
    )
    n_batches = 2 + 1  # shards of 3 and 2 items, batches of 2
    assert res.n_forward_batches == n_batches == len(adapter.calls)
    assert all(sites == ("fusion.blocks.0", ATTN) for sites, _ in adapter.calls)
    assert sorted(res.features) == sorted(["fusion.blocks.0", f"{ATTN}@mass", f"{ATTN}@entropy"])
    assert np.all(res.features["fusion.blocks.0"] == TAG_IMAGE)
    assert res.poolings[f"{ATTN}@entropy"] == "reduce:entropy"
    assert res.sites[f"{ATTN}@mass"] == ATTN
    # a key per (site, method): every output has its own entry, its key dict names the method
    assert len(set(res.keys.values())) == 3
    for name, key in res.keys.items():
        assert store.meta(key)["key_dict"]["pooling"] == res.poolings[name]
    # cached: no forward; a new reducer later runs the model again but leaves the others alone
    again = extract_features(adapter, pairs(WORDS), sites=[ATTN],
                             attention=["reduce:mass", "reduce:entropy"], **_kw(store))
    assert again.n_forward_batches == 0 and again.keys[f"{ATTN}@mass"] == res.keys[f"{ATTN}@mass"]
    more = extract_features(adapter, pairs(WORDS), sites=[ATTN],
                            attention=["reduce:mass", "reduce:cls_mass"], **_kw(store))
    assert more.n_items_computed == len(WORDS)
    assert more.keys[f"{ATTN}@mass"] == res.keys[f"{ATTN}@mass"]
    assert more.keys[f"{ATTN}@cls_mass"] not in res.keys.values()


def test_raw_over_the_limit_is_refused_with_the_byte_count_and_the_option(tmp_path):
    adapter = PlantedAttention(ModelSpec(adapter="planted_attention"))
    store = ActivationStore(tmp_path / "s")
    want = sum(2 * (n + 6) ** 2 * 2 for n in WORDS)  # heads * T^2 * float16
    with pytest.raises(ConfigError) as info:
        extract_features(adapter, pairs(WORDS), sites=[ATTN], attention="raw",
                         raw_attention_limit_bytes=want - 1, **_kw(store))
    msg = str(info.value)
    assert f"{want:,} bytes" in msg and f"{want - 1:,} bytes" in msg
    assert "raw_attention_limit_bytes" in msg and "extraction.raw_attention_limit_gb" in msg
    assert list(store.keys()) == []  # refused before any entry was opened
    ok = extract_features(adapter, pairs(WORDS), sites=[ATTN], attention="raw",
                          raw_attention_limit_bytes=want, **_kw(store))
    assert ok.raw_bytes_estimate == want


def test_raw_shrinks_the_shard_size_of_the_whole_pass(tmp_path, monkeypatch):
    import vlprobe.extract.attention as attention

    biggest = 2 * (5 + 6) ** 2 * 2
    monkeypatch.setattr(attention, "RAW_SHARD_BYTES", 2 * biggest)
    adapter = PlantedAttention(ModelSpec(adapter="planted_attention"))
    store = ActivationStore(tmp_path / "s")
    res = extract_features(adapter, pairs(WORDS), sites=["fusion.blocks.0", ATTN],
                           attention=["raw", "reduce:entropy"], **_kw(store, shard_size=100))
    assert {store.meta(k)["shard_size"] for k in res.keys.values()} == {2}


def test_interrupted_attention_extraction_resumes_from_committed_shards(tmp_path):
    adapter = PlantedAttention(ModelSpec(adapter="planted_attention"))
    store = ActivationStore(tmp_path / "s")
    orig = adapter.forward

    def failing(batch, sites):
        if len(adapter.calls) == 3:  # probe + 2 batches: shard 0 (3 items) is committed
            raise RuntimeError("interrupted")
        return orig(batch, sites)

    adapter.forward = failing
    kw = dict(sites=[ATTN], attention=["reduce:entropy", "raw"], **_kw(store))
    with pytest.raises(RuntimeError, match="interrupted"):
        extract_features(adapter, pairs(WORDS), **kw)
    adapter.forward = orig
    res = extract_features(adapter, pairs(WORDS), **kw)
    assert res.n_items_computed == 2 and res.n_forward_batches == 1 + 1  # probe + shard 1
    want = np.stack([by_hand(n)["entropy"] for n in WORDS])
    np.testing.assert_allclose(res.features[f"{ATTN}@entropy"], want, atol=1e-6)
    for i, n in enumerate(WORDS):
        np.testing.assert_array_equal(res.features[f"{ATTN}@raw"][i],
                                      planted_item(n).numpy().astype(np.float16))


def test_paired_image_view_repeats_ragged_items(tmp_path):
    """On a paired set the image tower runs once per image; raw items are repeated per item."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
              for _ in range(2)]
    order = [0, 0, 1, 1]
    stim = Stimuli(
        dataset="pairs", split="test", ids=[f"c{i}" for i in range(4)],
        texts=["a cat", "the cat sits", "a dog", "two dogs"],
        images=ImageSource([lambda im=images[j]: im for j in order],
                           [f"img{j}.png" for j in order], [f"d{j}" for j in order]),
        descriptors={"image_id": [f"img{j}" for j in order]},
    )
    adapter = tiny_adapter("clip", tmp_path)
    res = extract_features(adapter, stim, modality="image", sites=["vision.blocks.1.attn"],
                           attention=["raw", "reduce:entropy"],
                           store=ActivationStore(tmp_path / "s"), progress=False)
    assert res.n_items_computed == 2
    raw = res.features["vision.blocks.1.attn@raw"]
    assert len(raw) == 4 and raw[0].shape == (2, 17, 17)  # CLS + 4 x 4 patches
    np.testing.assert_array_equal(raw[0], raw[1])
    assert not np.array_equal(raw[1], raw[2])
    assert res.features["vision.blocks.1.attn@entropy"].shape == (4, 2)

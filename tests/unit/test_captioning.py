"""vlprobe.captioning: the word vocabulary, the caption metrics (with and without Java), the
decoder registry and the grid decoder's shapes, weights and decoding arguments."""

from __future__ import annotations

import pytest

from vlprobe.captioning import metrics as M
from vlprobe.captioning.decoders import DECODER_KINDS, check_decoder_config, decoder_class
from vlprobe.captioning.vocab import (
    SPECIALS,
    build_tokenizer,
    caption_words,
    load_tokenizer,
    vocabulary,
)
from vlprobe.errors import ConfigError, DataError

pytest.importorskip("pycocoevalcap.bleu.bleu")

TRICKY = ["A dog's tri-colored ball .", "Two men \"play\" soccer!", "the DOG, running;  fast"]


# -- vocabulary ----------------------------------------------------------------------------------
def test_caption_words_delete_punctuation_like_karpathy():
    assert caption_words(TRICKY[0]) == ["a", "dogs", "tricolored", "ball"]
    assert caption_words(TRICKY[1]) == ["two", "men", "play", "soccer"]


def test_vocabulary_order_and_threshold():
    caps = ["a dog runs", "a dog sits", "a cat", "the cat"]
    assert vocabulary(caps, 2) == [*SPECIALS, "a", "cat", "dog"]  # counts 3, 2, 2 (ties a-z)
    assert vocabulary(caps, 1)[4:] == ["a", "cat", "dog", "runs", "sits", "the"]
    with pytest.raises(DataError, match="no word occurs 9 times"):
        vocabulary(caps, 9)
    with pytest.raises(DataError, match="min_count"):
        vocabulary(caps, 0)


def test_tokenizer_normalises_as_caption_words_and_round_trips(tmp_path):
    vocab = vocabulary(TRICKY, 1)
    tok = build_tokenizer(vocab, 16)
    for text in TRICKY:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.convert_ids_to_tokens(ids) == caption_words(text)
    unk = tok("a zebra", add_special_tokens=False)["input_ids"]
    assert unk == [vocab.index("a"), SPECIALS.index("<unk>")]
    ids = [1, vocab.index("dogs"), vocab.index("ball"), 2, 0]
    assert tok.decode(ids, skip_special_tokens=True) == "dogs ball"
    tok.save_pretrained(str(tmp_path))
    again = load_tokenizer(tmp_path)
    assert again(TRICKY[2], add_special_tokens=False)["input_ids"] == tok(
        TRICKY[2], add_special_tokens=False)["input_ids"]
    offsets = tok(TRICKY[0], add_special_tokens=False, return_offsets_mapping=True)
    assert [TRICKY[0][a:b] for a, b in offsets["offset_mapping"]] == [
        "A", "dog's", "tri-colored", "ball"]


# -- metrics -------------------------------------------------------------------------------------
REFS = {"a": ["a dog runs on the grass ."], "b": ["two men play football in a park"],
        "c": ["a red car parks near the old house"]}
SAME = {"a": "A dog runs on the grass", "b": "two men play football in a park .",
        "c": "a red car parks near the old house"}


def _check_perfect(scores):
    for n in range(1, 5):
        assert scores[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(1.0)
    assert scores["CIDEr"] == pytest.approx(10.0)  # CIDEr's x10 scale, idf over 3 images


def test_identical_candidates_score_perfectly_and_others_do_not():
    got = M.score_runs({"same": SAME, "other": {"a": "a cat", "b": "a cat", "c": "a cat"}},
                       REFS, meteor=False)
    _check_perfect(got["same"].scores)
    other = got["other"].scores
    assert other["BLEU-4"] < 1e-6 and other["CIDEr"] < 0.5 and other["ROUGE-L"] < 0.4
    assert got["same"].scores["METEOR"] is None
    assert any("METEOR skipped" in n for n in got["same"].notes)
    assert any("SPICE" in n for n in got["same"].notes)
    assert len(got["same"].per_image["CIDEr"]) == 3


def test_without_java_meteor_is_skipped_and_the_rest_computed(monkeypatch):
    def no_java(*_a, **_k):
        raise AssertionError("Java must not be called")

    monkeypatch.setattr(M, "java_available", lambda: False)
    monkeypatch.setattr(M, "ptb_tokenize", no_java)
    monkeypatch.setattr(M, "_meteor_scorer", no_java)
    got = M.caption_metrics(SAME, REFS)  # meteor requested
    assert got.tokenizer == "python" and got.scores["METEOR"] is None
    _check_perfect(got.scores)
    assert any("METEOR skipped: it needs Java" in n for n in got.notes)
    assert any("approximated in Python" in n for n in got.notes)


def test_python_tokenizer_matches_ptb_conventions():
    got = M.simple_ptb_tokenize(['A dog\'s ball, "red" ...', "We cannot see Washington D.C."])
    assert got == ["a dog 's ball red", "we can not see washington d.c"]


@pytest.mark.skipif(not M.java_available(), reason="Java is not installed")
def test_python_tokenizer_agrees_with_java_ptb():
    texts = ["A black dog's tri-colored ball .", "Two men ( brothers ) play soccer !",
             'A sign says " free hugs " .', "The girl is n't running"]
    java = M.ptb_tokenize(texts)
    assert java == M.simple_ptb_tokenize(texts)
    assert java[1] == "two men -lrb- brothers -rrb- play soccer"  # COCO keeps these


def test_bad_metric_input():
    with pytest.raises(DataError, match="no references for"):
        M.caption_metrics({"x": "a dog"}, REFS, meteor=False)
    with pytest.raises(DataError, match="no candidates"):
        M.caption_metrics({}, REFS, meteor=False)
    with pytest.raises(DataError, match="has no references"):
        M.caption_metrics({"a": "a dog"}, {"a": []}, meteor=False)


def test_missing_package_is_a_clear_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def blocked(name, *args, **kw):
        if name.startswith("pycocoevalcap"):
            raise ImportError(name)
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", blocked)
    with pytest.raises(ConfigError, match=r"vlprobe\[captions\]"):
        M.caption_metrics(SAME, REFS, meteor=False)


# -- decoders ------------------------------------------------------------------------------------
def test_decoder_config_is_checked():
    cfg = check_decoder_config({"width": 64, "heads": 4})
    assert cfg["kind"] == "grid_transformer" and cfg["layers"] == 3 and cfg["min_count"] == 5
    with pytest.raises(ConfigError, match=r"not available.*frozen LM"):
        check_decoder_config({"kind": "prefix_lm"})
    with pytest.raises(ConfigError, match="unknown key 'depth'"):
        check_decoder_config({"depth": 3})
    with pytest.raises(ConfigError, match="not divisible"):
        check_decoder_config({"width": 30, "heads": 4})
    with pytest.raises(ConfigError, match=r"decoder\.layers: expected int"):
        check_decoder_config({"layers": 2.5})
    with pytest.raises(ConfigError, match="dropout"):
        check_decoder_config({"dropout": 1.0})
    assert set(DECODER_KINDS) == {"grid_transformer"}


def test_grid_decoder_shapes_weights_and_arguments():
    torch = pytest.importorskip("torch")
    cls = decoder_class("grid_transformer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        dec = cls.build(check_decoder_config({"width": 16, "layers": 2, "heads": 2, "ffn": 32,
                                              "max_words": 6}), 8, 3, 20)
    grid = torch.randn(2, 9, 8)
    ids = torch.tensor([[1, 5, 6], [1, 7, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert dec(grid, ids, mask).shape == (2, 3, 20)
    assert dec.memory(grid).shape == (2, 9, 16) and dec.max_positions == 8
    with pytest.raises(ConfigError, match=r"expected grid features \[B, 9, 8\]"):
        dec.memory(torch.randn(2, 4, 8))
    tensors = dec.state_tensors()
    assert "lm.lm_head.weight" not in tensors and "lm.transformer.wte.weight" in tensors
    other = cls.build(check_decoder_config({"width": 16, "layers": 2, "heads": 2, "ffn": 32,
                                            "max_words": 6}), 8, 3, 20)
    other.load_tensors(tensors)
    assert other.lm.lm_head.weight is other.lm.transformer.wte.weight
    dec.eval()
    other.eval()
    assert torch.equal(dec(grid, ids, mask), other(grid, ids, mask))
    from vlprobe.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="missing tensors"):
        other.load_tensors({k: v for k, v in tensors.items() if k != "visual.weight"})
    for bad in ({"max_length": 1}, {"max_length": 9}, {"max_length": 4, "num_beams": 0}):
        with pytest.raises(ConfigError):
            dec.generate_ids(grid, **bad)
    assert dec.generate_ids(grid, 5).shape[0] == 2 and not dec.training
    assert {s for s in dec.text_sites() if s in dec.hook_table()} == set(dec.hook_table())

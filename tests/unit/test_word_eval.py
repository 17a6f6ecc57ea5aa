"""Word-pair / analogy readers and scorers, corpora, and skip-gram freezing (text_eval)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from vlprobe.analyses.text.text_eval.analogy import (
    AnalogySection,
    evaluate_analogies,
    read_analogies,
    section_kind,
)
from vlprobe.analyses.text.text_eval.corpus import load_corpus, read_lines
from vlprobe.analyses.text.text_eval.data import gensim_test_data, pair_file, questions_words_path
from vlprobe.analyses.text.text_eval.pairs import WordPairs, read_word_pairs, score_pairs
from vlprobe.analyses.text.text_eval.skipgram import train_skipgram
from vlprobe.errors import ConfigError, DataError

# ---- word pairs ------------------------------------------------------------------------------


def test_read_pairs_formats(tmp_path):
    tsv = tmp_path / "a.tsv"
    tsv.write_text("# comment\n# Word 1\tWord 2\tHuman\nLove\tsex\t6.77\ntiger\tcat\t7.35\n")
    csv = tmp_path / "b.csv"
    csv.write_bytes(b"Word 1,Word 2,Human (mean)\r\nlove,sex,6.77\r\ntiger,cat,7.35\r\n")
    men = tmp_path / "men"
    men.write_text("word1 word2 score\nlove sex 6.77\ntiger cat 7.35\n")
    for path in (tsv, csv, men):
        wp = read_word_pairs(path, "x")
        assert wp.word1 == ["love", "tiger"] and wp.word2 == ["sex", "cat"]
        np.testing.assert_allclose(wp.scores, [6.77, 7.35])
        assert wp.n_duplicates == 0


def test_read_pairs_score_column_and_duplicates(tmp_path):
    f = tmp_path / "simlex.txt"
    f.write_text("w1  w2  pos score wn\nold\tnew\tA\t1.58\tX\nold\tnew\tA\t1.58\tX\n"
                 "smart\tclever\tA\t9.2\tX\n")
    wp = read_word_pairs(f, "simlex999", score_col=3)
    assert len(wp) == 2 and wp.n_duplicates == 1
    np.testing.assert_allclose(wp.scores, [1.58, 9.2])


def test_read_pairs_bad_row(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_text("a\tb\t1.0\nc\td\tnotanumber\n")
    with pytest.raises(DataError, match=r"bad\.txt:2"):
        read_word_pairs(f)
    with pytest.raises(DataError, match="not found"):
        read_word_pairs(tmp_path / "missing.txt")


def test_gensim_bundled_pair_sets():
    ws = read_word_pairs(pair_file("wordsim353", None)[0], "wordsim353")
    sl = read_word_pairs(pair_file("simlex999", None)[0], "simlex999")
    assert len(ws) == 353 and len(sl) == 999
    assert pair_file("men", None) is None  # MEN needs the reference kit
    with pytest.raises(ConfigError, match="unknown word-pair set"):
        pair_file("nope", None)


def test_score_pairs_matches_scipy_and_counts_oov():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(8)]
    vec = {w: rng.normal(size=5) for w in words}
    w1 = ["w0", "w1", "w2", "w3", "w4", "oov1", "w5"]
    w2 = ["w1", "w2", "w3", "w4", "w5", "w6", "oov2"]
    human = np.array([1.0, 3.0, 2.0, 5.0, 4.0, 9.0, 8.0])
    pairs = WordPairs("t", w1, w2, human)
    s = score_pairs(vec, pairs)
    cos = [vec[a] @ vec[b] / np.linalg.norm(vec[a]) / np.linalg.norm(vec[b])
           for a, b in zip(w1[:5], w2[:5], strict=True)]
    assert s.pearson == pytest.approx(pearsonr(cos, human[:5])[0])
    assert s.spearman == pytest.approx(spearmanr(cos, human[:5])[0])
    assert (s.n_pairs, s.n_covered) == (7, 5)
    assert s.coverage == pytest.approx(5 / 7)
    assert s.oov == ["oov1", "oov2"]


def test_score_pairs_too_few_covered_is_nan():
    s = score_pairs({"a": np.ones(2)}, WordPairs("t", ["a", "b"], ["a", "c"], np.ones(2)))
    assert np.isnan(s.pearson) and s.n_covered == 1 and s.oov == ["b", "c"]


# ---- analogies -------------------------------------------------------------------------------


def test_questions_words_sections():
    sections = read_analogies(questions_words_path())
    assert len(sections) == 14
    sem = [s for s in sections if s.kind == "semantic"]
    syn = [s for s in sections if s.kind == "syntactic"]
    assert [s.name for s in sem] == ["capital-common-countries", "capital-world", "currency",
                                     "city-in-state", "family"]
    assert len(syn) == 9 and all(s.name.startswith("gram") for s in syn)
    assert sum(len(s.questions) for s in sem) == 8869
    assert sum(len(s.questions) for s in syn) == 10675
    assert sections[0].questions[0] == ("athens", "greece", "baghdad", "iraq")
    assert section_kind("gram3-comparative") == "syntactic" and section_kind("family") == "semantic"


def test_read_analogies_errors(tmp_path):
    f = tmp_path / "q.txt"
    f.write_text("a b c d\n")
    with pytest.raises(DataError, match="before the first"):
        read_analogies(f)
    f.write_text(": s\na b c\n")
    with pytest.raises(DataError, match="expected 4 words"):
        read_analogies(f)


def test_evaluate_analogies_hand_case():
    # king - man + woman = queen exactly; "big : bigger" has one OOV word.
    words = ["man", "woman", "king", "queen", "apple", "big"]
    v = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]], float)
    sections = [
        AnalogySection("family", "semantic", [("man", "king", "woman", "queen"),
                                              ("man", "woman", "king", "apple")]),
        AnalogySection("gram3", "syntactic", [("big", "bigger", "man", "men")]),
    ]
    out = evaluate_analogies(words, v, sections)
    assert (out["semantic"].n, out["semantic"].covered, out["semantic"].correct) == (2, 2, 1)
    assert out["semantic"].accuracy == 0.5 and out["semantic"].coverage == 1.0
    assert out["syntactic"].covered == 0 and np.isnan(out["syntactic"].accuracy)
    assert out["all"].n == 3 and out["all"].coverage == pytest.approx(2 / 3)
    # restricting the vocabulary to 3 words leaves no question covered
    assert evaluate_analogies(words, v, sections, restrict_vocab=3)["all"].covered == 0


# ---- corpora ---------------------------------------------------------------------------------


def test_read_lines_and_bad_corpus(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("The Cat sat\n\n  on the MAT \n")
    assert read_lines(f) == [["the", "cat", "sat"], ["on", "the", "mat"]]
    assert load_corpus(str(f)).n_tokens == 6
    with pytest.raises(ConfigError, match="one sentence per line"):
        load_corpus(str(tmp_path / "missing.txt"))


def test_lee_corpus():
    c = load_corpus("lee")
    assert c.n_tokens == 59890 and "lee_background.cor" in c.description
    assert (gensim_test_data() / "lee_background.cor").is_file()


# ---- skip-gram with frozen vectors -----------------------------------------------------------


def _sentences():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(40)] + ["dog", "cat", "rare"]
    p = np.r_[np.full(42, 1.0), 0.05]
    p /= p.sum()
    return [list(rng.choice(vocab, size=8, p=p)) for _ in range(400)]


def test_frozen_rows_unchanged_others_trained():
    sents = _sentences()
    kw = dict(vector_size=10, window=3, epochs=2, min_count=1, seed=3)
    frozen = {"dog": np.linspace(-1, 1, 10).astype(np.float32),
              "cat": np.full(10, 0.5, np.float32)}
    m = train_skipgram(sents, frozen=frozen, **kw)
    for w, v in frozen.items():
        assert np.array_equal(m.wv[w], v)  # bit-for-bit
    assert m.wv.vectors_lockf.shape == (len(m.wv),)
    assert m.wv.vectors_lockf[m.wv.key_to_index["dog"]] == 0.0
    # every unfrozen word moved away from gensim's initialisation (seeded default_rng)
    from gensim.models import Word2Vec
    from gensim.models.keyedvectors import prep_vectors

    fresh = Word2Vec(vector_size=10, window=3, min_count=1, sg=1, seed=3, workers=1)
    fresh.build_vocab(sents)
    init = prep_vectors((len(m.wv), 10), seed=3)
    assert np.array_equal(fresh.wv.vectors, init)
    assert fresh.wv.index_to_key == m.wv.index_to_key
    free = [i for w, i in m.wv.key_to_index.items() if w not in frozen]
    assert all(not np.array_equal(m.wv.vectors[i], init[i]) for i in free)


def test_skipgram_deterministic_and_keep_words():
    sents = _sentences()
    kw = dict(vector_size=8, window=2, epochs=1, min_count=5, seed=7)
    a = train_skipgram(sents, keep_words=["rare"], **kw)
    b = train_skipgram(sents, keep_words=["rare"], **kw)
    assert np.array_equal(a.wv.vectors, b.wv.vectors)
    assert "rare" in a.wv.key_to_index  # kept below min_count
    c = train_skipgram(sents, **{**kw, "seed": 8}, keep_words=["rare"])
    assert not np.array_equal(a.wv.vectors, c.wv.vectors)
    assert "rare" not in train_skipgram(sents, **kw).wv.key_to_index


def test_frozen_word_absent_or_wrong_dim():
    sents = _sentences()
    with pytest.raises(ConfigError, match="not in the corpus vocabulary"):
        train_skipgram(sents, vector_size=4, epochs=1, min_count=1,
                       frozen={"zebra": np.zeros(4, np.float32)})
    with pytest.raises(ConfigError, match="dims"):
        train_skipgram(sents, vector_size=4, epochs=1, min_count=1,
                       frozen={"dog": np.zeros(3, np.float32)})


def test_analogies_agree_with_gensim():
    from gensim.models import KeyedVectors

    path = questions_words_path()
    sections = read_analogies(path)
    use = [s for s in sections if s.name in ("family", "gram8-plural", "currency")]
    words = sorted({w for s in use for q in s.questions for w in q})
    rng = np.random.default_rng(0)
    vec = {w: rng.normal(size=16) for w in words}
    offset = rng.normal(size=16) * 0.7
    for s in use:
        if s.name == "gram8-plural":  # plural = singular + offset: mostly solvable
            for a, b, _, _ in s.questions:
                vec[b] = vec[a] + offset
    words = words[: int(len(words) * 0.9)]  # some questions uncovered
    kv = KeyedVectors(16)
    kv.add_vectors(words, np.stack([vec[w] for w in words]).astype(np.float32))
    _, secs = kv.evaluate_word_analogies(str(path))
    gensim = {s["section"]: (len(s["correct"]), len(s["correct"]) + len(s["incorrect"]))
              for s in secs}
    mine = evaluate_analogies(words, kv.vectors, sections)
    assert (mine["all"].correct, mine["all"].covered) == gensim["Total accuracy"]
    assert mine["syntactic"].correct > 0 and mine["semantic"].covered > 0
    for kind in ("semantic", "syntactic"):
        names = [s.name for s in sections if s.kind == kind]
        assert (mine[kind].correct, mine[kind].covered) == tuple(
            sum(gensim.get(n, (0, 0))[i] for n in names) for i in (0, 1))

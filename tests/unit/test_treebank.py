"""PTB bracketed-tree and CoNLL-U readers (src/vlprobe/data/treebank.py)."""

from __future__ import annotations

import pytest

from vlprobe.data.treebank import (
    Tree,
    base_label,
    parse_conllu,
    parse_ptb,
    ptb_word,
    treebank_files,
)
from vlprobe.errors import DataError

WSJ = """
( (S
    (S-TPC-1
      (NP-SBJ (NNP Mr.) (NNP Vinken) )
      (VP (VBZ is)
        (NP-PRD (NN chairman) )))
    (, ,)
    (NP-SBJ (NNS researchers) )
    (VP (VBD reported)
      (SBAR (-NONE- 0)
        (S (-NONE- *T*-1) )))
    (. .) ))
((S (NP-SBJ (-NONE- *) ) (VP (VB Go) ) (. !) ))
"""

CONLLU = """# sent_id = s1
# text = I don't know.
1	I	I	PRON	PRP	Case=Nom|Number=Sing|Person=1|PronType=Prs	4	nsubj	_	_
2-3	don't	_	_	_	_	_	_	_	_
2	do	do	AUX	VBP	Mood=Ind|Tense=Pres|VerbForm=Fin	4	aux	_	_
3	n't	not	PART	RB	_	4	advmod	_	_
4	know	know	VERB	VB	VerbForm=Inf	0	root	_	_
4.1	knew	know	VERB	VBD	_	_	_	4:conj	_
5	.	.	PUNCT	.	_	4	punct	_	_

1	Dogs	dog	NOUN	NNS	Number=Plur	2	nsubj	_	_
2	bark	bark	VERB	VBP	Tense=Pres|VerbForm=Fin	0	root	_	_
"""


def test_base_label_strips_function_tags_and_indices():
    assert base_label("NP-SBJ-1") == "NP"
    assert base_label("PP-LOC=2") == "PP"
    assert base_label("S-TPC-1") == "S"
    assert base_label("S") == "S"
    assert base_label("-LRB-") == "-LRB-"
    assert base_label("-NONE-") == "-NONE-"


def test_parse_ptb_trees_words_and_tags():
    trees = parse_ptb(WSJ)
    assert len(trees) == 2
    first = trees[0]
    assert first.label == "" and first.top().label == "S"
    assert first.leaves() == ["Mr.", "Vinken", "is", "chairman", ",", "researchers", "reported",
                              "0", "*T*-1", "."]
    assert first.tagged()[0] == ("Mr.", "NNP")


def test_clean_removes_empty_elements_and_function_tags():
    clean = parse_ptb(WSJ)[0].clean().top()
    assert clean.leaves() == ["Mr.", "Vinken", "is", "chairman", ",", "researchers", "reported",
                              "."]
    assert [c.label for c in clean.children] == ["S", ",", "NP", "VP", "."]
    # the SBAR made only of empty elements is gone: VP has the verb alone
    vp = clean.children[3]
    assert len(vp.children) == 1 and vp.children[0].label == "VBD"
    # S -> S -> VP -> NP -> NN -> chairman: 5 edges
    assert clean.height() == 5
    # the raw tree is deeper: S -> VP -> SBAR -> S -> -NONE- -> *T*-1 (5) plus the wrapper
    assert parse_ptb(WSJ)[0].top().height() == 5
    imperative = parse_ptb(WSJ)[1].clean().top()
    assert [c.label for c in imperative.children] == ["VP", "."]
    assert imperative.leaves() == ["Go", "!"]


def test_clean_of_only_empty_elements_is_none():
    assert Tree("NP", [Tree("-NONE-", ["*"])]).clean() is None


@pytest.mark.parametrize("text", ["(S (NP (NN a))", "(S (NN a)))", "word (S (NN a))"])
def test_parse_ptb_rejects_unbalanced(text):
    with pytest.raises(DataError):
        parse_ptb(text, "x.mrg")


def test_ptb_word_unescapes():
    assert ptb_word("-LRB-") == "(" and ptb_word("-RCB-") == "}"
    assert ptb_word("``") == '"' and ptb_word("''") == '"'
    assert ptb_word("5\\/8") == "5/8"
    assert ptb_word("dog") == "dog"


def test_parse_conllu_skips_ranges_and_empty_nodes():
    sents = parse_conllu(CONLLU, "x.conllu")
    assert [s.sent_id for s in sents] == ["s1", "x.conllu#2"]
    s1 = sents[0]
    assert s1.text == "I don't know."
    assert [t.form for t in s1.tokens] == ["I", "do", "n't", "know", "."]
    assert s1.root().form == "know"
    assert s1.tokens[1].feats == {"Mood": "Ind", "Tense": "Pres", "VerbForm": "Fin"}
    assert [t.form for t in s1.children(4)] == ["I", "do", "n't", "."]
    assert s1.subtree(4) == [1, 2, 3, 4, 5]
    assert sents[1].tokens[0].feats == {"Number": "Plur"}


def test_parse_conllu_rejects_bad_lines():
    with pytest.raises(DataError, match=r"x\.conllu:1"):
        parse_conllu("1\tonly\tthree\n", "x.conllu")


def test_treebank_files_detects_format(tmp_path):
    (tmp_path / "a.mrg").write_text(WSJ)
    (tmp_path / "README").write_text("not a tree")
    assert treebank_files(tmp_path) == ("ptb", [tmp_path / "a.mrg"])
    ud = tmp_path / "ud"
    ud.mkdir()
    (ud / "x.conllu").write_text(CONLLU)
    assert treebank_files(ud)[0] == "conllu"
    with pytest.raises(DataError, match="both"):
        treebank_files(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        treebank_files(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no treebank files"):
        treebank_files(empty)


def _trees():
    from hypothesis import strategies as st

    labels = st.sampled_from(["S", "NP", "VP", "PP", "NP-SBJ", "SBAR"])
    tags = st.sampled_from(["NN", "VBD", "DT", ",", "."])
    words = st.text("abcxyz.,$", min_size=1, max_size=5)
    leaf = st.builds(lambda t, w: Tree(t, [w]), tags, words)
    return st.recursive(leaf, lambda kids: st.builds(
        lambda lab, ch: Tree(lab, ch), labels, st.lists(kids, min_size=1, max_size=3)),
        max_leaves=12)


def test_parse_ptb_roundtrips_printed_trees():
    from hypothesis import given, settings

    @settings(max_examples=60, deadline=None)
    @given(_trees())
    def check(tree):
        (back,) = parse_ptb(str(tree))
        assert back == tree
        assert back.leaves() == tree.leaves()
        clean = back.clean()
        assert clean.leaves() == tree.leaves()  # no -NONE- here: cleaning keeps every word
        assert clean.height() == tree.height()

    check()

"""SentEval probing-task generator (src/vlprobe/data/probing_tasks.py) on hand-written and
small synthetic treebanks: exact labels, perturbations, splits, balance, determinism."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from vlprobe.data import DATASETS, DatasetSpec, load_dataset
from vlprobe.data.probing_tasks import (
    TASKS,
    SomoLexicon,
    available_tasks,
    coordination_inversion,
    coordination_split,
    generate_all,
    generate_task,
    ptb_obj_number,
    ptb_subj_number,
    ptb_tense,
    read_corpus,
    sentlen_label,
    task_info,
    top_constituents,
    tree_depth,
    ud_obj_number,
    ud_subj_number,
    ud_tense,
    write_senteval_task,
)
from vlprobe.data.treebank import parse_conllu, parse_ptb
from vlprobe.errors import DataError

# --- hand-written trees -----------------------------------------------------------------------

TREES = {
    # S -> VP -> VP -> PP -> NP -> NN -> director: 6 edges
    "vinken": """( (S (NP-SBJ (NP (NNP Pierre) (NNP Vinken)) (, ,) (ADJP (NP (CD 61) (NNS years))
        (JJ old)) (, ,)) (VP (MD will) (VP (VB join) (NP (DT the) (NN board)) (PP-CLR (IN as)
        (NP (DT a) (JJ nonexecutive) (NN director))) (NP-TMP (NNP Nov.) (CD 29)))) (. .)))""",
    # a topicalised clause with a trace: the trace's SBAR must not count
    "reported": """( (S (S-TPC-1 (NP-SBJ (NNS prices)) (VP (VBD rose))) (, ,)
        (NP-SBJ (NNS analysts)) (VP (VBD said) (SBAR (-NONE- 0) (S (-NONE- *T*-1)))) (. .)))""",
    "coord": """( (S (S (NP-SBJ (NNP Sales)) (VP (VBD rose))) (, ,) (CC but)
        (S (NP-SBJ (NNS profits)) (VP (VBD fell))) (. .)))""",
    "coord_nocomma": """( (S (S (NP-SBJ (PRP I)) (VP (VBD came))) (CC and)
        (S (NP-SBJ (PRP they)) (VP (VBD left) (, ,))) (. .)))""",
    "not_coord": """( (S (NP-SBJ (NNS profits)) (VP (VBD fell) (CC and) (VBD rose)) (. .)))""",
}


def _tree(key):
    return parse_ptb(TREES[key])[0].clean().top()


def test_tree_labels_are_what_the_tree_says():
    assert tree_depth(_tree("vinken")) == 6
    assert top_constituents(_tree("vinken")) == "NP_VP_."
    # the empty SBAR (-NONE- only) is removed before measuring
    t = _tree("reported")
    assert top_constituents(t) == "S_,_NP_VP_."
    # S -> S -> NP -> NNS -> prices: 4 edges; with the trace it would be
    # S -> VP -> SBAR -> S -> -NONE- -> *T*-1: 5
    assert tree_depth(t) == 4
    assert parse_ptb(TREES["reported"])[0].top().height() == 5


def test_ptb_tense_and_numbers_are_what_the_tree_says():
    def tagged(key):
        return parse_ptb(TREES[key])[0].clean(strip_tags=False).top()

    # "will join": a modal is not a tense; Pierre Vinken is a proper noun; "the board": NN
    assert ptb_tense(tagged("vinken")) is None
    assert ptb_subj_number(tagged("vinken")) is None
    assert ptb_obj_number(tagged("vinken")) == "NN"
    # the main clause is "analysts said" (the topicalised clause is not the main verb)
    assert ptb_tense(tagged("reported")) == "PAST"
    assert ptb_subj_number(tagged("reported")) == "NNS"
    assert ptb_obj_number(tagged("reported")) is None  # its SBAR object was only a trace
    assert ptb_tense(tagged("not_coord")) == "PAST"
    has = parse_ptb("((S (NP-SBJ (NP (DT The) (NNS prices)) (PP (IN of) (NP (NN oil))))"
                    " (VP (VBZ have) (VP (VBN hit) (NP (DT a) (NN record)) (NP-TMP (NN today))))"
                    " (. .)))")[0].clean(strip_tags=False).top()
    assert ptb_tense(has) == "PRES"
    assert ptb_subj_number(has) == "NNS"  # head of NP -> NP PP is the first NP's noun
    assert ptb_obj_number(has) == "NN"  # NP-TMP is not an object
    pron = parse_ptb("((S (NP-SBJ (PRP They)) (VP (VBP like) (NP (NP (NNS cats)) (CC and)"
                     " (NP (NN fish))))))")[0].clean(strip_tags=False).top()
    assert ptb_tense(pron) == "PRES"
    assert ptb_subj_number(pron) is None and ptb_obj_number(pron) is None  # pronoun; coord.


def test_coordination_split_and_inversion():
    from vlprobe.data.probing_tasks import SourceSentence

    t = _tree("coord")
    spans = coordination_split(t)
    assert spans == (0, 2, 4, 6)
    tagged = t.tagged()
    s = SourceSentence("x", [w for w, _ in tagged], [p for _, p in tagged], tree=t)
    assert coordination_inversion(s, spans) == ["Profits", "fell", ",", "but", "Sales", "rose",
                                                "."]
    t2 = _tree("coord_nocomma")
    spans2 = coordination_split(t2)
    assert spans2 == (0, 2, 3, 5)  # the clause-final comma of the second clause stays put
    tagged2 = t2.tagged()
    s2 = SourceSentence("y", [w for w, _ in tagged2], [p for _, p in tagged2], tree=t2)
    assert coordination_inversion(s2, spans2) == ["They", "left", "and", "I", "came", ",", "."]
    assert coordination_split(_tree("not_coord")) is None
    assert coordination_split(_tree("vinken")) is None


def test_sentlen_bins():
    from vlprobe.data.probing_tasks import SourceSentence

    def s(n):
        return SourceSentence("x", ["w"] * n, ["NN"] * n)

    assert [sentlen_label(s(n)) for n in (4, 5, 8, 9, 12, 13, 20, 21, 25, 26, 28, 29)] == [
        None, "0", "0", "1", "1", "2", "3", "4", "4", "5", "5", None]


# --- hand-written CoNLL-U -----------------------------------------------------------------------


def _ud(rows):
    lines = []
    for i, (form, upos, xpos, feats, head, rel) in enumerate(rows, 1):
        lines.append("\t".join([str(i), form, form.lower(), upos, xpos, feats or "_", str(head),
                                rel, "_", "_"]))
    return parse_conllu("\n".join(lines) + "\n")[0]


PAST = "Mood=Ind|Tense=Past|VerbForm=Fin"
PRES = "Mood=Ind|Tense=Pres|VerbForm=Fin"


def test_ud_labels():
    chased = _ud([("The", "DET", "DT", "", 2, "det"), ("dogs", "NOUN", "NNS", "Number=Plur", 3,
                  "nsubj"), ("chased", "VERB", "VBD", PAST, 0, "root"),
                  ("a", "DET", "DT", "", 5, "det"), ("cat", "NOUN", "NN", "Number=Sing", 3, "obj"),
                  (".", "PUNCT", ".", "", 3, "punct")])
    assert ud_tense(chased) == "PAST"
    assert ud_subj_number(chased) == "NNS"
    assert ud_obj_number(chased) == "NN"
    # a participle root takes the tense of its finite auxiliary
    has = _ud([("The", "DET", "DT", "", 2, "det"), ("dog", "NOUN", "NN", "Number=Sing", 4,
               "nsubj"), ("has", "AUX", "VBZ", PRES, 4, "aux"),
               ("chased", "VERB", "VBN", "Tense=Past|VerbForm=Part", 0, "root"),
               ("cats", "NOUN", "NNS", "Number=Plur", 4, "obj")])
    assert ud_tense(has) == "PRES"
    assert ud_subj_number(has) == "NN" and ud_obj_number(has) == "NNS"
    # copula: the root is an adjective, the tense is the copula's
    cop = _ud([("Dogs", "NOUN", "NNS", "Number=Plur", 3, "nsubj"),
               ("were", "AUX", "VBD", PAST, 3, "cop"), ("happy", "ADJ", "JJ", "", 0, "root")])
    assert ud_tense(cop) == "PAST" and ud_subj_number(cop) == "NNS"
    assert ud_obj_number(cop) is None
    # no finite tensed verb (modal), pronoun subject: no label
    will = _ud([("They", "PRON", "PRP", "Number=Plur", 3, "nsubj"),
                ("will", "AUX", "MD", "VerbForm=Fin", 3, "aux"),
                ("go", "VERB", "VB", "VerbForm=Inf", 0, "root")])
    assert ud_tense(will) is None and ud_subj_number(will) is None


def test_task_names_and_categories():
    assert len(TASKS) == 10
    assert task_info("bigram_shift").name == "BShift"
    assert task_info("odd_man_out.txt").name == "SOMO"
    assert task_info("treedepth").name == "TreeDepth"
    with pytest.raises(DataError, match="unknown probing task"):
        task_info("nope")


# --- synthetic treebanks ----------------------------------------------------------------------

NOUNS = ["dog", "cat", "bird", "horse", "cow", "fish", "lion", "wolf", "bear", "fox"]
VERBS = ["saw", "liked", "chased", "found", "heard", "met"]
ADVS = ["then", "later", "often", "once", "again", "soon"]


def _np(rng, det=True):
    noun = NOUNS[int(rng.zipf(1.6)) % len(NOUNS)]
    plural = rng.random() < 0.5
    tag, word = ("NNS", noun + "s") if plural else ("NN", noun)
    adjs = " ".join("(JJ big)" for _ in range(int(rng.integers(0, 3))))
    return f"(NP (DT the) {adjs} ({tag} {word}))" if det else f"(NP ({tag} {word}))"


def _clause(rng, depth):
    verb = VERBS[int(rng.integers(len(VERBS)))]
    vtag, verb = ("VBD", verb) if rng.random() < 0.5 else ("VBZ", "sees")
    obj = _np(rng)
    for _ in range(depth):  # nested PPs make deeper and longer trees
        obj = f"(NP {obj} (PP (IN near) {_np(rng)}))"
    subj = _np(rng)
    trace = "(SBAR (-NONE- 0) (S (-NONE- *T*-1)))" if rng.random() < 0.3 else ""
    return f"(S (NP-SBJ {subj}) (VP ({vtag} {verb}) (NP {obj}) {trace}))"


def _ptb_text(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.3:
            tree = (f"(S {_clause(rng, int(rng.integers(0, 3)))} (, ,) (CC but) "
                    f"{_clause(rng, int(rng.integers(0, 3)))} (. .))")
        elif rng.random() < 0.5:
            adv = ADVS[int(rng.integers(len(ADVS)))]
            tree = f"(S (ADVP (RB {adv})) {_clause(rng, int(rng.integers(0, 6)))[3:-1]} (. .))"
        else:
            tree = _clause(rng, int(rng.integers(0, 6)))[:-1] + " (. .))"
        out.append(f"( {tree} )")
    return "\n".join(out) + "\n"


def _conllu_text(n, seed=0):
    rng = np.random.default_rng(seed)
    blocks = []
    for k in range(n):
        rows = []
        n_adj = int(rng.integers(0, 20))
        subj_pl, obj_pl, past = rng.random(3) < 0.5
        subj = NOUNS[int(rng.integers(len(NOUNS)))] + ("s" if subj_pl else "")
        obj = NOUNS[int(rng.integers(len(NOUNS)))] + ("s" if obj_pl else "")
        verb = VERBS[int(rng.integers(len(VERBS)))] if past else "sees"
        rows.append(("The", "DET", "DT", "_", 2, "det"))
        rows.append((subj, "NOUN", "NNS" if subj_pl else "NN",
                     "Number=Plur" if subj_pl else "Number=Sing", 3, "nsubj"))
        rows.append((verb, "VERB", "VBD" if past else "VBZ", PAST if past else PRES, 0, "root"))
        rows.append(("the", "DET", "DT", "_", 5 + n_adj, "det"))
        for _ in range(n_adj):
            rows.append(("big", "ADJ", "JJ", "_", 5 + n_adj, "amod"))
        rows.append((obj, "NOUN", "NNS" if obj_pl else "NN",
                     "Number=Plur" if obj_pl else "Number=Sing", 3, "obj"))
        rows.append(("now", "ADV", "RB", "_", 3, "advmod"))
        rows.append((str(k), "NUM", "CD", "_", 3, "obl"))  # makes every sentence unique
        rows.append((".", "PUNCT", ".", "_", 3, "punct"))
        lines = [f"# sent_id = syn-{k}"]
        for i, (form, upos, xpos, feats, head, rel) in enumerate(rows, 1):
            lines.append(f"{i}\t{form}\t{form.lower()}\t{upos}\t{xpos}\t{feats}\t{head}\t{rel}"
                         "\t_\t_")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


@pytest.fixture(scope="module")
def ptb_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ptb")
    (d / "wsj_a.mrg").write_text(_ptb_text(300, seed=1))
    (d / "wsj_b.mrg").write_text(_ptb_text(300, seed=2))
    return d


@pytest.fixture(scope="module")
def ud_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("ud") / "syn.conllu"
    f.write_text(_conllu_text(400, seed=3))
    return f


@pytest.fixture(scope="module")
def ptb(ptb_dir):
    return read_corpus(ptb_dir)


@pytest.fixture(scope="module")
def ud(ud_file):
    return read_corpus(ud_file)


@pytest.fixture(scope="module")
def ptb_tasks(ptb):
    return generate_all(ptb, seed=0, skip_top=0)


@pytest.fixture(scope="module")
def ud_tasks(ud):
    return generate_all(ud, seed=0, skip_top=0)


def _by_sid(corpus):
    return {s.sid: s for s in corpus.sentences}


def test_available_tasks(ptb, ud, ptb_tasks, ud_tasks):
    assert set(ptb_tasks) == set(TASKS)
    assert set(ud_tasks) == {"SentLen", "WC", "BShift", "Tense", "SubjNum", "ObjNum", "SOMO"}
    assert available_tasks(ptb) == list(ptb_tasks)
    with pytest.raises(DataError, match="bracketed"):
        generate_task("CoordInv", ud)
    with pytest.raises(DataError, match="bracketed"):
        generate_task("TreeDepth", ud)


def test_every_label_is_what_the_annotation_says(ptb, ud, ptb_tasks, ud_tasks):
    P, U = _by_sid(ptb), _by_sid(ud)
    for it in ptb_tasks["TreeDepth"].items:
        assert it.label == str(tree_depth(P[it.source_id].tree)) and 5 <= int(it.label) <= 12
        assert it.text == P[it.source_id].text
    top = ptb_tasks["TopConst"]
    for it in top.items:
        seq = top_constituents(P[it.source_id].tree)
        assert it.label == (seq if seq in top.datasheet["top_sequences"] else "OTHER")
    for it in ptb_tasks["SentLen"].items:
        assert it.label == sentlen_label(P[it.source_id])
    fns = {"Tense": ud_tense, "SubjNum": ud_subj_number, "ObjNum": ud_obj_number}
    for name, fn in fns.items():
        for it in ud_tasks[name].items:
            assert it.label == fn(U[it.source_id].ud)
            assert it.text == U[it.source_id].text
    fns = {"Tense": ptb_tense, "SubjNum": ptb_subj_number, "ObjNum": ptb_obj_number}
    for name, fn in fns.items():
        assert ptb_tasks[name].datasheet["label_source"].startswith("gold: PTB")
        for it in ptb_tasks[name].items:
            assert it.label == fn(P[it.source_id].tagged_tree)
    for it in ptb_tasks["Tense"].items:  # the synthetic main verb is "sees" (VBZ) or VBD
        assert (it.label == "PRES") == (" sees " in f" {it.text} ".split(" but ")[0] + " ")
    # the synthetic UD text says it too: tense from the verb, numbers from the nouns
    for it in ud_tasks["Tense"].items:
        assert (it.label == "PRES") == (" sees " in it.text)
    for it in ud_tasks["SubjNum"].items:
        assert (it.label == "NNS") == it.text.split()[1].endswith("s")


def test_wc_sentences_hold_exactly_one_vocabulary_word(ptb_tasks, ud_tasks):
    for task in (ptb_tasks["WC"], ud_tasks["WC"]):
        vocab = set(task.label_names)
        assert task.datasheet["wc_vocabulary_size"] == len(vocab) >= 2
        for it in task.items:
            hits = [w.lower() for w in it.text.split() if w.lower() in vocab]
            assert hits == [it.label]


def test_bshift_swaps_exactly_two_adjacent_tokens(ptb, ptb_tasks):
    P = _by_sid(ptb)
    task = ptb_tasks["BShift"]
    assert set(task.label_names) == {"O", "I"}
    for it in task.items:
        orig, new = P[it.source_id].words, it.text.split(" ")
        if it.label == "O":
            assert new == orig
            continue
        diff = [i for i in range(len(orig)) if orig[i] != new[i]]
        assert len(new) == len(orig) and len(diff) == 2 and diff[1] == diff[0] + 1
        i = diff[0]
        assert new[i] == orig[i + 1] and new[i + 1] == orig[i]
        assert it.detail["swapped"] == i


def test_somo_replaces_exactly_one_token_with_same_pos(ptb, ud, ptb_tasks, ud_tasks):
    for corpus, task in ((ptb, ptb_tasks["SOMO"]), (ud, ud_tasks["SOMO"])):
        P = _by_sid(corpus)
        lex = SomoLexicon(corpus.sentences)
        assert set(task.label_names) == {"O", "C"}
        for it in task.items:
            src = P[it.source_id]
            new = it.text.split(" ")
            diff = [i for i in range(len(src.words)) if src.words[i] != new[i]]
            if it.label == "O":
                assert diff == []
                continue
            assert len(new) == len(src.words) and len(diff) == 1
            i = diff[0]
            tag = src.tags[i]
            assert tag in ("NN", "NNS", "VBD", "VBZ") and it.detail["tag"] == tag
            assert new[i].lower() != src.words[i].lower()
            # the new word is a word of the same tag, with a frequency within the band
            f_old, f_new = lex.freq[(src.words[i].lower(), tag)], lex.freq[(new[i].lower(), tag)]
            assert f_new > 0 and f_old / 2 <= f_new <= f_old * 2


def test_coordinv_swaps_the_two_clauses(ptb, ptb_tasks):
    P = _by_sid(ptb)
    task = ptb_tasks["CoordInv"]
    assert set(task.label_names) == {"O", "I"}
    n_inv = 0
    for it in task.items:
        src = P[it.source_id]
        spans = coordination_split(src.tree)
        assert spans is not None
        if it.label == "O":
            assert it.text == src.text
            continue
        n_inv += 1
        a0, a1, b0, b1 = spans
        low = [w.lower() for w in it.text.split(" ")]
        first = [w.lower() for w in src.words[a0:a1]]
        second = [w.lower() for w in src.words[b0:b1]]
        middle = [w.lower() for w in src.words[a1:b0]]
        assert low == second + middle + first + [w.lower() for w in src.words[b1:]]
        assert middle[-1] == "but"
    assert n_inv > 0


def test_splits_disjoint_at_sentence_level_and_balanced(ptb_tasks, ud_tasks):
    for task in [*ptb_tasks.values(), *ud_tasks.values()]:
        by_split = {s: [it.source_id for it in task.split_items(s)] for s in
                    ("train", "validation", "test")}
        for s, ids in by_split.items():
            assert ids, (task.name, s)
            assert len(ids) == len(set(ids)), task.name  # one item per source sentence
        assert not set(by_split["train"]) & set(by_split["validation"])
        assert not set(by_split["train"]) & set(by_split["test"])
        assert not set(by_split["validation"]) & set(by_split["test"])
        for split in ("train", "validation", "test"):
            counts = Counter(it.label for it in task.split_items(split))
            assert set(counts) == set(task.label_names), (task.name, split)
            assert len(set(counts.values())) == 1, (task.name, split, counts)
        sizes = task.datasheet["sizes"]
        assert sum(sizes[s]["total"] for s in sizes) == len(task.items)


def test_deterministic_under_seed(ptb):
    for name in ("TreeDepth", "BShift", "SOMO", "WC"):
        a = generate_task(name, ptb, seed=7, skip_top=0)
        b = generate_task(name, ptb, seed=7, skip_top=0)
        c = generate_task(name, ptb, seed=8, skip_top=0)
        assert [vars(x) for x in a.items] == [vars(x) for x in b.items]
        assert a.datasheet == b.datasheet
        assert [vars(x) for x in a.items] != [vars(x) for x in c.items]


def test_options_cap_and_unknown(ptb):
    t = generate_task("BShift", ptb, seed=0, max_per_class=20, fractions=(0.6, 0.2, 0.2))
    sizes = t.datasheet["sizes"]
    assert [sizes[s]["total"] for s in ("train", "validation", "test")] == [24, 8, 8]
    t = generate_task("TreeDepth", ptb, seed=0, max_per_class=10)
    assert all(n == 10 for n in Counter(it.label for it in t.items).values())
    with pytest.raises(DataError, match="unknown probing task option"):
        generate_task("BShift", ptb, nope=1)
    with pytest.raises(DataError, match="fractions"):
        generate_task("BShift", ptb, fractions=(0.5, 0.5, 0.5))


def test_write_senteval_roundtrip_and_datasheet(tmp_path, ptb_dir, ptb_tasks):
    task = ptb_tasks["TreeDepth"]
    path, sheet = write_senteval_task(task, tmp_path / "tree_depth.txt")
    lines = path.read_text().splitlines()
    assert len(lines) == len(task.items)
    assert all(line.split("\t")[0] in ("tr", "va", "te") for line in lines)
    data = json.loads(sheet.read_text())
    for key in ("task", "category", "label_source", "label_quality", "sizes", "treebank",
                "seed", "size_note", "balancing", "options"):
        assert key in data
    assert "100k/10k/10k" in data["size_note"]
    assert data["label_quality"] == "gold"
    assert len(data["treebank"]["files"]) == 2
    assert all(len(f["sha256"]) == 64 for f in data["treebank"]["files"])
    loaded = load_dataset(DatasetSpec("senteval", name="td", path=str(path)))
    assert {s: len(v) for s, v in loaded.items()} == {
        s: data["sizes"][s]["total"] for s in ("train", "validation", "test")}


def test_probing_task_loader(ptb_dir):
    assert DATASETS.canonical("probing_task") == "probing_task"
    spec = DatasetSpec("probing_task", name="bshift", path=str(ptb_dir),
                       options={"task": "bigram_shift", "max_per_class": 30}, seed=3)
    splits = load_dataset(spec)
    assert list(splits) == ["train", "validation", "test"]
    assert splits["train"].label_names == ["I", "O"] or splits["train"].label_names == ["O", "I"]
    assert sum(len(v) for v in splits.values()) == 60
    assert splits["test"].source["task"] == "BShift"
    assert splits["test"].source["seed"] == 3
    ids = [i for v in splits.values() for i in v.descriptors["source_sentence"]]
    assert len(ids) == len(set(ids))
    with pytest.raises(DataError, match=r"options\.task"):
        load_dataset(DatasetSpec("probing_task", path=str(ptb_dir)))


def test_balance_none_keeps_natural_frequencies(ptb):
    t = generate_task("SentLen", ptb, seed=0, balance="none")
    counts = Counter(it.label for it in t.items)
    assert len(set(counts.values())) > 1
    assert sum(counts.values()) == t.datasheet["n_eligible"]
    assert "none" in t.datasheet["balancing"]
    with pytest.raises(DataError, match="balance"):
        generate_task("SentLen", ptb, balance="up")


def test_cli_writes_files_and_datasheets(tmp_path, ptb_dir, capsys):
    from vlprobe.data.probing_tasks import main

    out = tmp_path / "out"
    assert main([str(ptb_dir), str(out), "--tasks", "TreeDepth", "bigram_shift",
                 "--seed", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "bigram_shift.datasheet.json", "bigram_shift.txt", "tree_depth.datasheet.json",
        "tree_depth.txt"]
    sheet = json.loads((out / "bigram_shift.datasheet.json").read_text())
    assert sheet["seed"] == 2 and sheet["label_quality"].startswith("constructed")
    assert "TreeDepth" in capsys.readouterr().out


def test_annotation_quality_is_recorded(ptb):
    t = generate_task("TreeDepth", ptb, seed=0, annotation="silver")
    assert t.datasheet["label_quality"] == "silver"
    assert t.to_stimuli()["train"].source["label_quality"] == "silver"
    assert generate_task("BShift", ptb).datasheet["label_quality"].startswith("constructed")
    with pytest.raises(DataError, match="annotation"):
        generate_task("TreeDepth", ptb, annotation="bronze")

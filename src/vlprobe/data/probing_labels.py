"""Gold labels read off constituency trees / UD parses, and the perturbations of the
SentEval probing tasks (BShift, SOMO, CoordInv), for :mod:`vlprobe.data.probing_tasks`.

Pure functions of one sentence (or a lexicon built from the corpus); the task generator
decides which sentences enter which task and split.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vlprobe.data.treebank import Tree, UDSentence, base_label, function_tags

SENTLEN_BINS = ((5, 8), (9, 12), (13, 16), (17, 20), (21, 25), (26, 28))
SOMO_TAGS = frozenset({"NN", "NNS", "VB", "VBD", "VBG", "VBN", "VBP", "VBZ", "NOUN", "VERB"})


@dataclass
class SourceSentence:
    """One treebank sentence: display words, POS tags, and its tree or UD parse."""

    sid: str
    words: list[str]
    tags: list[str]
    tree: Tree | None = None
    ud: UDSentence | None = None
    tagged_tree: Tree | None = None  # the cleaned tree with its function tags kept

    @property
    def text(self) -> str:
        return " ".join(self.words)



# --- labels -----------------------------------------------------------------------------------


def sentlen_label(s: SourceSentence, bins: Sequence[Sequence[int]] = SENTLEN_BINS) -> str | None:
    n = len(s.words)
    for k, (lo, hi) in enumerate(bins):
        if lo <= n <= hi:
            return str(k)
    return None


def tree_depth(tree: Tree) -> int:
    """Height of the (cleaned) sentence node: edges down to the deepest word."""
    return tree.height()


def top_constituents(tree: Tree) -> str | None:
    """``_``-joined labels of the sentence node's children (None for a one-word tree)."""
    if tree.is_preterminal:
        return None
    return "_".join(c.label for c in tree.children if isinstance(c, Tree))


def _is_finite(tok) -> bool:
    return tok.feats.get("VerbForm") == "Fin" and tok.feats.get("Tense") in ("Past", "Pres")


def ud_tense(ud: UDSentence) -> str | None:
    """PAST / PRES of the main clause: the root when finite, else its finite aux / cop."""
    root = ud.root()
    if root is None:
        return None
    finite = root if _is_finite(root) else None
    if finite is None:
        for tok in ud.children(root.id):
            if tok.deprel.split(":")[0] in ("aux", "cop") and _is_finite(tok):
                finite = tok
                break
    if finite is None:
        return None
    return {"Past": "PAST", "Pres": "PRES"}[finite.feats["Tense"]]


def _ud_number(ud: UDSentence, relations: tuple[str, ...]) -> str | None:
    root = ud.root()
    if root is None:
        return None
    args = [t for t in ud.children(root.id) if t.deprel in relations]
    if len(args) != 1 or args[0].upos != "NOUN":
        return None
    return {"Sing": "NN", "Plur": "NNS"}.get(args[0].feats.get("Number", ""))


def ud_subj_number(ud: UDSentence) -> str | None:
    """NN / NNS: Number of the root's single nsubj (or nsubj:pass) when it is a common noun."""
    return _ud_number(ud, ("nsubj", "nsubj:pass"))


def ud_obj_number(ud: UDSentence) -> str | None:
    """NN / NNS: Number of the root's single obj when it is a common noun."""
    return _ud_number(ud, ("obj",))


def _kids(node: Tree) -> list[Tree]:
    return [c for c in node.children if isinstance(c, Tree)]


def _main_clause(tree: Tree) -> tuple[Tree, Tree] | None:
    """(S, its first VP child) of a tree whose sentence node is an S, else None."""
    if base_label(tree.label) != "S":
        return None
    vps = [c for c in _kids(tree) if base_label(c.label) == "VP"]
    return (tree, vps[0]) if vps else None


def np_head_noun(node: Tree) -> Tree | None:
    """Pre-terminal of an NP's head noun: its last NN* child, else the head of its first NP
    child (``NP -> NP PP``); None for coordinated NPs and NPs without a noun (pronouns)."""
    kids = _kids(node)
    if any(base_label(k.label) in ("CC", "CONJP") for k in kids):
        return None
    nouns = [k for k in kids if k.is_preterminal and k.label.startswith("NN")]
    if nouns:
        return nouns[-1]
    if kids and base_label(kids[0].label) == "NP":
        return np_head_noun(kids[0])
    return None


def _number(node: Tree | None) -> str | None:
    head = np_head_noun(node) if node is not None else None
    return head.label if head is not None and head.label in ("NN", "NNS") else None


def ptb_tense(tree: Tree) -> str | None:
    """PAST / PRES: the first verb tag of the main VP (descending ``VP -> VP CC VP``);
    VBD -> PAST, VBZ / VBP -> PRES; a modal or no finite verb -> None."""
    main = _main_clause(tree)
    if main is None:
        return None
    vp: Tree | None = main[1]
    while vp is not None:
        for k in _kids(vp):
            if k.is_preterminal and k.label in ("VBD", "VBZ", "VBP", "MD", "VB", "VBN", "VBG",
                                                 "TO"):
                return {"VBD": "PAST", "VBZ": "PRES", "VBP": "PRES"}.get(k.label)
        inner = [k for k in _kids(vp) if base_label(k.label) == "VP"]
        vp = inner[0] if inner else None
    return None


def ptb_subj_number(tree: Tree) -> str | None:
    """NN / NNS: tag of the head noun of the main clause's single NP-SBJ (common nouns)."""
    main = _main_clause(tree)
    if main is None:
        return None
    subj = [k for k in _kids(main[0]) if base_label(k.label) == "NP"
            and "SBJ" in function_tags(k.label)]
    return _number(subj[0]) if len(subj) == 1 else None


def ptb_obj_number(tree: Tree) -> str | None:
    """NN / NNS: head noun of the first untagged NP complement of the main verb (auxiliary
    VP chains are followed down to the lexical verb's VP)."""
    main = _main_clause(tree)
    if main is None:
        return None
    vp = main[1]
    while True:
        objects = [k for k in _kids(vp) if base_label(k.label) == "NP"
                   and not function_tags(k.label)]
        inner = [k for k in _kids(vp) if base_label(k.label) == "VP"]
        if objects or len(inner) != 1:
            break
        vp = inner[0]
    return _number(objects[0]) if objects else None


# --- perturbations ----------------------------------------------------------------------------


def _wordlike(w: str) -> bool:
    return any(ch.isalnum() for ch in w)


def bshift_positions(words: Sequence[str]) -> list[int]:
    """Positions i where swapping words i, i+1 changes the sentence (both word-like)."""
    return [i for i in range(len(words) - 1)
            if _wordlike(words[i]) and _wordlike(words[i + 1])
            and words[i].lower() != words[i + 1].lower()]


def bigram_shift(words: Sequence[str], i: int) -> list[str]:
    out = list(words)
    out[i], out[i + 1] = out[i + 1], out[i]
    return out


def match_case(new: str, old: str) -> str:
    if old[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


class SomoLexicon:
    """Word frequencies per POS tag; replacements of similar frequency and the same tag."""

    def __init__(self, sentences: Sequence[SourceSentence], ratio: float = 2.0) -> None:
        self.ratio = float(ratio)
        self.freq: Counter[tuple[str, str]] = Counter()
        for s in sentences:
            for w, t in zip(s.words, s.tags):
                if t in SOMO_TAGS and w.isalpha():
                    self.freq[(w.lower(), t)] += 1
        by_tag: dict[str, list[tuple[int, str]]] = {}
        for (w, t), f in self.freq.items():
            by_tag.setdefault(t, []).append((f, w))
        # per tag: words sorted by (frequency, word), so a frequency band is one slice
        self.by_tag = {t: sorted(v) for t, v in by_tag.items()}
        self._freqs = {t: [f for f, _ in v] for t, v in self.by_tag.items()}
        self._cache: dict[tuple[str, str], list[str]] = {}

    def replacements(self, word: str, tag: str) -> list[str]:
        """Words of the same tag whose frequency is within ``[f / ratio, f * ratio]``."""
        key = (word.lower(), tag)
        if key not in self._cache:
            f = self.freq.get(key, 0)
            out: list[str] = []
            if f:
                freqs = self._freqs[tag]
                a = bisect.bisect_left(freqs, f / self.ratio)
                b = bisect.bisect_right(freqs, f * self.ratio)
                out = [w for _, w in self.by_tag[tag][a:b] if w != key[0]]
            self._cache[key] = out
        return self._cache[key]

    def positions(self, s: SourceSentence) -> list[int]:
        return [i for i, (w, t) in enumerate(zip(s.words, s.tags))
                if t in SOMO_TAGS and w.isalpha() and self.replacements(w, t)]


def coordination_split(tree: Tree) -> tuple[int, int, int, int] | None:
    """Token spans of a top-level ``S (,) CC S (punct)`` coordination, or None.

    Returns ``(a0, a1, b0, b1)``: clause 1 = words[a0:a1], clause 2 = words[b0:b1]; what lies
    between is the optional comma and the conjunction; after b1 only punctuation. A comma or
    colon that ends a clause is left out of its span (it stays where it is).
    """
    kids = [c for c in tree.children if isinstance(c, Tree)]
    labels = [c.label for c in kids]
    sizes = [len(c.leaves()) for c in kids]
    starts = list(np.cumsum([0, *sizes]))
    s_idx = [i for i, lab in enumerate(labels) if lab == "S"]
    if len(s_idx) != 2 or s_idx[0] != 0:
        return None
    i, j = s_idx
    if labels[i + 1 : j] not in (["CC"], [",", "CC"]):
        return None
    if any(lab not in (".", ":", "''", ",") for lab in labels[j + 1 :]):
        return None
    tags = [t for _, t in tree.tagged()]
    a0, a1, b0, b1 = int(starts[i]), int(starts[i + 1]), int(starts[j]), int(starts[j + 1])
    while a1 > a0 + 1 and tags[a1 - 1] in (",", ":"):  # a clause-final comma stays in place
        a1 -= 1
    while b1 > b0 + 1 and tags[b1 - 1] in (",", ":"):
        b1 -= 1
    return a0, a1, b0, b1


def coordination_inversion(s: SourceSentence, spans: tuple[int, int, int, int]) -> list[str]:
    """The words with the two clauses swapped; a sentence-initial capital moves along (the
    second clause's first word is capitalised, the first clause's lower-cased unless it is
    tagged NNP/NNPS or is "I")."""
    a0, a1, b0, b1 = spans
    first, second = list(s.words[a0:a1]), list(s.words[b0:b1])
    if a0 == 0 and first and second and first[0][:1].isupper():  # a sentence-initial capital
        if s.tags[a0] not in ("NNP", "NNPS") and first[0] != "I":
            first[0] = first[0][:1].lower() + first[0][1:]
        second[0] = second[0][:1].upper() + second[0][1:]
    return [*s.words[:a0], *second, *s.words[a1:b0], *first, *s.words[b1:]]

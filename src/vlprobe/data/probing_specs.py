"""The ten SentEval probing tasks: what each one is, the generator's options and defaults,
and how each generated task differs from SentEval's (recorded in every datasheet).

See :mod:`vlprobe.data.probing_tasks` for the catalogue of tasks and labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlprobe.data.probing_labels import SENTLEN_BINS
from vlprobe.errors import DataError

SENTEVAL_SIZES = {"train": 100_000, "validation": 10_000, "test": 10_000}
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class TaskInfo:
    """One task: its SentEval name, category, ``kind`` (``label`` = read off the annotation,
    ``perturbation`` = constructed), what treebank it ``needs``, SentEval's file name and
    where its labels come from."""

    name: str
    category: str
    kind: str  # "label" or "perturbation"
    needs: str | None  # None, "tree" or "ud"
    senteval_file: str
    label_source: str
    ptb_label_source: str = ""  # when read off bracketed trees instead of UD


TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        TaskInfo("SentLen", "surface", "label", None, "sentence_length.txt",
                 "gold: number of tokens of the treebank sentence, binned"),
        TaskInfo("WC", "surface", "label", None, "word_content.txt",
                 "gold: the single chosen mid-frequency word the sentence contains"),
        TaskInfo("TreeDepth", "syntactic", "label", "tree", "tree_depth.txt",
                 "gold: height of the treebank's constituency tree (traces removed)"),
        TaskInfo("TopConst", "syntactic", "label", "tree", "top_constituents.txt",
                 "gold: labels of the sentence node's children in the treebank tree"),
        TaskInfo("BShift", "syntactic", "perturbation", None, "bigram_shift.txt",
                 "constructed: two adjacent tokens swapped (I) or not (O)"),
        TaskInfo("Tense", "semantic", "label", None, "past_present.txt",
                 "gold: UD Tense feature of the main-clause finite verb (root or its aux/cop)",
                 "gold: PTB tag (VBD vs VBZ/VBP) of the first verb of the main clause's VP"),
        TaskInfo("SubjNum", "semantic", "label", None, "subj_number.txt",
                 "gold: UD Number feature of the root's nsubj (common noun)",
                 "gold: PTB tag (NN vs NNS) of the head noun of the main clause's NP-SBJ"),
        TaskInfo("ObjNum", "semantic", "label", None, "obj_number.txt",
                 "gold: UD Number feature of the root's obj (common noun)",
                 "gold: PTB tag (NN vs NNS) of the head noun of the main verb's first NP "
                 "object (no function tag)"),
        TaskInfo("SOMO", "semantic", "perturbation", None, "odd_man_out.txt",
                 "constructed: one noun/verb replaced by a same-tag word of similar frequency "
                 "(C) or not (O)"),
        TaskInfo("CoordInv", "semantic", "perturbation", "tree", "coordination_inversion.txt",
                 "constructed: the two clauses of a top-level S CC S coordination swapped (I) "
                 "or not (O)"),
    )
}
_ALIASES = {
    "sentence_length": "SentLen", "word_content": "WC", "tree_depth": "TreeDepth",
    "top_constituents": "TopConst", "bigram_shift": "BShift", "past_present": "Tense",
    "subj_number": "SubjNum", "obj_number": "ObjNum", "odd_man_out": "SOMO",
    "coordination_inversion": "CoordInv",
}  # fmt: skip


DEFAULTS: dict[str, Any] = {
    "fractions": (0.8, 0.1, 0.1),
    "max_per_class": None,  # cap per class (perturbation tasks: per O/I half)
    "min_per_class": 5,  # classes with fewer sentences are dropped
    "balance": "downsample",  # or "none"
    "sentlen_bins": SENTLEN_BINS,
    "depth_range": (5, 12),
    "n_top": 19,  # TopConst: most frequent sequences kept; the rest -> OTHER
    "n_words": 1000,  # WC vocabulary size
    "skip_top": 100,  # WC: the most frequent words (function words) are not candidates
    "wc_min_per_word": 10,  # WC: sentences needed per word (replaces min_per_class for WC)
    "somo_freq_ratio": 2.0,  # SOMO: replacement frequency within [f / r, f * r]
    # "gold" (hand-annotated treebank) or "silver" (parser output): recorded as the label
    # quality of the label tasks in the datasheet and the Stimuli source
    "annotation": "gold",
}


# how each generated task differs from SentEval's (recorded in the datasheet)
DIFFERENCES = {
    "SentLen": "bin edges chosen here (6 bins, 5-28 tokens); SentEval's corpus is Toronto "
               "BookCorpus, here the treebank's sentences",
    "WC": "SentEval: 1000 words of frequency rank 2k-3k in a large corpus; here n_words words "
          "after the skip_top most frequent, shrunk until each has wc_min_per_word sentences "
          "holding it as the only vocabulary word",
    "TreeDepth": "SentEval decorrelates depth from sentence length; not done here; gold trees "
                 "instead of parser output",
    "TopConst": "gold trees instead of parser output",
    "BShift": "as SentEval (one random adjacent pair of word tokens swapped)",
    "Tense": "gold UD features / PTB tags instead of a silver parse",
    "SubjNum": "gold UD features / PTB tags instead of a silver parse",
    "ObjNum": "gold UD features / PTB tags instead of a silver parse",
    "SOMO": "SentEval also matches the bigram frequencies with the neighbours of the replaced "
            "word; here only the fine POS tag and the unigram frequency (within a factor "
            "somo_freq_ratio) are matched",
    "CoordInv": "only top-level S (,) CC S coordinations of the gold tree; a sentence-initial "
                "capital moves to the new first clause",
}


def task_info(name: str) -> TaskInfo:
    """The task called ``name`` (SentEval names / file stems accepted, case-insensitive)."""
    key = str(name).strip()
    for canon in TASKS:
        if key.lower() == canon.lower():
            return TASKS[canon]
    stem = key.lower().removesuffix(".txt")
    if stem in _ALIASES:
        return TASKS[_ALIASES[stem]]
    raise DataError(f"unknown probing task {name!r}; known: {', '.join(TASKS)} "
                    f"(or SentEval file names: {', '.join(_ALIASES)})")

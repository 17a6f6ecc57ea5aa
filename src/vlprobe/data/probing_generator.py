"""Generate one SentEval probing task from a read treebank: choose the sentences, balance
the classes, make the sentence-level splits and the perturbations, write the datasheet.

The protocol (splits, balance, seeding) is described in :mod:`vlprobe.data.probing_tasks`;
the labels and perturbations of one sentence are in :mod:`vlprobe.data.probing_labels`.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.data.probing_corpus import Corpus, read_corpus
from vlprobe.data.probing_labels import (
    SomoLexicon,
    bigram_shift,
    bshift_positions,
    coordination_inversion,
    coordination_split,
    match_case,
    ptb_obj_number,
    ptb_subj_number,
    ptb_tense,
    sentlen_label,
    top_constituents,
    tree_depth,
    ud_obj_number,
    ud_subj_number,
    ud_tense,
)
from vlprobe.data.probing_specs import (
    DEFAULTS,
    DIFFERENCES,
    SPLITS,
    TASKS,
    TaskInfo,
    task_info,
)
from vlprobe.errors import DataError

_SPLIT_CODES = {"train": "tr", "validation": "va", "test": "te"}


@dataclass
class TaskItem:
    split: str
    label: str
    text: str
    source_id: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProbingTask:
    """A generated task: items (split, label, text, source sentence) and its datasheet."""

    name: str
    category: str
    items: list[TaskItem]
    label_names: list[str]
    datasheet: dict[str, Any]

    def split_items(self, split: str) -> list[TaskItem]:
        return [it for it in self.items if it.split == split]

    def senteval_lines(self) -> list[str]:
        return [f"{_SPLIT_CODES[it.split]}\t{it.label}\t{it.text}" for it in self.items]

    def to_stimuli(self, dataset: str | None = None, source: dict[str, Any] | None = None):
        """``{"train", "validation", "test"}`` -> :class:`~vlprobe.data.stimuli.Stimuli`
        (ids ``split/source sentence id``; descriptor ``source_sentence``)."""
        from vlprobe.data.stimuli import Stimuli

        index = {name: i for i, name in enumerate(self.label_names)}
        out = {}
        for split in SPLITS:
            items = self.split_items(split)
            if not items:
                continue
            out[split] = Stimuli(
                dataset=dataset or self.name,
                split=split,
                ids=[f"{split}/{it.source_id}" for it in items],
                texts=[it.text for it in items],
                labels=np.asarray([index[it.label] for it in items], dtype=np.int64),
                label_names=list(self.label_names),
                descriptors={"source_sentence": [it.source_id for it in items]},
                source={"loader": "probing_task", "task": self.name,
                        "label_source": self.datasheet["label_source"],
                        "label_quality": self.datasheet["label_quality"],
                        "treebank": self.datasheet["treebank"]["path"],
                        "seed": self.datasheet["seed"], **(source or {})},
            )
        return out


def _rng(seed: int, task: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(task.encode())])


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(f < 0 for f in fr) or fr[0] <= 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise DataError(f"fractions must be 3 non-negative numbers (train, validation, test) "
                        f"summing to 1 with train > 0, got {fractions!r}")
    return fr  # type: ignore[return-value]


def _split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """(train, val, test) counts of n; val / test get >= 1 when n >= 3 and their share > 0."""
    n_va = round(n * fractions[1])
    n_te = round(n * fractions[2])
    if n >= 3:
        n_va = max(n_va, 1) if fractions[1] > 0 else 0
        n_te = max(n_te, 1) if fractions[2] > 0 else 0
    n_va, n_te = min(n_va, n), min(n_te, n - min(n_va, n))
    return n - n_va - n_te, n_va, n_te


def _assign(order: Sequence[int], fractions) -> list[str]:
    n_tr, n_va, _ = _split_sizes(len(order), fractions)
    return ["train"] * n_tr + ["validation"] * n_va + ["test"] * (len(order) - n_tr - n_va)


def _wc_labels(sentences, opts) -> tuple[dict[int, str], dict[str, Any]]:
    """WC: vocabulary = ``n_words`` words after the ``skip_top`` most frequent (by number of
    sentences containing them); a sentence is labelled when it holds exactly one vocabulary
    token. Words with fewer than ``wc_min_per_word`` such sentences are removed from the
    vocabulary a few at a time (the lowest counts first), which can only give the others more
    single-word sentences, until every word left has enough (``wc_min_per_word``)."""
    min_n = int(opts["wc_min_per_word"])
    doc_freq: Counter[str] = Counter()
    for s in sentences:
        doc_freq.update({w.lower() for w in s.words if w.isalpha()})
    ranked = sorted(doc_freq, key=lambda w: (-doc_freq[w], w))
    candidates = [w for w in ranked[int(opts["skip_top"]) :] if doc_freq[w] >= min_n]
    vocab = set(candidates[: int(opts["n_words"])])
    hits_of = [[w.lower() for w in s.words if w.lower() in vocab] for s in sentences]
    labels: dict[int, str] = {}
    while True:
        labels = {}
        for k, hits in enumerate(hits_of):
            kept = [w for w in hits if w in vocab]
            if len(kept) == 1:
                labels[k] = kept[0]
        counts = Counter(labels.values())
        short = sorted((w for w in vocab if counts[w] < min_n), key=lambda w: (counts[w], w))
        if not short:
            break
        vocab -= set(short[: max(1, len(short) // 10)])
    info = {"wc_vocabulary_size": len(vocab), "wc_candidates": len(candidates),
            "wc_rank_range": [int(opts["skip_top"]),
                              int(opts["skip_top"]) + min(len(candidates), int(opts["n_words"]))]}
    return labels, info


def _label_items(info: TaskInfo, corpus: Corpus, opts, rng) -> tuple[list[TaskItem], dict]:
    sents = corpus.sentences
    extra: dict[str, Any] = {}
    labels: dict[int, str] = {}
    if info.name == "SentLen":
        bins = [tuple(b) for b in opts["sentlen_bins"]]
        labels = {k: lab for k, s in enumerate(sents) if (lab := sentlen_label(s, bins))}
        extra["label_meaning"] = {str(k): f"{lo}-{hi} tokens" for k, (lo, hi) in enumerate(bins)}
    elif info.name == "WC":
        labels, extra = _wc_labels(sents, opts)
    elif info.name == "TreeDepth":
        lo, hi = (int(v) for v in opts["depth_range"])
        for k, s in enumerate(sents):
            d = tree_depth(s.tree)  # type: ignore[arg-type]
            if lo <= d <= hi:
                labels[k] = str(d)
    elif info.name == "TopConst":
        raw = {k: lab for k, s in enumerate(sents) if (lab := top_constituents(s.tree))}
        common = [lab for lab, _ in sorted(Counter(raw.values()).items(),
                                           key=lambda kv: (-kv[1], kv[0]))[: int(opts["n_top"])]]
        labels = {k: (lab if lab in common else "OTHER") for k, lab in raw.items()}
        extra["top_sequences"] = common
    else:
        if corpus.format == "ptb":
            fn = {"Tense": ptb_tense, "SubjNum": ptb_subj_number,
                  "ObjNum": ptb_obj_number}[info.name]
            labels = {k: lab for k, s in enumerate(sents) if (lab := fn(s.tagged_tree))}
        else:
            fn = {"Tense": ud_tense, "SubjNum": ud_subj_number,
                  "ObjNum": ud_obj_number}[info.name]
            labels = {k: lab for k, s in enumerate(sents) if (lab := fn(s.ud))}
    counts = Counter(labels.values())
    min_n = int(opts["wc_min_per_word" if info.name == "WC" else "min_per_class"])
    kept = sorted(c for c, n in counts.items() if n >= min_n)
    extra["n_eligible"] = len(labels)
    extra["classes_dropped"] = {c: n for c, n in sorted(counts.items()) if n < min_n}
    if len(kept) < 2:
        raise DataError(f"{info.name}: fewer than 2 classes with >= {min_n} sentences in "
                        f"{corpus.path!r} (counts: {dict(counts)})")
    if opts["balance"] == "downsample":
        n_per = min(counts[c] for c in kept)
        if opts["max_per_class"]:
            n_per = min(n_per, int(opts["max_per_class"]))
        extra["n_per_class"] = n_per
    elif opts["balance"] == "none":
        n_per = None
    else:
        raise DataError(f"balance must be 'downsample' or 'none', got {opts['balance']!r}")
    items: list[TaskItem] = []
    for c in kept:
        members = np.asarray(sorted(k for k, lab in labels.items() if lab == c))
        n_take = len(members) if n_per is None else n_per
        if opts["max_per_class"]:
            n_take = min(n_take, int(opts["max_per_class"]))
        chosen = rng.permutation(members)[:n_take]
        for k, split in zip(chosen, _assign(chosen, opts["fractions"])):
            s = sents[int(k)]
            items.append(TaskItem(split, c, s.text, s.sid))
    return items, extra


def _perturbation_items(info: TaskInfo, corpus: Corpus, opts, rng) -> tuple[list[TaskItem], dict]:
    sents = corpus.sentences
    extra: dict[str, Any] = {}
    lexicon = SomoLexicon(sents, opts["somo_freq_ratio"]) if info.name == "SOMO" else None
    eligible: list[int] = []
    for k, s in enumerate(sents):
        if info.name == "BShift":
            ok = bool(bshift_positions(s.words))
        elif info.name == "SOMO":
            ok = bool(lexicon.positions(s))  # type: ignore[union-attr]
        else:
            ok = coordination_split(s.tree) is not None  # type: ignore[arg-type]
        if ok:
            eligible.append(k)
    extra["n_eligible"] = len(eligible)
    if len(eligible) < 2 * 3:
        raise DataError(f"{info.name}: only {len(eligible)} eligible sentences in "
                        f"{corpus.path!r}; need at least 6")
    order = rng.permutation(np.asarray(eligible))
    if opts["max_per_class"]:
        order = order[: 2 * int(opts["max_per_class"])]
    items: list[TaskItem] = []
    splits = _assign(order, opts["fractions"])
    changed_label = "C" if info.name == "SOMO" else "I"
    for split in SPLITS:
        members = [int(k) for k, sp in zip(order, splits) if sp == split]
        half = len(members) // 2
        for pos, k in enumerate(members[: 2 * half]):
            s = sents[k]
            if pos < half:
                items.append(TaskItem(split, "O", s.text, s.sid))
                continue
            if info.name == "BShift":
                cand = bshift_positions(s.words)
                i = int(cand[rng.integers(len(cand))])
                words, detail = bigram_shift(s.words, i), {"swapped": i}
            elif info.name == "SOMO":
                cand = lexicon.positions(s)  # type: ignore[union-attr]
                i = int(cand[rng.integers(len(cand))])
                options = lexicon.replacements(s.words[i], s.tags[i])  # type: ignore[union-attr]
                new = options[int(rng.integers(len(options)))]
                words = list(s.words)
                words[i] = match_case(new, s.words[i])
                detail = {"replaced": i, "tag": s.tags[i], "original": s.words[i]}
            else:
                spans = coordination_split(s.tree)  # type: ignore[arg-type]
                words = coordination_inversion(s, spans)  # type: ignore[arg-type]
                detail = {"spans": list(spans)}  # type: ignore[arg-type]
            items.append(TaskItem(split, changed_label, " ".join(words), s.sid, detail))
    return items, extra


def generate_task(task: str, treebank: str | Path | Corpus, seed: int = 0,
                  **options: Any) -> ProbingTask:
    """Generate one probing task from a treebank (path or :class:`Corpus`).

    Options (defaults in :data:`DEFAULTS`): ``fractions`` (train, validation, test),
    ``max_per_class``, ``min_per_class``, ``balance`` (``downsample``/``none``),
    ``sentlen_bins``, ``depth_range``, ``n_top``, ``n_words``, ``skip_top``,
    ``wc_min_per_word``, ``somo_freq_ratio``, ``annotation`` (``gold``, or ``silver`` for an
    automatically parsed treebank: recorded as the label quality).
    """
    info = task_info(task)
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise DataError(f"unknown probing task option(s) {unknown}; known: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **options}
    opts["fractions"] = _check_fractions(opts["fractions"])
    if opts["annotation"] not in ("gold", "silver"):
        raise DataError(f"annotation must be 'gold' or 'silver', got {opts['annotation']!r}")
    corpus = treebank if isinstance(treebank, Corpus) else read_corpus(treebank)
    need = {"tree": "ptb", "ud": "conllu"}.get(info.needs or "")
    if need and corpus.format != need:
        what = "bracketed constituency trees (PTB .mrg)" if need == "ptb" else "CoNLL-U (UD)"
        raise DataError(f"task {info.name} needs {what}; {corpus.path!r} is {corpus.format}")
    rng = _rng(seed, info.name)
    builder = _label_items if info.kind == "label" else _perturbation_items
    items, extra = builder(info, corpus, opts, rng)
    order = {s.sid: i for i, s in enumerate(corpus.sentences)}
    items.sort(key=lambda it: (SPLITS.index(it.split), order[it.source_id]))
    names = sorted({it.label for it in items}, key=_label_key)
    datasheet = _datasheet(info, corpus, seed, opts, items, names, extra)
    return ProbingTask(info.name, info.category, items, names, datasheet)


def _label_key(label: str) -> tuple[int, Any]:
    try:
        return (0, int(label))
    except ValueError:
        return (1, label)


def _datasheet(info, corpus, seed, opts, items, names, extra) -> dict[str, Any]:
    sizes: dict[str, Any] = {}
    for split in SPLITS:
        part = [it.label for it in items if it.split == split]
        counts = Counter(part)
        sizes[split] = {"total": len(part), "per_class": {n: counts.get(n, 0) for n in names}}
    got = "/".join(str(sizes[s]["total"]) for s in SPLITS)
    return {
        "task": info.name,
        "senteval_file": info.senteval_file,
        "category": info.category,
        "label_source": (info.ptb_label_source if corpus.format == "ptb"
                         and info.ptb_label_source else info.label_source),
        "label_quality": str(opts["annotation"]) if info.kind == "label" else
                         "constructed (correct by construction; not human-annotated)",
        "label_names": names,
        "n_classes": len(names),
        "sizes": sizes,
        "size_note": (
            f"this task has {got} train/validation/test items, generated from a treebank of "
            f"{len(corpus.sentences)} unique sentences; SentEval's probing tasks have "
            "100k/10k/10k. Small treebanks give small tasks: compare accuracies with "
            "SentEval's published numbers with care."
        ),
        "balancing": (
            "label tasks: classes with fewer than min_per_class eligible sentences dropped, "
            "every kept class downsampled to the smallest (capped at max_per_class), then "
            "split per class by fractions; perturbation tasks: sentences split first, half "
            "of each split perturbed"
            if opts["balance"] == "downsample" else "none (natural class frequencies)"
        ),
        "differences_from_senteval": DIFFERENCES[info.name],
        "split_unit": "source sentence (each treebank sentence gives at most one item)",
        "treebank": {"path": corpus.path, "format": corpus.format, "files": corpus.files,
                     "n_sentences_read": corpus.n_read,
                     "n_duplicates_dropped": corpus.n_duplicates},
        "seed": int(seed),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.items()},
        **extra,
    }


def available_tasks(corpus: Corpus) -> list[str]:
    """Tasks a treebank of this format can give."""
    need = {"ptb": "ud", "conllu": "tree"}[corpus.format]
    return [t.name for t in TASKS.values() if t.needs != need]


def generate_all(treebank: str | Path | Corpus, seed: int = 0, tasks: Sequence[str] | None = None,
                 skipped: dict[str, str] | None = None, **options: Any) -> dict[str, ProbingTask]:
    """Every task this treebank can give (or ``tasks``), reading the treebank once.

    With a ``skipped`` dict, a task that cannot be made (too few sentences or classes) is left
    out and its reason stored there; without, the DataError is raised.
    """
    corpus = treebank if isinstance(treebank, Corpus) else read_corpus(treebank)
    names = [task_info(t).name for t in tasks] if tasks else available_tasks(corpus)
    out = {}
    for name in names:
        try:
            out[name] = generate_task(name, corpus, seed, **options)
        except DataError as exc:
            if skipped is None:
                raise
            skipped[name] = str(exc)
    return out

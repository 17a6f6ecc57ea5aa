"""Generate the ten SentEval probing tasks (Conneau et al. 2018) from a treebank.

Usage::

    corpus = read_corpus("/path/to/ptb")                  # a .mrg/.conllu file or a directory
    task = generate_task("TreeDepth", corpus, seed=0)     # -> ProbingTask
    write_senteval_task(task, "out/tree_depth.txt")       # SentEval file + datasheet JSON
    splits = task.to_stimuli()                            # {"train","validation","test"}

or, in a run config, the ``probing_task`` dataset loader (:func:`load_probing_task`)::

    datasets: {treedepth: {loader: probing_task, path: ${reference}/text/ptb_sample,
                           options: {task: TreeDepth}, seed: 0}}

or from a shell: ``python -m vlprobe.data.probing_tasks TREEBANK OUTDIR [--tasks ...]``.

Tasks, labels and where they come from (``gold`` = read off the treebank's annotation;
``constructed`` = correct by construction of the perturbation):

======== ========= ====================================================== =====================
task     category  label                                                  needs
======== ========= ====================================================== =====================
SentLen  surface   word-count bin "0".."5" of [5-8, 9-12, 13-16, 17-20,   any (tokens)
                   21-25, 26-28] tokens (punctuation counts; other
                   lengths are not used)
WC       surface   the one chosen mid-frequency word the sentence         any
                   contains (exactly one token of the chosen vocabulary)
TreeDepth syntactic height of the cleaned tree, 5..12 (edges from the     bracketed trees
                   sentence node to the deepest word; pre-terminal = 1)
TopConst syntactic children of the sentence node, ``_``-joined            bracketed trees
                   (``NP_VP_.``): the 19 most frequent sequences + OTHER
                   (20 classes, as SentEval)
BShift   syntactic O / I: two adjacent word tokens swapped                any
Tense    semantic  PAST / PRES: Tense of the root if finite, else of its  CoNLL-U, or
                   finite aux/cop (PTB: tag of the main VP's first verb:  bracketed trees
                   VBD / VBZ, VBP)
SubjNum  semantic  NN / NNS: Number of the root's nsubj / nsubj:pass      CoNLL-U, or
                   (common nouns only, as SentEval's NN/NNS; PTB: tag of  bracketed trees
                   the head noun of the NP-SBJ)
ObjNum   semantic  NN / NNS: Number of the root's obj (common nouns;      CoNLL-U, or
                   PTB: head noun of the main verb's first NP object)     bracketed trees
SOMO     semantic  O / C: one noun or verb replaced by another word of    any (POS tags)
                   the same POS tag and similar corpus frequency
CoordInv semantic  O / I: the two clauses of a top-level ``S (,) CC S``   bracketed trees
                   coordination swapped
======== ========= ====================================================== =====================

Bracketed trees are cleaned first (``-NONE-`` traces / empty elements removed, function tags
stripped: ``NP-SBJ`` -> ``NP``). Exact duplicate sentences are kept once. All files of a
treebank directory form one pool of sentences (a UD treebank's own train/dev/test files are
not kept apart: the generator makes its own sentence-level splits).

Splits and balance. Splits are disjoint at the sentence level: every source sentence gives at
most one item. Label tasks: classes with fewer than ``min_per_class`` sentences (WC:
``wc_min_per_word``) are dropped,
every other class is downsampled to the smallest kept class (capped at ``max_per_class``),
then each class is split train/validation/test by ``fractions`` (so every split is balanced).
Perturbation tasks: eligible sentences (capped at ``2 * max_per_class``) are split by sentence
FIRST, then within each split one half stays original and the other half is perturbed (an
odd sentence out is dropped), so an original and its perturbed version never meet in two
splits. Everything is seeded (numpy ``default_rng([seed, crc32(task)])``).

Modules: this one writes task files and is the ``probing_task`` loader and the command line;
the task catalogue and options are in :mod:`vlprobe.data.probing_specs`, reading a treebank in
:mod:`vlprobe.data.probing_corpus`, sentence selection / balance / splits / datasheet in
:mod:`vlprobe.data.probing_generator`, and the gold labels and perturbations themselves (pure
functions of one sentence) in :mod:`vlprobe.data.probing_labels`. Their public names are all
importable from here.

Small treebanks give small tasks; SentEval's tasks have 100k/10k/10k items. The datasheet of
every generated task gives its sizes per split and class, label source, treebank path and
sha256 of its files, the seed and the options.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlprobe.data.probing_corpus import Corpus, read_corpus
from vlprobe.data.probing_generator import (
    ProbingTask,
    TaskItem,
    available_tasks,
    generate_all,
    generate_task,
)
from vlprobe.data.probing_labels import (
    SENTLEN_BINS,
    SomoLexicon,
    SourceSentence,
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
    SENTEVAL_SIZES,
    SPLITS,
    TASKS,
    TaskInfo,
    task_info,
)
from vlprobe.errors import DataError


def write_senteval_task(task: ProbingTask, path: str | Path) -> tuple[Path, Path]:
    """Write ``split<TAB>label<TAB>sentence`` lines and ``<path stem>.datasheet.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(task.senteval_lines()) + "\n", encoding="utf-8")
    sheet = path.with_name(path.stem + ".datasheet.json")
    sheet.write_text(json.dumps(task.datasheet, indent=2) + "\n", encoding="utf-8")
    return path, sheet


def load_probing_task(spec: Any) -> dict[str, Any]:
    """Dataset loader ``probing_task``: one task generated on the fly from ``spec.path``.

    ``options.task`` (required) names the task; ``options.seed`` (default ``spec.seed``) and
    the generator options of :func:`generate_task` are passed on.
    """
    from vlprobe.data._common import dataset_name, resolve_path

    options = dict(spec.options)
    if "task" not in options:
        raise DataError(f"probing_task: options.task is required (one of {', '.join(TASKS)})")
    task = options.pop("task")
    seed = int(options.pop("seed", getattr(spec, "seed", 0) or 0))
    options.pop("path", None)
    path = resolve_path(spec, "probing_task")
    generated = generate_task(task, path, seed, **options)
    return generated.to_stimuli(dataset_name(spec, "probing_task"),
                                {"sizes": {s: generated.datasheet["sizes"][s]["total"]
                                           for s in SPLITS}})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vlprobe.data.probing_tasks TREEBANK OUTDIR [--tasks T ...] [--seed N]``."""
    import argparse

    parser = argparse.ArgumentParser(description="Generate SentEval probing tasks.")
    parser.add_argument("treebank")
    parser.add_argument("outdir")
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-per-class", type=int, default=None)
    args = parser.parse_args(argv)
    skipped: dict[str, str] = {}
    tasks = generate_all(args.treebank, args.seed, args.tasks, skipped=skipped,
                         max_per_class=args.max_per_class)
    for name, task in tasks.items():
        out, _ = write_senteval_task(task, Path(args.outdir) / TASKS[name].senteval_file)
        print(f"{name}: {task.datasheet['size_note'].split(',')[0]} -> {out}")
    for name, reason in skipped.items():
        print(f"{name}: not generated: {reason}")
    return 0 if tasks else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


# the public names of the generator's modules stay importable from here
__all__ = [
    "DEFAULTS", "DIFFERENCES", "SENTEVAL_SIZES", "SENTLEN_BINS", "SPLITS", "TASKS", "Corpus",
    "ProbingTask", "SomoLexicon", "SourceSentence", "TaskInfo", "TaskItem", "available_tasks",
    "bigram_shift", "bshift_positions", "coordination_inversion", "coordination_split",
    "generate_all", "generate_task", "load_probing_task", "main", "match_case",
    "ptb_obj_number", "ptb_subj_number", "ptb_tense", "read_corpus", "sentlen_label",
    "task_info", "top_constituents", "tree_depth", "ud_obj_number", "ud_subj_number",
    "ud_tense", "write_senteval_task",
]  # fmt: skip

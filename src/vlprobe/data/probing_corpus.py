"""Read a treebank (PTB ``.mrg`` or CoNLL-U) into the sentence pool the probing-task
generator draws from (:mod:`vlprobe.data.probing_generator`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlprobe.data.probing_labels import SourceSentence
from vlprobe.data.treebank import (
    file_sha256,
    iter_conllu,
    iter_ptb,
    ptb_word,
    treebank_files,
)
from vlprobe.errors import DataError


@dataclass
class Corpus:
    """A read treebank: its format, files (with sha256) and deduplicated sentences."""

    path: str
    format: str
    files: list[dict[str, str]]
    sentences: list[SourceSentence]
    n_read: int
    n_duplicates: int


def read_corpus(path: str | Path) -> Corpus:
    """Read a PTB (.mrg) or CoNLL-U treebank file / directory (see the module docstring)."""
    fmt, files = treebank_files(path)
    sentences: list[SourceSentence] = []
    n_read = 0
    seen: set[str] = set()
    if fmt == "ptb":
        for sid, raw in iter_ptb(files):
            n_read += 1
            tree = raw.clean()
            if tree is None:
                continue
            tagged = tree.tagged()
            sentences.append(SourceSentence(sid, [ptb_word(w) for w, _ in tagged],
                                            [t for _, t in tagged], tree=tree.top(),
                                            tagged_tree=raw.clean(strip_tags=False).top()))
    else:
        for sid, ud in iter_conllu(files):
            n_read += 1
            tags = [t.xpos if t.xpos not in ("_", "") else t.upos for t in ud.tokens]
            sentences.append(SourceSentence(sid, [t.form for t in ud.tokens], tags, ud=ud))
    unique = []
    for s in sentences:
        if s.words and s.text not in seen:
            seen.add(s.text)
            unique.append(s)
    if not unique:
        raise DataError(f"treebank {str(path)!r}: no sentences read")
    hashes = [{"file": str(f), "sha256": file_sha256(f)} for f in files]
    return Corpus(str(path), fmt, hashes, unique, n_read, len(sentences) - len(unique))

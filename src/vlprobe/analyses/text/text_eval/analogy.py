"""Word analogies (Mikolov et al. 2013 "questions-words" format) and 3CosAdd scoring.

File format: lines ``: section-name`` start a section; other lines are ``a b c d`` ("a is to
b as c is to d"). Sections whose name starts with ``gram`` are *syntactic* (morphology), the
others *semantic* (in the Google set: 5 semantic sections with 8,869 questions and 9
syntactic ones with 10,675). Words are lowercased.

Scoring (:func:`evaluate_analogies`), as gensim's ``evaluate_word_analogies``: a question is
*covered* when its four words are in the (optionally frequency-restricted) vocabulary; the
answer is ``argmax_w cos(w, b^ - a^ + c^)`` over that vocabulary with ``^`` = unit length,
excluding ``a, b, c``; accuracy = correct / covered, coverage = covered / questions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlprobe.errors import DataError

KINDS = ("semantic", "syntactic")


@dataclass
class AnalogySection:
    """One section: ``name``, ``kind`` (semantic/syntactic), ``questions`` ``[n, 4]`` str."""

    name: str
    kind: str
    questions: list[tuple[str, str, str, str]]


def section_kind(name: str) -> str:
    """``"syntactic"`` for ``gram*`` sections, else ``"semantic"``."""
    return "syntactic" if name.lower().startswith("gram") else "semantic"


def read_analogies(path: str | Path) -> list[AnalogySection]:
    """Read a questions-words file into sections (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"analogy file not found: {path}")
    sections: list[AnalogySection] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line:
                continue
            if line.startswith(":"):
                name = line[1:].strip()
                sections.append(AnalogySection(name, section_kind(name), []))
                continue
            words = line.lower().split()
            if len(words) != 4:
                raise DataError(f"{path}:{lineno}: expected 4 words, got {line[:80]!r}")
            if not sections:
                raise DataError(f"{path}:{lineno}: question before the first ': section' line")
            sections[-1].questions.append(tuple(words))  # type: ignore[arg-type]
    if not sections:
        raise DataError(f"{path}: no analogy sections")
    return sections


@dataclass
class AnalogyScore:
    """Accuracy of one group of questions: ``correct / covered``; ``covered / n``."""

    n: int
    covered: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.covered if self.covered else float("nan")

    @property
    def coverage(self) -> float:
        return self.covered / self.n if self.n else float("nan")


def evaluate_analogies(
    words: list[str], vectors: np.ndarray, sections: list[AnalogySection],
    restrict_vocab: int | None = None, batch: int = 512,
) -> dict[str, AnalogyScore]:
    """3CosAdd accuracy per kind (``semantic``, ``syntactic``) and ``all``.

    Args:
        words: vocabulary (lowercase), most frequent first if ``restrict_vocab`` is used.
        vectors: ``[V, D]`` vectors of ``words``.
        sections: from :func:`read_analogies`.
        restrict_vocab: only the first ``restrict_vocab`` words are candidates and count
            for coverage (gensim's default is 300,000); None = all.
        batch: questions scored at once.
    """
    w = np.asarray(vectors, dtype=np.float32)
    if restrict_vocab is not None:
        words, w = words[:restrict_vocab], w[:restrict_vocab]
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    wn = w / np.where(norms > 0, norms, 1.0)
    index = {word: i for i, word in enumerate(words)}
    out = {k: AnalogyScore(0, 0, 0) for k in (*KINDS, "all")}
    for kind in KINDS:
        qs = [q for s in sections if s.kind == kind for q in s.questions]
        ids = np.asarray([[index[x] for x in q] for q in qs if all(x in index for x in q)],
                         dtype=np.int64).reshape(-1, 4)
        correct = 0
        for start in range(0, len(ids), batch):
            b = ids[start:start + batch]
            target = wn[b[:, 1]] - wn[b[:, 0]] + wn[b[:, 2]]
            sims = target @ wn.T
            rows = np.arange(len(b))
            for j in range(3):
                sims[rows, b[:, j]] = -np.inf
            correct += int((sims.argmax(1) == b[:, 3]).sum())
        out[kind] = AnalogyScore(len(qs), len(ids), correct)
    out["all"] = AnalogyScore(*(sum(getattr(out[k], f) for k in KINDS)
                                for f in ("n", "covered", "correct")))
    return out

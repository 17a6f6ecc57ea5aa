"""Word-pair similarity sets: reading them and scoring word vectors on them.

Reading (:func:`read_word_pairs`): one pair per line, fields split on a tab if the line has
one, else on a comma if it has one, else on whitespace (so gensim's ``.tsv``, the kit's
``combined.csv`` with CRLF ends, SimLex/SimVerb tab files with a space-separated header and
MEN's space-separated file all read the same way). Lines starting with ``#`` and blank lines
are skipped; a first row whose score field is not a number is a header and skipped; a later
unreadable row is a :class:`DataError`. Exact duplicate rows (same words, same score) are
dropped and counted (the kit's RG.txt and MC.txt repeat their first row). Words are
lowercased.

Scoring (:func:`score_pairs`): cosine similarity of the two words' vectors against the human
score, Pearson and Spearman (scipy), over the *covered* pairs (both words in the vocabulary);
``coverage = n_covered / n_pairs`` and the out-of-vocabulary words are returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.errors import DataError

#: column of the score in the reference kit's files (default 2)
SCORE_COLUMN = {"simlex999": 3, "simverb3500": 3}


@dataclass
class WordPairs:
    """A word-pair similarity set.

    Attributes:
        name: set name (``wordsim353``, ...).
        word1, word2: lowercased words.
        scores: human similarity scores ``[n]``.
        n_duplicates: exact duplicate rows dropped while reading.
        source: the file read.
    """

    name: str
    word1: list[str]
    word2: list[str]
    scores: np.ndarray
    n_duplicates: int = 0
    source: str = ""

    def __len__(self) -> int:
        return len(self.word1)


def _split(line: str) -> list[str]:
    if "\t" in line:
        return [f.strip() for f in line.split("\t")]
    if "," in line:
        return [f.strip() for f in line.split(",")]
    return line.split()


def read_word_pairs(path: str | Path, name: str | None = None, score_col: int = 2) -> WordPairs:
    """Read a word-pair file (format in the module docstring).

    Args:
        path: the file.
        name: set name (default: the file stem).
        score_col: index of the score field (the words are fields 0 and 1).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"word-pair file not found: {path}")
    w1, w2, sc = [], [], []
    seen: set[tuple[str, str, float]] = set()
    n_dup = 0
    first = True
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = _split(line)
            try:
                if len(fields) <= max(1, score_col):
                    raise ValueError
                score = float(fields[score_col])
            except ValueError:
                if first:
                    first = False
                    continue  # header
                raise DataError(
                    f"{path}:{lineno}: expected 'word1 word2 ... score' with the score in field "
                    f"{score_col}, got {line[:80]!r}"
                ) from None
            first = False
            key = (fields[0].lower(), fields[1].lower(), score)
            if key in seen:
                n_dup += 1
                continue
            seen.add(key)
            w1.append(key[0])
            w2.append(key[1])
            sc.append(score)
    if not w1:
        raise DataError(f"{path}: no word pairs read")
    return WordPairs(name or path.stem, w1, w2, np.asarray(sc, dtype=np.float64), n_dup,
                     str(path))


@dataclass
class PairScore:
    """Result of :func:`score_pairs`.

    Attributes:
        pearson, spearman: correlations over the covered pairs (NaN if fewer than 3 or
            constant).
        n_pairs: pairs in the set; n_covered: pairs with both words in the vocabulary.
        oov: distinct words of the set missing from the vocabulary (sorted).
    """

    pearson: float
    spearman: float
    n_pairs: int
    n_covered: int
    oov: list[str] = field(default_factory=list)

    @property
    def coverage(self) -> float:
        return self.n_covered / self.n_pairs if self.n_pairs else float("nan")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (0 where a vector is 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), 0.0)


def score_pairs(vectors: Mapping[str, Any] | Any, pairs: WordPairs) -> PairScore:
    """Correlate cosine similarities of ``vectors`` with the human scores of ``pairs``.

    Args:
        vectors: word -> vector; anything with ``in`` and ``[]`` (a dict or gensim
            ``KeyedVectors``). Lookups use the lowercased words.
        pairs: the set.
    """
    from scipy.stats import pearsonr, spearmanr

    keep = [i for i, (a, b) in enumerate(zip(pairs.word1, pairs.word2, strict=True))
            if a in vectors and b in vectors]
    oov = sorted({w for w in pairs.word1 + pairs.word2 if w not in vectors})
    n = len(pairs)
    if len(keep) < 3:
        return PairScore(float("nan"), float("nan"), n, len(keep), oov)
    va = np.stack([np.asarray(vectors[pairs.word1[i]]) for i in keep])
    vb = np.stack([np.asarray(vectors[pairs.word2[i]]) for i in keep])
    sim = cosine_rows(va, vb)
    human = pairs.scores[keep]
    if np.ptp(sim) == 0 or np.ptp(human) == 0:
        return PairScore(float("nan"), float("nan"), n, len(keep), oov)
    return PairScore(float(pearsonr(sim, human)[0]), float(spearmanr(sim, human)[0]), n,
                     len(keep), oov)

"""WordNet 3.0 similarities between ImageNet classes (V6's semantic distance of errors).

WordNet comes from Debian's ``wordnet-base`` (``apt-get install wordnet-base``: the database
files in ``/usr/share/wordnet``), read with nltk's own WordNet reader
(``nltk.corpus.reader.wordnet.WordNetCorpusReader``; PyPI ``nltk``, extra
``vlprobe[wordnet]``), so every similarity is nltk's. The directory is ``wordnet_dir``, else
``$VLPROBE_WORDNET``, else ``/usr/share/wordnet``. Where nltk or the database is missing,
:func:`load_wordnet` raises an :class:`~vlprobe.errors.AnalysisError` that says what to install.

Two adjustments make nltk read Debian's files, both without touching the data:

- Debian does not ship the ``lexnames`` file (the fixed list of WordNet 3.0's 45
  lexicographer file names, documented in ``lexnames(5WN)``, which Debian does ship); the
  reader gets it from :data:`LEXNAMES` when the directory lacks it.
- nltk >= 3.9 opens corpus files only under its allowed data roots: the directory is added
  to ``nltk.data.path`` (once per process; nltk's documented way to authorise a corpus root),
  and the reader does not map its synsets onto nltk's downloadable WordNet (``map_wn``, only
  used by the multilingual functions, which we do not use).

An ImageNet class is the noun synset of its WordNet id: ``n01440764`` -> offset 1440764,
pos ``n`` (tench.n.01). Similarities, exactly as nltk computes them: ``path`` (1 / (1 +
shortest hypernym-path length)) and ``wup`` (Wu-Palmer: 2 depth(lcs) / (depth(a) +
depth(b))). nltk's Wu-Palmer of a synset with several hypernym paths with itself is below 1
(dog.n.01: 13/14); errors never compare a class with itself.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

from vlprobe.errors import AnalysisError, ConfigError

DEFAULT_DIR = "/usr/share/wordnet"
MEASURES = ("path", "wup")
_WNID = re.compile(r"n(\d{8})")

#: WordNet 3.0's lexicographer files in file-number order (``lexnames(5WN)``).
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

_READERS: dict[str, Any] = {}


def wordnet_dir(value: str | None = None) -> Path:
    """The WordNet database directory: ``value``, ``$VLPROBE_WORDNET`` or the Debian path."""
    from vlprobe.settings import expand_path

    return expand_path(value or os.environ.get("VLPROBE_WORDNET") or DEFAULT_DIR)


def load_wordnet(directory: str | None = None) -> Any:
    """nltk's WordNet reader over ``directory`` (:func:`wordnet_dir`), cached per directory.

    Raises:
        AnalysisError: nltk is not installed, or the directory holds no WordNet database.
    """
    root = wordnet_dir(directory)
    key = str(root.resolve()) if root.exists() else str(root)
    if key in _READERS:
        return _READERS[key]
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:
        raise AnalysisError(
            "the WordNet distance of errors needs nltk (pip install 'vlprobe[wordnet]' or "
            "pip install nltk)") from None
    if not (root / "data.noun").is_file() or not (root / "index.noun").is_file():
        raise AnalysisError(
            f"no WordNet database at {root} (data.noun / index.noun missing): install "
            "Debian's WordNet 3.0 (apt-get install wordnet-base, /usr/share/wordnet), or set "
            "wordnet_dir / $VLPROBE_WORDNET to a WordNet 3.0 dict directory; or leave wnids "
            "unset to skip the semantic distance")

    class _Reader(WordNetCorpusReader):
        def open(self, file: str) -> Any:
            if file == "lexnames" and not (root / "lexnames").is_file():
                lines = (f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n"
                         for i, name in enumerate(LEXNAMES))
                return io.StringIO("".join(lines))
            return super().open(file)

        def map_wn(self, version: str = "wordnet") -> None:
            return None

    if key not in [str(p) for p in nltk.data.path]:
        nltk.data.path.append(key)
    with warnings.catch_warnings():  # "multilingual functions are not available": expected
        warnings.simplefilter("ignore")
        try:
            reader = _Reader(key, None)
        except (OSError, ValueError, AssertionError) as exc:
            raise AnalysisError(f"cannot read the WordNet database at {root}: {exc}") from None
    _READERS[key] = reader
    return reader


def synset_of(wn: Any, wnid: str) -> Any:
    """The noun synset of an ImageNet WordNet id (``n01440764`` -> tench.n.01)."""
    m = _WNID.fullmatch(str(wnid))
    if m is None:
        raise ConfigError(f"{wnid!r} is not a WordNet noun id such as 'n01440764'")
    try:
        return wn.synset_from_pos_and_offset("n", int(m.group(1)))
    except Exception as exc:  # nltk raises WordNetError / ValueError for unknown offsets
        raise AnalysisError(f"WordNet has no noun synset {wnid!r}: {exc}") from None


def read_wnids(path: str, n_classes: int | None = None) -> list[str]:
    """A JSON list of WordNet ids, one per head class (e.g. the reference kit's
    ``images/imagenet_sample/wnids.json``: the 1000 ImageNet classes in label order)."""
    from vlprobe.settings import expand_path

    file = expand_path(str(path))
    if not file.is_file():
        raise ConfigError(f"wnids: {path!r} does not exist ({file})")
    try:
        wnids = json.loads(file.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"wnids: cannot read {file}: {exc}") from None
    if not isinstance(wnids, list) or not all(isinstance(w, str) for w in wnids):
        raise ConfigError(f"wnids: {file} must hold a JSON list of WordNet ids")
    if n_classes is not None and len(wnids) != n_classes:
        raise ConfigError(f"wnids: {file} lists {len(wnids)} ids but the head has {n_classes} "
                          "classes (one id per head class, in the head's order)")
    return wnids


class ClassSimilarity:
    """Similarities between head classes, computed with nltk and cached per pair."""

    def __init__(self, wn: Any, wnids: list[str]) -> None:
        self.synsets = [synset_of(wn, w) for w in wnids]
        self._cache: dict[tuple[str, int, int], float] = {}

    def __call__(self, measure: str, a: int, b: int) -> float:
        """``measure`` (``path`` / ``wup``) between head classes ``a`` and ``b``."""
        if measure not in MEASURES:
            raise ConfigError(f"unknown WordNet similarity {measure!r}; known: {MEASURES}")
        key = (measure, min(a, b), max(a, b))
        if key not in self._cache:
            sa, sb = self.synsets[a], self.synsets[b]
            value = sa.path_similarity(sb) if measure == "path" else sa.wup_similarity(sb)
            self._cache[key] = float("nan") if value is None else float(value)
        return self._cache[key]

    def name(self, c: int) -> str:
        """A readable name of class ``c`` (its synset's first lemma)."""
        return self.synsets[c].lemmas()[0].name().replace("_", " ")


def readable_names(names: list[str] | None, directory: str | None = None) -> list[str] | None:
    """``names`` with every WordNet noun id replaced by its synset's first lemma where WordNet
    is available (figure labels); the names unchanged otherwise."""
    if not names or not all(_WNID.fullmatch(str(n)) for n in names):
        return names
    try:
        wn = load_wordnet(directory)
        return [synset_of(wn, n).lemmas()[0].name().replace("_", " ") for n in names]
    except AnalysisError:
        return names

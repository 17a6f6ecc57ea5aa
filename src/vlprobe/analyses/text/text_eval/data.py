"""Paths of gensim's bundled test data and of the reference kit's word-pair sets.

gensim's directory is found with :func:`importlib.util.find_spec` so that gensim is not
imported (importing it takes seconds).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from vlprobe.errors import ConfigError

#: reference-kit word-pair files, relative to ``<reference>/words`` (name -> path)
REFERENCE_PAIR_FILES = {
    "wordsim353": "wordsim353/combined.csv",
    "simlex999": "SimLex-999/SimLex-999.txt",
    "men": "MEN/MEN_dataset_natural_form_full",
    "simverb3500": "SimLex-3500/SimVerb-3500.txt",
    "rg65": "RG.txt",
    "mc30": "MC.txt",
}

#: gensim's bundled copies (used when the reference kit is absent)
GENSIM_PAIR_FILES = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt"}


def gensim_test_data() -> Path:
    """``gensim/test/test_data`` of the installed gensim (without importing gensim)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise ConfigError("gensim is not installed; it is needed for word-embedding analyses "
                          "(pip install gensim)")
    path = Path(spec.origin).parent / "test" / "test_data"
    if not path.is_dir():
        raise ConfigError(f"gensim's bundled test data not found at {path}")
    return path


def questions_words_path() -> Path:
    """The Google analogy set (``questions-words.txt``) bundled with gensim."""
    return gensim_test_data() / "questions-words.txt"


def pair_file(name: str, reference: Path | None) -> tuple[Path, str] | None:
    """(path, origin) of word-pair set ``name``: the reference kit's copy if ``reference`` is
    given and has it, else gensim's bundled copy, else None. ``origin`` is ``"reference"`` or
    ``"gensim"``.
    """
    if name not in REFERENCE_PAIR_FILES:
        raise ConfigError(f"unknown word-pair set {name!r}; known: {sorted(REFERENCE_PAIR_FILES)}")
    if reference is not None:
        path = Path(reference) / "words" / REFERENCE_PAIR_FILES[name]
        if path.is_file():
            return path, "reference"
    if name in GENSIM_PAIR_FILES:
        return gensim_test_data() / GENSIM_PAIR_FILES[name], "gensim"
    return None

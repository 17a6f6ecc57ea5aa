"""Training corpora for skip-gram: gensim's bundled text, or a user file.

``spec`` values:

- ``"enwiki"`` (default of T4): the shortened English Wikipedia dump bundled with gensim
  (``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``, 1.7 MB
  compressed, 6.1 MB XML, 206 articles; 13,655 sentences, 466,907 tokens). Wiki markup is
  removed with gensim's ``filter_wiki``; each remaining text line is one sentence, tokenised
  with gensim's ``tokenize(lower=True)`` (alphabetic tokens, lowercased); lines with < 2
  tokens are dropped.
  Parsing takes a few seconds. The largest natural-text corpus gensim ships (its
  ``head500.noblanks.cor`` is larger but stemmed).
- ``"lee"``: ``lee_background.cor`` (360 kB, 300 lines of news text, 59,890 whitespace
  tokens), one document a line, tokenised like a user file.
- anything else: a path to a UTF-8 text file with **one sentence per line**, tokenised by
  splitting on whitespace and lowercased (tokenise / strip punctuation beforehand if needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlprobe.analyses.text.text_eval.data import gensim_test_data
from vlprobe.errors import ConfigError

ENWIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
LEE_FILE = "lee_background.cor"


@dataclass
class Corpus:
    """Tokenised sentences and where they came from."""

    sentences: list[list[str]]
    source: str
    description: str

    @property
    def n_tokens(self) -> int:
        return sum(len(s) for s in self.sentences)


def read_lines(path: str | Path) -> list[list[str]]:
    """One sentence per line, whitespace tokens, lowercased; empty lines dropped."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            toks = line.lower().split()
            if toks:
                out.append(toks)
    return out


def read_enwiki(path: str | Path) -> list[list[str]]:
    """Sentences of a (bz2) MediaWiki XML dump, parsed with gensim's wiki tools."""
    import bz2

    from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    from gensim.utils import tokenize

    out = []
    opener = bz2.open if str(path).endswith(".bz2") else open
    with opener(path, "rb") as fh:
        for _title, text, _pid in extract_pages(fh):
            for line in filter_wiki(text).splitlines():
                toks = list(tokenize(line, lower=True))
                if len(toks) >= 2:
                    out.append(toks)
    return out


def load_corpus(spec: str | Path = "enwiki") -> Corpus:
    """The corpus named or pointed to by ``spec`` (see the module docstring)."""
    spec = str(spec)
    if spec == "enwiki":
        path = gensim_test_data() / ENWIKI_FILE
        sents = read_enwiki(path)
        desc = "gensim's bundled shortened English Wikipedia dump"
    elif spec == "lee":
        path = gensim_test_data() / LEE_FILE
        sents = read_lines(path)
        desc = "gensim's bundled Lee news corpus (lee_background.cor)"
    else:
        from vlprobe.settings import expand_path

        path = expand_path(spec)
        if not path.is_file():
            raise ConfigError(f"corpus {spec!r}: not 'enwiki', 'lee' or an existing text file "
                              "(one sentence per line)")
        sents = read_lines(path)
        desc = "user corpus"
    if not sents:
        raise ConfigError(f"corpus {spec!r} ({path}) has no sentences")
    corpus = Corpus(sents, str(path), "")
    corpus.description = (f"{desc}: {path.name}, {path.stat().st_size:,} bytes, "
                          f"{len(sents):,} sentences, {corpus.n_tokens:,} tokens")
    return corpus

"""Small, explicit treebank readers: Penn Treebank bracketed trees and CoNLL-U.

PTB (``.mrg``): a file holds bracketed trees such as
``( (S (NP-SBJ (NNP Mr.) (NNP Vinken)) (VP (VBZ is) ...) (. .)) )``. :func:`parse_ptb` reads
them into :class:`Tree` objects (a leaf is a plain ``str``, a pre-terminal is a Tree whose only
child is a str). :meth:`Tree.clean` removes ``-NONE-`` empty elements (traces, null
complementisers) and the constituents left empty by that, and strips function tags and
co-indices (``NP-SBJ-1`` -> ``NP``, ``PP-LOC=2`` -> ``PP``; ``-LRB-`` and friends are kept).

CoNLL-U (Universal Dependencies): :func:`parse_conllu` returns :class:`UDSentence` objects with
the syntactic words (multi-word token ranges ``1-2`` and empty nodes ``1.1`` are skipped), their
FEATS as a dict and their HEAD/DEPREL.

:func:`read_treebank` reads a file or a directory of either format (detected from the
extension: ``.mrg``/``.tree``/``.ptb`` = bracketed, ``.conllu``/``.conll`` = CoNLL-U).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vlprobe.errors import DataError

PTB_EXTENSIONS = (".mrg", ".tree", ".trees", ".ptb")
CONLLU_EXTENSIONS = (".conllu", ".conll")

# PTB escapes -> plain text (used when a tree's words become a sentence)
_PTB_WORDS = {
    "-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}",
    "``": '"', "''": '"',
}  # fmt: skip
_PUNCT_TAGS = frozenset({",", ".", ":", "``", "''", "-LRB-", "-RRB-", "#", "$", "HYPH", "NFP"})


def base_label(label: str) -> str:
    """A constituent label without function tags / co-indices (``NP-SBJ-1`` -> ``NP``).

    Labels that start with ``-`` (``-NONE-``, ``-LRB-``) are returned unchanged.
    """
    if not label or label.startswith("-"):
        return label
    return re.split(r"[-=]", label, maxsplit=1)[0] or label


@dataclass
class Tree:
    """A constituency tree node: ``label`` and ``children`` (Trees, or one ``str`` word)."""

    label: str
    children: list[Tree | str] = field(default_factory=list)

    @property
    def is_preterminal(self) -> bool:
        return len(self.children) == 1 and isinstance(self.children[0], str)

    def leaves(self) -> list[str]:
        """The words, left to right."""
        out: list[str] = []
        for child in self.children:
            out.extend([child] if isinstance(child, str) else child.leaves())
        return out

    def tagged(self) -> list[tuple[str, str]]:
        """``(word, POS tag)`` pairs, left to right."""
        if self.is_preterminal:
            return [(self.children[0], self.label)]  # type: ignore[list-item]
        out: list[tuple[str, str]] = []
        for child in self.children:
            if isinstance(child, Tree):
                out.extend(child.tagged())
        return out

    def height(self) -> int:
        """Edges on the longest path from this node down to a word (pre-terminal = 1)."""
        if not self.children:
            return 0
        return 1 + max(0 if isinstance(c, str) else c.height() for c in self.children)

    def clean(self, strip_tags: bool = True) -> Tree | None:
        """A copy without ``-NONE-`` elements, empty constituents and (with ``strip_tags``)
        function tags.

        Returns None when nothing is left (a constituent made only of empty elements).
        """
        if self.label == "-NONE-":
            return None
        if self.is_preterminal:
            return Tree(self.label, list(self.children))
        kids = [c.clean(strip_tags) for c in self.children if isinstance(c, Tree)]
        kept: list[Tree | str] = [k for k in kids if k is not None]
        if not kept:
            return None
        return Tree(base_label(self.label) if strip_tags else self.label, kept)

    def top(self) -> Tree:
        """The sentence node: below the unlabelled ``( (S ...) )`` wrapper (or ``ROOT``)."""
        node = self
        while node.label in ("", "ROOT", "TOP") and len(node.children) == 1 and isinstance(
            node.children[0], Tree
        ):
            node = node.children[0]
        return node

    def __str__(self) -> str:
        inner = " ".join(c if isinstance(c, str) else str(c) for c in self.children)
        return f"({self.label} {inner})"


_TOKEN = re.compile(r"\(|\)|[^\s()]+")


def parse_ptb(text: str, where: str = "<string>") -> list[Tree]:
    """Every bracketed tree in ``text`` (DataError naming ``where`` on unbalanced brackets)."""
    trees: list[Tree] = []
    stack: list[Tree] = []
    tokens = _TOKEN.findall(text)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "(":
            label = ""
            if i + 1 < len(tokens) and tokens[i + 1] not in ("(", ")"):
                label = tokens[i + 1]
                i += 1
            node = Tree(label)
            if stack:
                stack[-1].children.append(node)
            stack.append(node)
        elif tok == ")":
            if not stack:
                raise DataError(f"{where}: unbalanced ')' in bracketed tree (token {i})")
            node = stack.pop()
            if not stack:
                trees.append(node)
        else:
            if not stack:
                raise DataError(f"{where}: word {tok!r} outside any bracket")
            stack[-1].children.append(tok)
        i += 1
    if stack:
        raise DataError(f"{where}: {len(stack)} unclosed '(' at the end of the text")
    return trees


def function_tags(label: str) -> list[str]:
    """Function tags of a PTB label (``NP-SBJ-1`` -> ``["SBJ"]``; indices dropped)."""
    if not label or label.startswith("-"):
        return []
    parts = re.split(r"[-=]", label)[1:]
    return [p for p in parts if p and not p.isdigit()]


def ptb_word(word: str) -> str:
    """A PTB token as plain text.

    ``-LRB-`` -> ``(`` (and the other brackets), ````` and ``''`` -> ``"``, ``\\/`` -> ``/``.
    """
    return _PTB_WORDS.get(word, word).replace("\\/", "/").replace("\\*", "*")


def is_punct_tag(tag: str) -> bool:
    """PTB / UD punctuation tags (``,`` ``.`` ``:`` quotes, brackets, ``PUNCT``)."""
    return tag in _PUNCT_TAGS or tag == "PUNCT"


# --- CoNLL-U ----------------------------------------------------------------------------------


@dataclass
class UDToken:
    """One syntactic word of a CoNLL-U sentence (``id`` is 1-based; ``head`` 0 = root)."""

    id: int
    form: str
    lemma: str
    upos: str
    xpos: str
    feats: dict[str, str]
    head: int
    deprel: str


@dataclass
class UDSentence:
    """A CoNLL-U sentence: ``sent_id``, ``text`` (from comments, may be empty) and its words."""

    sent_id: str
    text: str
    tokens: list[UDToken]

    def children(self, head: int) -> list[UDToken]:
        return [t for t in self.tokens if t.head == head]

    def root(self) -> UDToken | None:
        roots = [t for t in self.tokens if t.head == 0]
        return roots[0] if roots else None

    def subtree(self, token_id: int) -> list[int]:
        """Ids of ``token_id`` and all its descendants, sorted."""
        out, todo = {token_id}, [token_id]
        while todo:
            h = todo.pop()
            for t in self.tokens:
                if t.head == h and t.id not in out:
                    out.add(t.id)
                    todo.append(t.id)
        return sorted(out)


def _feats(value: str) -> dict[str, str]:
    if value in ("_", ""):
        return {}
    out = {}
    for part in value.split("|"):
        key, _, val = part.partition("=")
        out[key] = val
    return out


def parse_conllu(text: str, where: str = "<string>") -> list[UDSentence]:
    """CoNLL-U sentences of ``text`` (DataError naming ``where:line`` on a malformed line)."""
    sentences: list[UDSentence] = []
    tokens: list[UDToken] = []
    meta: dict[str, str] = {}

    def flush() -> None:
        nonlocal tokens, meta
        if tokens:
            sid = meta.get("sent_id", f"{where}#{len(sentences) + 1}")
            sentences.append(UDSentence(sid, meta.get("text", ""), tokens))
        tokens, meta = [], {}

    for number, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            flush()
            continue
        if line.startswith("#"):
            key, sep, value = line[1:].partition("=")
            if sep:
                meta[key.strip()] = value.strip()
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise DataError(f"{where}:{number}: expected 10 tab-separated CoNLL-U columns, "
                            f"got {len(cols)}")
        if "-" in cols[0] or "." in cols[0]:  # multi-word token range / empty node
            continue
        try:
            tok_id, head = int(cols[0]), int(cols[6]) if cols[6] != "_" else -1
        except ValueError as exc:
            raise DataError(f"{where}:{number}: bad ID/HEAD column: {exc}") from exc
        tokens.append(UDToken(tok_id, cols[1], cols[2], cols[3], cols[4], _feats(cols[5]),
                              head, cols[7]))
    flush()
    return sentences


# --- files ------------------------------------------------------------------------------------


def treebank_files(path: str | Path) -> tuple[str, list[Path]]:
    """(format, files) of a treebank file or directory; format is ``"ptb"`` or ``"conllu"``.

    A directory is searched recursively; it must hold files of exactly one format.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"treebank path {str(path)!r} does not exist")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    ptb = [p for p in files if p.suffix.lower() in PTB_EXTENSIONS]
    ud = [p for p in files if p.suffix.lower() in CONLLU_EXTENSIONS]
    if ptb and ud:
        raise DataError(f"{str(path)!r} holds both bracketed ({len(ptb)}) and CoNLL-U "
                        f"({len(ud)}) files; point at one kind")
    if not ptb and not ud:
        raise DataError(f"{str(path)!r}: no treebank files (extensions {PTB_EXTENSIONS} or "
                        f"{CONLLU_EXTENSIONS})")
    return ("ptb", ptb) if ptb else ("conllu", ud)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read treebank file {str(path)!r}: {exc}") from exc


def iter_ptb(files: list[Path]) -> Iterator[tuple[str, Tree]]:
    """``(id, tree)`` for every tree; id = ``file-stem:index`` (1-based)."""
    for f in files:
        for i, tree in enumerate(parse_ptb(_read(f), str(f)), 1):
            yield f"{f.stem}:{i}", tree


def iter_conllu(files: list[Path]) -> Iterator[tuple[str, UDSentence]]:
    """``(id, sentence)`` for every sentence; id = ``file-stem:sent_id``."""
    for f in files:
        for sent in parse_conllu(_read(f), str(f)):
            yield f"{f.stem}:{sent.sent_id}", sent


__all__ = [
    "Tree", "UDSentence", "UDToken", "base_label", "file_sha256", "function_tags", "is_punct_tag",
    "iter_conllu",
    "iter_ptb", "parse_conllu", "parse_ptb", "ptb_word", "treebank_files",
]  # fmt: skip

"""CoNLL-2000 chunking data (loader ``conll2000``; catalogue T2).

File format: one token per line ``word POS chunk-tag`` (IOB2 chunk tags ``B-NP``, ``I-NP``,
``O``), a blank line between sentences. ``path`` is a directory holding ``train.txt`` and / or
``test.txt`` (each becomes a split) or one such file (split = ``options.split``, default the
file's stem).

IOB decoding (:func:`iob_to_spans`, conlleval's rules): ``B-X`` always opens a new chunk ``X``;
``I-X`` continues the open chunk when it is an ``X``, otherwise it opens a new chunk ``X``
(tolerated ill-formed input); ``O`` closes the open chunk.

The text of a sentence is its words joined by single spaces, so a word's characters are known
exactly (:func:`word_char_offsets`).

Options:
    per: ``"span"`` (default) one item per chunk: text = the whole sentence, label = the chunk
        tag (``label_names`` = sorted tags of all loaded splits, or ``options.label_names``),
        descriptors ``sentence_id`` (1-based number in its file), ``span_chars``
        (``(char_start, char_end)`` of the chunk in the text, end exclusive), ``word_span``
        (``(first_word, end_word)``, end exclusive) and ``words`` (the chunk's words).
        ``"sentence"``: one unlabelled item per sentence, descriptors ``sentence_id``,
        ``words`` (all words), ``pos`` and ``chunks`` (``(tag, first_word, end_word)`` list).
    max_sentences: keep only the first N sentences of each file (cheap runs: ~12 chunks per
        sentence in CoNLL-2000).
    encoding: file encoding (default utf-8).

Ids: ``{split}/{sentence}`` for sentences and ``{split}/{sentence}:{first_word}-{end_word}``
for spans. Span ids thus encode the span, so :meth:`Stimuli.fingerprint` (ids + texts +
labels), and with it every activation cache key, changes when the spans change.

A malformed line (not three fields, or an unknown IOB prefix) raises a DataError naming
``file:line``; with ``on_error: skip`` its whole sentence is dropped and listed in
``source["skipped"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.data._common import check_on_error, dataset_name, provenance, resolve_path
from vlprobe.data.stimuli import Stimuli
from vlprobe.errors import DataError

PER = ("span", "sentence")


@dataclass
class Sentence:
    """One CoNLL sentence: ``words``, ``pos``, IOB ``tags`` and where it came from."""

    number: int
    words: list[str]
    pos: list[str]
    tags: list[str]
    line: int = 0

    @property
    def text(self) -> str:
        return " ".join(self.words)


def iob_to_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """``(chunk_type, first_word, end_word)`` (end exclusive) of an IOB tag sequence.

    Raises:
        ValueError: a tag that is neither ``O`` nor ``B-X`` / ``I-X``.
    """
    spans: list[tuple[str, int, int]] = []
    cur: str | None = None
    begin = 0
    for i, tag in enumerate(tags):
        if tag == "O":
            prefix, kind = "O", None
        else:
            prefix, sep, kind = tag.partition("-")
            if not sep or prefix not in ("B", "I") or not kind:
                raise ValueError(f"bad IOB tag {tag!r}")
        if cur is not None and (prefix != "I" or kind != cur):
            spans.append((cur, begin, i))
            cur = None
        if prefix in ("B", "I") and cur is None:
            cur, begin = kind, i
    if cur is not None:
        spans.append((cur, begin, len(tags)))
    return spans


def word_char_offsets(words: list[str]) -> list[tuple[int, int]]:
    """``(start, end)`` of each word in ``" ".join(words)``."""
    out, pos = [], 0
    for w in words:
        out.append((pos, pos + len(w)))
        pos += len(w) + 1
    return out


def read_conll(
    path: str | Path, encoding: str = "utf-8", on_error: str = "raise",
    max_sentences: int | None = None,
) -> tuple[list[Sentence], list[str]]:
    """Sentences of a CoNLL-2000 file, and the ``file:line`` of sentences skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding=encoding).splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read CoNLL file {str(path)!r}: {exc}") from exc
    sentences: list[Sentence] = []
    skipped: list[str] = []
    rows: list[tuple[str, str, str]] = []
    bad: str | None = None
    first = 0
    number = 0

    def flush() -> None:
        nonlocal rows, bad, number
        if rows:
            number += 1
            if bad is None:
                words, pos, tags = (list(c) for c in zip(*rows, strict=True))
                try:
                    iob_to_spans(tags)
                except ValueError as exc:
                    bad = f"{path}:{first}: {exc}"
                if bad is None:
                    sentences.append(Sentence(number, words, pos, tags, first))
            if bad is not None:
                if on_error != "skip":
                    raise DataError(bad)
                skipped.append(bad.split(": ", 1)[0])
        rows, bad = [], None

    for i, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            flush()
            if max_sentences is not None and len(sentences) >= max_sentences:
                break
            continue
        if not rows:
            first = i
        parts = line.split()
        if len(parts) != 3:
            bad = bad or f"{path}:{i}: expected 'word POS chunk-tag', got {raw[:80]!r}"
            rows.append(("?", "?", "O"))
            continue
        rows.append((parts[0], parts[1], parts[2]))
    flush()  # the last sentence (no-op after an early stop: rows is empty)
    if max_sentences is not None:
        sentences = sentences[: int(max_sentences)]
    if not sentences:
        raise DataError(f"CoNLL file {str(path)!r} has no sentences ({len(skipped)} skipped)")
    return sentences, skipped


def _files(spec: Any, path: Path) -> dict[str, Path]:
    if path.is_dir():
        found = {s: path / f"{s}.txt" for s in ("train", "test") if (path / f"{s}.txt").is_file()}
        if not found:
            raise DataError(f"conll2000: no train.txt or test.txt in {str(path)!r}")
        return found
    return {str(spec.options.get("split", path.stem)): path}


def load_conll2000(spec: Any) -> dict[str, Stimuli]:
    """CoNLL-2000 chunks (``per: span``) or sentences (``per: sentence``); see module doc."""
    options = dict(spec.options)
    on_error = check_on_error(spec)
    per = options.get("per", "span")
    if per not in PER:
        raise DataError(f"conll2000: options.per must be one of {PER}, got {per!r}")
    max_sentences = options.get("max_sentences")
    if max_sentences is not None and (not isinstance(max_sentences, int) or max_sentences < 1):
        raise DataError(f"conll2000: max_sentences must be a positive int, got {max_sentences!r}")
    path = resolve_path(spec, "conll2000")
    read = {
        split: read_conll(f, options.get("encoding", "utf-8"), on_error, max_sentences)
        for split, f in _files(spec, path).items()
    }
    name = dataset_name(spec, "conll2000")
    out: dict[str, Stimuli] = {}
    if per == "sentence":
        for split, (sents, skipped) in read.items():
            out[split] = Stimuli(
                dataset=name, split=split,
                ids=[f"{split}/{s.number}" for s in sents],
                texts=[s.text for s in sents],
                descriptors={
                    "sentence_id": [s.number for s in sents],
                    "words": [list(s.words) for s in sents],
                    "pos": [list(s.pos) for s in sents],
                    "chunks": [iob_to_spans(s.tags) for s in sents],
                },
                source=provenance("conll2000", path, options, skipped=skipped),
            )
        return out
    all_tags = sorted({t for sents, _ in read.values() for s in sents
                       for t, _, _ in iob_to_spans(s.tags)})
    label_names = list(options.get("label_names") or all_tags)
    unknown = set(all_tags) - set(label_names)
    if unknown:
        raise DataError(f"conll2000: chunk tags {sorted(unknown)} are not in label_names")
    index = {t: i for i, t in enumerate(label_names)}
    for split, (sents, skipped) in read.items():
        ids, texts, labels = [], [], []
        desc: dict[str, list[Any]] = {"sentence_id": [], "span_chars": [], "word_span": [],
                                      "words": []}
        for s in sents:
            text = s.text
            offs = word_char_offsets(s.words)
            for tag, a, b in iob_to_spans(s.tags):
                ids.append(f"{split}/{s.number}:{a}-{b}")
                texts.append(text)
                labels.append(index[tag])
                desc["sentence_id"].append(s.number)
                desc["span_chars"].append((offs[a][0], offs[b - 1][1]))
                desc["word_span"].append((a, b))
                desc["words"].append(s.words[a:b])
        if not ids:
            raise DataError(f"conll2000: split {split!r} has no chunks")
        out[split] = Stimuli(
            dataset=name, split=split, ids=ids, texts=texts,
            labels=np.asarray(labels, dtype=np.int64), label_names=label_names,
            descriptors=desc,
            source=provenance("conll2000", path, options, skipped=skipped),
        )
    return out

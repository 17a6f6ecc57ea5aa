"""Text datasets: ``sentences``, ``gensim_polarity`` and ``senteval``.

``sentences``: one sentence per line (blank lines skipped) in a UTF-8 file. ``options.format``:
    ``"plain"`` (unlabelled), ``"tsv"`` (``label<TAB>sentence``), ``"fasttext"``
    (``__label__pos the sentence``; the first ``__label__`` token is the label) or ``"auto"``
    (default: fasttext when every line starts with ``__label__``, else plain).
    ``options.encoding`` (default utf-8; all text loaders).
    ``options.split`` names the split (default ``train``); ``options.label_names`` fixes the
    class order (default: sorted label strings, numerically when all are integers).
``gensim_polarity``: the 200 labelled movie-review sentences gensim ships
    (``gensim/test/test_data/pang_lee_polarity.cor``, labels neg/pos, cp1252-encoded),
    found without importing gensim.
``senteval``: SentEval probing format ``split<TAB>label<TAB>sentence`` with split ``tr``/``va``/
    ``te`` -> ``train``/``validation``/``test``; string labels index the sorted label names
    (shared by all splits).

A malformed line raises a DataError naming ``file:line``; with ``on_error: skip`` it is dropped
and listed in ``source["skipped"]``. Ids are ``{split}/{line number}`` (1-based).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from vlprobe.data._common import (
    check_on_error,
    dataset_name,
    encode_labels,
    provenance,
    read_text_lines,
    resolve_path,
    sorted_label_names,
)
from vlprobe.data.splits import canonical_split
from vlprobe.data.stimuli import Stimuli
from vlprobe.errors import DataError

_FASTTEXT = "__label__"
_FORMATS = ("auto", "plain", "tsv", "fasttext")


def _numbered_lines(path: Path, encoding: str) -> list[tuple[int, str]]:
    text = read_text_lines(path, encoding)
    lines = [(i + 1, line.rstrip("\r\n")) for i, line in enumerate(text)]
    lines = [(n, line) for n, line in lines if line.strip()]
    if not lines:
        raise DataError(f"text file {str(path)!r} is empty (no non-blank lines)")
    return lines


def _make(
    spec: Any,
    loader: str,
    path: Path,
    split: str,
    rows: list[tuple[int, str | None, str]],
    options: dict[str, Any],
    label_names: list[str] | None,
    skipped: list[str],
    **extra: Any,
) -> Stimuli:
    labelled = rows[0][1] is not None
    labels = None
    if labelled:
        values = [label for _, label, _ in rows]
        unknown = set(values) - set(label_names or values)
        if unknown:
            raise DataError(f"{path}: labels {sorted(unknown)[:5]} are not in label_names")
        labels, label_names = encode_labels(values, label_names)  # type: ignore[arg-type]
    return Stimuli(
        dataset=dataset_name(spec, loader),
        split=split,
        ids=[f"{split}/{n}" for n, _, _ in rows],
        texts=[text for _, _, text in rows],
        labels=labels,
        label_names=label_names if labelled else None,
        source=provenance(loader, path, options, skipped=skipped, **extra),
    )


def _sentences(
    spec: Any, loader: str, path: Path, fmt: str | None = None, encoding: str = "utf-8"
) -> dict[str, Stimuli]:
    options = dict(spec.options)
    on_error = check_on_error(spec)
    fmt = fmt or options.get("format", "auto")
    if fmt not in _FORMATS:
        raise DataError(f"{loader}: options.format must be one of {_FORMATS}, got {fmt!r}")
    lines = _numbered_lines(path, options.get("encoding", encoding))
    if fmt == "auto":
        fmt = "fasttext" if all(line.startswith(_FASTTEXT) for _, line in lines) else "plain"
    rows: list[tuple[int, str | None, str]] = []
    skipped: list[str] = []
    for number, line in lines:
        label: str | None = None
        text = line.strip()
        problem = ""
        if fmt == "tsv":
            label, sep, text = line.partition("\t")
            label, text = label.strip(), text.strip()
            if not sep or not label or not text:
                problem = "expected 'label<TAB>sentence'"
        elif fmt == "fasttext":
            head, _, rest = text.partition(" ")
            label, text = head[len(_FASTTEXT) :], rest.strip()
            while text.startswith(_FASTTEXT):  # further labels of a multi-label line: dropped
                text = text.partition(" ")[2].strip()
            if not head.startswith(_FASTTEXT) or not label or not text:
                problem = "expected '__label__<label> sentence'"
        if problem:
            where = f"{path}:{number}"
            if on_error == "skip":
                skipped.append(where)
                continue
            raise DataError(f"{where}: {problem}, got {line[:80]!r}")
        rows.append((number, label, text))
    if not rows:
        raise DataError(f"{loader}: no usable line in {str(path)!r} ({len(skipped)} skipped)")
    split = options.get("split", "train")
    names = options.get("label_names")
    return {split: _make(spec, loader, path, split, rows, options, names, skipped, format=fmt)}


def load_sentences(spec: Any) -> dict[str, Stimuli]:
    """A text file of sentences, unlabelled or labelled (see the module docstring)."""
    return _sentences(spec, "sentences", resolve_path(spec, "sentences"))


def gensim_polarity_path() -> Path:
    """Path of gensim's bundled ``pang_lee_polarity.cor`` (without importing gensim)."""
    found = importlib.util.find_spec("gensim")
    if found is None or not found.submodule_search_locations:
        raise DataError(
            "gensim_polarity needs gensim's bundled test data: pip install 'vlprobe[text]' "
            "(gensim is not installed)"
        )
    path = (
        Path(next(iter(found.submodule_search_locations))) / "test/test_data/pang_lee_polarity.cor"
    )
    if not path.is_file():
        raise DataError(f"gensim is installed but {str(path)!r} is missing")
    return path


def load_gensim_polarity(spec: Any) -> dict[str, Stimuli]:
    """The 200 neg/pos sentences bundled with gensim (fastText format)."""
    path = resolve_path(spec, "gensim_polarity") if spec.path else gensim_polarity_path()
    return _sentences(spec, "gensim_polarity", path, fmt="fasttext", encoding="cp1252")


def load_senteval(spec: Any) -> dict[str, Stimuli]:
    """A SentEval probing task file: ``split<TAB>label<TAB>sentence`` per line."""
    loader = "senteval"
    options = dict(spec.options)
    on_error = check_on_error(spec)
    path = resolve_path(spec, loader)
    rows: dict[str, list[tuple[int, str | None, str]]] = {}
    skipped: list[str] = []
    for number, line in _numbered_lines(path, options.get("encoding", "utf-8")):
        parts = line.split("\t", 2)
        problem = ""
        if len(parts) != 3 or not parts[1].strip() or not parts[2].strip():
            problem = "expected 'split<TAB>label<TAB>sentence'"
        elif parts[0].strip() not in ("tr", "va", "te"):
            problem = f"split must be tr, va or te, got {parts[0].strip()!r}"
        if problem:
            where = f"{path}:{number}"
            if on_error == "skip":
                skipped.append(where)
                continue
            raise DataError(f"{where}: {problem}")
        split = canonical_split(parts[0].strip())
        rows.setdefault(split, []).append((number, parts[1].strip(), parts[2].strip()))
    if not rows:
        raise DataError(f"{loader}: no usable line in {str(path)!r} ({len(skipped)} skipped)")
    names = options.get("label_names") or sorted_label_names(
        [label for part in rows.values() for _, label, _ in part]  # type: ignore[misc]
    )
    order = [s for s in ("train", "validation", "test") if s in rows]
    return {s: _make(spec, loader, path, s, rows[s], options, names, skipped) for s in order}


__all__ = ["gensim_polarity_path", "load_gensim_polarity", "load_sentences", "load_senteval"]

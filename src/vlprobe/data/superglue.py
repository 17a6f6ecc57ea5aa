"""SuperGLUE BoolQ and WiC in their official JSONL format: loaders ``boolq`` and ``wic``.

``path`` is the task's directory as distributed by SuperGLUE (``BoolQ/`` or ``WiC/``) holding
``train.jsonl``, ``val.jsonl`` and ``test.jsonl``, one JSON object per line:

- BoolQ: ``{"question", "passage", "idx", "label": true/false}``
- WiC: ``{"word", "sentence1", "sentence2", "idx", "label": true/false, "start1", "end1",
  "start2", "end2", "version"}`` (``start``/``end``: character offsets of the target word in
  each sentence, end exclusive)

Splits: ``train.jsonl`` -> ``train``, ``val.jsonl`` -> ``validation`` (both required and
labelled). SuperGLUE's ``test.jsonl`` has no labels: it is **not loaded** by default (a trained
head cannot be scored on it; the official dev set is the usual test proxy); with
``options.include_test: true`` it is loaded as an unlabelled ``test`` split (to extract
features for a leaderboard submission).

Labels: booleans (or 0/1) -> ``0`` / ``1`` with ``label_names = ["False", "True"]``.

Each item is ONE string, because the adapter contract tokenizes one string per item: a
(question, passage) or (sentence1, sentence2) pair is rendered with a ``str.format``-style
template (``options.template``):

- BoolQ default ``"{question}? {passage}"``: question first, so a model that truncates long
  passages (CLIP: 77 tokens) keeps the question. Fields: ``question``, ``passage``, ``idx``.
- WiC default ``"{word}: {sentence1} / {sentence2}"``. Fields: ``word``, ``sentence1``,
  ``sentence2``, ``idx``.

No tokenizer pair encoding (``[SEP]`` between segments, segment ids) is used; write the
separator into the template (e.g. ``"{question} [SEP] {passage}"`` for BERT-style
vocabularies) if wanted. The template is part of the texts, hence of every cache key.

Descriptors: ``idx`` (the official index, int) for both; WiC also keeps ``word``, ``start1``,
``end1``, ``start2``, ``end2``, ``version`` and ``target_spans``: the two target-word spans as
``[[s1, e1], [s2, e2]]`` character offsets *in the rendered item text* (``None`` for a
sentence the template uses zero or several times). Ids are ``{split}/{idx}``.

A malformed line (bad JSON, missing or mistyped field, bad span) raises a DataError naming
``file:line``; with ``on_error: skip`` it is dropped and listed in ``source["skipped"]``.
A missing split file is a DataError naming it.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.data._common import check_on_error, dataset_name, provenance, resolve_path
from vlprobe.data.stimuli import Stimuli
from vlprobe.errors import DataError

LABEL_NAMES = ["False", "True"]
BOOLQ_TEMPLATE = "{question}? {passage}"
WIC_TEMPLATE = "{word}: {sentence1} / {sentence2}"
_FILES = (("train", "train.jsonl"), ("validation", "val.jsonl"), ("test", "test.jsonl"))


class _Bad(Exception):
    """A malformed record (message without the file:line prefix)."""


def parse_template(template: Any, fields: tuple[str, ...], loader: str) -> list[tuple[str, str]]:
    """``template`` as ``[(literal, field), ...]`` (field ``""`` = none); DataError when it uses
    an unknown field, a positional field, a conversion/format spec, or none of ``fields``."""
    if not isinstance(template, str) or not template:
        raise DataError(f"{loader}: options.template must be a non-empty string, got {template!r}")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise DataError(f"{loader}: bad options.template {template!r}: {exc}") from exc
    out, used = [], set()
    for literal, field, spec, conversion in parts:
        if field is not None and (field not in fields or spec or conversion):
            raise DataError(
                f"{loader}: options.template {template!r}: field {{{field}}} is not allowed "
                f"(plain fields only: {', '.join('{' + f + '}' for f in fields)})"
            )
        out.append((literal, field or ""))
        if field:
            used.add(field)
    if not used - {"idx"}:
        raise DataError(f"{loader}: options.template {template!r} uses none of the text fields")
    return out


def render(parts: list[tuple[str, str]], values: dict[str, Any]) -> tuple[str, dict[str, list]]:
    """The text of a parsed template and, per field, the character offsets where it starts."""
    chunks: list[str] = []
    starts: dict[str, list[int]] = {}
    pos = 0
    for literal, field in parts:
        chunks.append(literal)
        pos += len(literal)
        if field:
            value = str(values[field])
            starts.setdefault(field, []).append(pos)
            chunks.append(value)
            pos += len(value)
    return "".join(chunks), starts


def _read_jsonl(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc}") from exc
    lines = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    if not lines:
        raise DataError(f"{str(path)!r} is empty (no JSON lines)")
    return lines


def _text(record: dict, key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"field {key!r} must be a non-empty string, got {value!r}")
    return value


def _int(record: dict, key: str) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"field {key!r} must be an integer, got {value!r}")
    return value


def _label(record: dict) -> int | None:
    if "label" not in record:
        return None
    value = record["label"]
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    raise _Bad(f"field 'label' must be true/false (or 0/1), got {value!r}")


def _boolq(record: dict) -> dict[str, Any]:
    return {"question": _text(record, "question").strip(),
            "passage": _text(record, "passage").strip(), "idx": _int(record, "idx")}


def _wic(record: dict) -> dict[str, Any]:
    out: dict[str, Any] = {"word": _text(record, "word").strip(), "idx": _int(record, "idx")}
    for k in ("1", "2"):
        sentence = _text(record, f"sentence{k}")
        start, end = _int(record, f"start{k}"), _int(record, f"end{k}")
        if not 0 <= start < end <= len(sentence):
            raise _Bad(f"span start{k}={start}, end{k}={end} is not inside sentence{k} "
                       f"({len(sentence)} characters)")
        out.update({f"sentence{k}": sentence, f"start{k}": start, f"end{k}": end})
    out["version"] = record.get("version")
    return out


def _load_split(
    path: Path, split: str, loader: str, parse: Any, parts: list, on_error: str,
    skipped: list[str],
) -> tuple[list[dict[str, Any]], list[int | None]]:
    records, labels, seen = [], [], {}
    for number, line in _read_jsonl(path):
        where = f"{path}:{number}"
        try:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _Bad(f"not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise _Bad(f"expected a JSON object, got {type(record).__name__}")
            values = parse(record)
            label = _label(record)
            if values["idx"] in seen:
                raise _Bad(f"idx {values['idx']} repeats line {seen[values['idx']]}")
        except _Bad as exc:
            if on_error == "skip":
                skipped.append(where)
                continue
            raise DataError(f"{where}: {exc}") from None
        seen[values["idx"]] = number
        values["text"], values["starts"] = render(parts, values)
        records.append(values)
        labels.append(label)
    if not records:
        raise DataError(f"{loader}: no usable line in {str(path)!r} ({len(skipped)} skipped)")
    n_labelled = sum(label is not None for label in labels)
    if 0 < n_labelled < len(labels):
        raise DataError(f"{path}: {n_labelled} of {len(labels)} lines have a 'label'; "
                        "expected all (train/val) or none (test)")
    if split != "test" and n_labelled == 0:
        raise DataError(f"{path}: the {split} split has no labels (field 'label')")
    return records, labels


def _target_spans(values: dict[str, Any]) -> list[list[int] | None]:
    spans: list[list[int] | None] = []
    for k in ("1", "2"):
        starts = values["starts"].get(f"sentence{k}", [])
        if len(starts) != 1:
            spans.append(None)
            continue
        spans.append([starts[0] + values[f"start{k}"], starts[0] + values[f"end{k}"]])
    return spans


def _load(spec: Any, loader: str, fields: tuple[str, ...], default_template: str,
          parse: Any) -> dict[str, Stimuli]:
    options = dict(spec.options)
    unknown = sorted(set(options) - {"template", "include_test", "path"})
    if unknown:
        raise DataError(f"{loader}: unknown option(s) {unknown}; known: template, include_test")
    on_error = check_on_error(spec)
    root = resolve_path(spec, loader)
    if not root.is_dir():
        raise DataError(f"{loader}: path {str(root)!r} must be the task directory holding "
                        "train.jsonl / val.jsonl / test.jsonl")
    template = options.get("template", default_template)
    parts = parse_template(template, fields, loader)
    include_test = bool(options.get("include_test", False))
    out: dict[str, Stimuli] = {}
    for split, filename in _FILES:
        if split == "test" and not include_test:
            continue
        path = root / filename
        if not path.is_file():
            have = sorted(p.name for p in root.iterdir())
            raise DataError(f"{loader}: {str(path)!r} does not exist (the {split} split); "
                            f"{str(root)!r} has {have}")
        skipped: list[str] = []
        records, labels = _load_split(path, split, loader, parse, parts, on_error, skipped)
        labelled = labels[0] is not None
        descriptors: dict[str, list[Any]] = {"idx": [r["idx"] for r in records]}
        if loader == "wic":
            for key in ("word", "start1", "end1", "start2", "end2", "version"):
                descriptors[key] = [r[key] for r in records]
            descriptors["target_spans"] = [_target_spans(r) for r in records]
        out[split] = Stimuli(
            dataset=dataset_name(spec, loader),
            split=split,
            ids=[f"{split}/{r['idx']}" for r in records],
            texts=[r["text"] for r in records],
            labels=np.asarray(labels, dtype=np.int64) if labelled else None,
            label_names=list(LABEL_NAMES) if labelled else None,
            descriptors=descriptors,
            source=provenance(loader, path, options, template=template, skipped=skipped),
        )
    return out


def load_boolq(spec: Any) -> dict[str, Stimuli]:
    """SuperGLUE BoolQ JSONL dir (train/val.jsonl); text = template "{question}? {passage}"."""
    return _load(spec, "boolq", ("question", "passage", "idx"), BOOLQ_TEMPLATE, _boolq)


def load_wic(spec: Any) -> dict[str, Stimuli]:
    """SuperGLUE WiC JSONL dir (train/val.jsonl); text = template, target spans kept."""
    return _load(spec, "wic", ("word", "sentence1", "sentence2", "idx"), WIC_TEMPLATE, _wic)


__all__ = ["BOOLQ_TEMPLATE", "LABEL_NAMES", "WIC_TEMPLATE", "load_boolq", "load_wic"]

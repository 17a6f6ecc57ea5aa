"""Character spans -> sub-word token spans (for ``span`` pooling, catalogue T2).

A span is given in characters of the text the tokenizer saw, ``[char_start, char_end)``
(end exclusive, like Python slices). Fast tokenizers return each token's character offsets
``(start, end)`` (``return_offsets_mapping=True``); special and padding tokens have the empty
offset ``(0, 0)``.

:func:`char_span_to_token_span` returns the FIRST and LAST token (inclusive indexes) whose
non-empty offset range overlaps the span: ``tok_start < char_end and tok_end > char_start``.
Overlap (rather than containment) is what makes it work for every tokenizer family:

- WordPiece (BERT): ``"pound"`` -> ``(18, 23)``; ``##`` pieces have offsets inside the word;
- byte-level BPE (GPT-2, RoBERTa, Llama-3 style): a token carries its leading space,
  ``"Ġin"`` -> ``(10, 13)`` for the word ``in`` at ``(11, 13)``; the previous word's token ends
  at 10, so it does not overlap;
- CLIP BPE (``</w>`` suffixes, lower-cased): offsets point into the original text.

A span that overlaps no token was cut away by truncation (it starts after the last real
token) or lies on whitespace only; :class:`SpanAlignmentError` says which
(``.truncated``). Callers count truncated spans like truncated texts.

:func:`truncated_spans` says which span items a model's maximum length cuts (fully or partly)
by tokenizing their texts again, without running the model: the activation store keeps only
the count, and analyses that must drop partly cut spans (T2) need the items.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlprobe.errors import DataError


class SpanAlignmentError(DataError):
    """A character span overlaps no token. ``truncated`` is True when the span starts at or
    after the end of the last real token (the text was cut at the model's maximum length)."""

    def __init__(self, message: str, truncated: bool) -> None:
        super().__init__(message)
        self.truncated = truncated


def char_span_to_token_span(offsets_row: Any, char_start: int, char_end: int) -> tuple[int, int]:
    """``(first_tok, last_tok)`` (inclusive) of the tokens covering ``[char_start, char_end)``.

    Args:
        offsets_row: ``[T, 2]`` character offsets of one tokenized text (special / padding
            tokens ``(0, 0)``), numpy array, torch tensor or nested list.
        char_start, char_end: the span in characters, end exclusive.

    Raises:
        SpanAlignmentError: no non-empty token overlaps the span (``.truncated`` says whether
            the text was cut before the span).
        DataError: an empty or inverted span.
    """
    if hasattr(offsets_row, "detach"):
        offsets_row = offsets_row.detach().cpu().numpy()
    off = np.asarray(offsets_row, dtype=np.int64).reshape(-1, 2)
    cs, ce = int(char_start), int(char_end)
    if ce <= cs or cs < 0:
        raise DataError(f"empty or inverted character span ({cs}, {ce})")
    starts, ends = off[:, 0], off[:, 1]
    real = ends > starts
    hit = np.flatnonzero(real & (starts < ce) & (ends > cs))
    if hit.size == 0:
        last_end = int(ends[real].max()) if real.any() else 0
        truncated = cs >= last_end
        why = (
            f"the tokenized text ends at character {last_end} (truncated at the model's "
            "maximum length)" if truncated else "it covers only whitespace or skipped characters"
        )
        raise SpanAlignmentError(
            f"character span ({cs}, {ce}) maps to no token: {why}", truncated=truncated
        )
    return int(hit[0]), int(hit[-1])


def align_spans(
    offsets: Any, rows: Any, spans: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Token spans of many items: item ``k`` is span ``spans[k]`` of text row ``rows[k]``.

    Args:
        offsets: ``[B, T, 2]`` offsets of a tokenized batch.
        rows: ``[K]`` batch row of each item.
        spans: ``[K, 2]`` character spans ``(start, end)``.

    Returns:
        ``(token_spans [K, 2] int64, cut [K] bool)``: spans cut away by truncation get
        ``(-1, -1)``; ``cut`` is True for those AND for spans only partly kept (their last
        token is the last kept token that overlaps).

    Raises:
        SpanAlignmentError: a span overlaps no token for another reason than truncation.
    """
    if hasattr(offsets, "detach"):
        offsets = offsets.detach().cpu().numpy()
    offsets = np.asarray(offsets, dtype=np.int64)
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    out = np.full((len(rows), 2), -1, dtype=np.int64)
    cut = np.zeros(len(rows), dtype=bool)
    for k, (r, (cs, ce)) in enumerate(zip(rows, spans, strict=True)):
        row = offsets[r]
        try:
            out[k] = char_span_to_token_span(row, cs, ce)
        except SpanAlignmentError as exc:
            if not exc.truncated:
                raise
            cut[k] = True
            continue
        real_end = row[:, 1][row[:, 1] > row[:, 0]]
        if real_end.size and int(real_end.max()) < ce:
            cut[k] = True  # partly truncated
    return out, cut


def truncated_spans(
    adapter: Any, texts: Any, spans: Any, batch_size: int = 256
) -> np.ndarray:
    """``[N]`` bool: True where the model's maximum length cuts span ``spans[k]`` of
    ``texts[k]`` fully or partly (the ``cut`` flags of :func:`align_spans`).

    Each unique text is tokenized once with ``adapter.prepare`` (the tokenization the
    extractor uses, truncation included); no forward pass is run.

    Args:
        adapter: a :class:`~vlprobe.models.base.ModelAdapter` with a text tower and a fast
            tokenizer (its batches carry ``offsets``).
        texts: ``N`` texts (items sharing a text share one tokenization).
        spans: ``[N, 2]`` character spans ``(start, end)``, end exclusive.
        batch_size: unique texts tokenized per ``prepare`` call.

    Raises:
        ConfigError: the adapter gives no character offsets.
        SpanAlignmentError: a span overlaps no token for another reason than truncation.
    """
    from vlprobe.errors import ConfigError

    texts = [str(t) for t in texts]
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    if len(texts) != len(spans):
        raise DataError(f"truncated_spans: {len(texts)} texts but {len(spans)} spans")
    row_of_text: dict[str, int] = {}
    for text in texts:
        row_of_text.setdefault(text, len(row_of_text))
    unique = list(row_of_text)
    row = np.asarray([row_of_text[t] for t in texts], dtype=np.int64)
    cut = np.zeros(len(texts), dtype=bool)
    for start in range(0, len(unique), batch_size):
        batch = adapter.prepare(unique[start : start + batch_size], "text")
        if getattr(batch, "offsets", None) is None:
            raise ConfigError(f"model {getattr(adapter, 'family', '?')!r} gives no token "
                              "character offsets (it needs a fast tokenizer)")
        items = np.flatnonzero((row >= start) & (row < start + batch_size))
        _, cut[items] = align_spans(batch.offsets, row[items] - start, spans[items])
    return cut

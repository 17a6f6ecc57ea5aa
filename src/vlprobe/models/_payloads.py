"""Turning payloads into model inputs, shared by the transformers adapters: (image, text) pair
checks, modality tags of a tokenized text batch, and the truncation count of a tokenizer call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlprobe.errors import ConfigError, DataError


def count_truncated(adapter: Any, texts: list[str], max_len: int | None,
                     encoded: Any) -> int:
    """How many of ``texts`` the tokenizer call ``encoded`` cut to ``max_len``: a fast
    tokenizer's encodings keep what truncation removed (``Encoding.overflowing``), so no second
    tokenization (it was ~40 % of a text batch's tokenizer time); slow: :meth:`text_lengths`."""
    if max_len is None:
        return 0
    encodings = getattr(encoded, "encodings", None)
    if encodings is None or len(encodings) != len(texts):
        return sum(1 for n in adapter.text_lengths(texts) if n > max_len)
    return sum(1 for e in encodings if e.overflowing)


def text_tags(input_ids: Any, mask: Any, special_ids: Sequence[int]) -> Any:
    """``[B, T]`` int8 tags of a tokenized text batch: pad where ``mask`` is 0, special for
    the tokenizer's special tokens ([CLS], [SEP], BOS, EOS), text otherwise."""
    import torch

    from vlprobe.modality import TAG_PAD, TAG_SPECIAL, TAG_TEXT

    ids = torch.as_tensor(input_ids).cpu()
    special = torch.isin(ids, torch.tensor(sorted(set(special_ids)), dtype=ids.dtype))
    tags = torch.where(special, torch.tensor(TAG_SPECIAL), torch.tensor(TAG_TEXT))
    if mask is not None:
        tags = torch.where(torch.as_tensor(mask).cpu().bool(), tags, torch.tensor(TAG_PAD))
    return tags.to(torch.int8)


def split_pairs(payloads: Sequence[Any], family: str) -> tuple[list[Any], list[Any]]:
    """``[(image, text), ...]`` -> (images, texts), with a clear error for anything else
    (not a pair; a missing image; a missing, non-string or blank text)."""
    images, texts = [], []
    for i, item in enumerate(payloads):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ConfigError(
                f"model {family!r}: pair item {i} is not an (image, text) pair: {type(item)}"
            )
        if item[0] is None:
            raise DataError(f"model {family!r}: pair item {i} has no image (None)")
        if item[1] is None or not str(item[1]).strip():
            raise DataError(
                f"model {family!r}: pair item {i} has an empty caption ({item[1]!r}); a "
                "fusion model needs a non-empty text with every image"
            )
        images.append(item[0])
        texts.append(item[1])
    return images, texts

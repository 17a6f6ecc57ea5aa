"""Decoding with a caption decoder (:mod:`vlprobe.captioning.decoders`) on frozen grid
features, and what every captioner adapter shares (``vision_encoder_decoder`` and
``grid_captioner``): the decoder input of a caption, the :class:`Generation` record, the cut
of generated ids at EOS and the teacher-forced pass that recovers each generated token's
cross-attention.

Grid features are stored by the activation store as ``[N, C*g*g]`` (``grid<g>`` pooling,
channel-major, :func:`vlprobe.pooling.unflatten_grid`); a decoder reads ``[B, g*g, C]``
(one token per cell, row-major): :func:`grid_tokens` converts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlprobe.errors import DataError


@dataclass
class Generation:
    """Generated captions with the cross-attention that produced each token.

    Attributes:
        texts: one caption per image (special tokens removed, stripped).
        token_ids: per image, the generated ids after the start token, up to and including
            the first EOS (if one was generated before ``max_length``).
        tokens: the same as strings (one per id).
        cross_attention: per image a float32 ``[L, H, n_tokens, K]`` tensor: decoder layer
            x head x generated token x image token (K = 1 + P patches for a ViT encoder,
            g x g grid cells for a grid captioner); row t is the step that produced token t.
    """

    texts: list[str]
    token_ids: list[list[int]]
    tokens: list[list[str]]
    cross_attention: list[Any]


def start_token_inputs(tokenizer: Any, texts: Sequence[Any], max_length: int, start_id: int
                       ) -> tuple[Any, Any, int, Any]:
    """The teacher-forcing input of captions: ``[start] + caption tokens`` (the tokenizer's
    own special tokens not added, no EOS), cut to ``max_length`` positions, right-padded.

    Returns ``(ids [B, T], mask [B, T], number of captions cut, offsets [B, T, 2] or None)``
    (offsets of the start token and of padding are ``(0, 0)``)."""
    import torch

    texts = [str(t) for t in texts]
    lengths = [len(i) + 1 for i in tokenizer(texts, add_special_tokens=False,
                                             verbose=False)["input_ids"]]
    n_truncated = sum(1 for n in lengths if n > max_length)
    want_offsets = bool(getattr(tokenizer, "is_fast", False))
    enc = tokenizer(
        texts, add_special_tokens=False, padding="longest", truncation=True,
        max_length=max_length - 1, return_tensors="pt", return_offsets_mapping=want_offsets,
    )
    b = len(texts)
    start = torch.full((b, 1), int(start_id), dtype=torch.long)
    ids = torch.cat([start, enc["input_ids"].long()], dim=1)
    mask = torch.cat([torch.ones(b, 1, dtype=torch.long), enc["attention_mask"].long()], 1)
    offsets = enc.get("offset_mapping")
    if offsets is not None:
        offsets = np.concatenate([np.zeros((b, 1, 2), dtype=np.int64),
                                  offsets.numpy().astype(np.int64)], axis=1)
    return ids, mask, n_truncated, offsets


def grid_tokens(flat: Any, channels: int, grid: int) -> Any:
    """``[B, C*g*g]`` (numpy or torch, channel-major) -> float32 torch ``[B, g*g, C]``."""
    import torch

    x = torch.as_tensor(np.asarray(flat, dtype=np.float32) if not torch.is_tensor(flat)
                        else flat).float()
    if x.ndim != 2 or x.shape[1] != channels * grid * grid:
        raise DataError(f"grid features of shape {tuple(x.shape)} are not [B, "
                         f"{channels}*{grid}*{grid}]")
    return x.reshape(x.shape[0], channels, grid * grid).transpose(1, 2).contiguous()


def cut_at_eos(ids: Any, eos: int) -> list[list[int]]:
    """Per row of ``[B, n]`` generated ids (start token first): the ids after the start
    token up to and including the first ``eos`` (the whole row when it has none)."""
    out = []
    for row in ids[:, 1:].tolist():
        out.append(row[: row.index(eos) + 1] if eos in row else row)
    return out


def teacher_forced_inputs(start: Sequence[int], token_ids: Sequence[Sequence[int]], pad: int
                          ) -> tuple[Any, Any]:
    """``[start_b] + tokens[:-1]`` per row, right-padded with ``pad`` -> ``(ids [B, n_max],
    mask [B, n_max])``: the decoder input whose position t produced generated token t."""
    import torch

    n_max = max(1, max(len(t) for t in token_ids))
    ids = torch.full((len(token_ids), n_max), int(pad), dtype=torch.long)
    mask = torch.zeros(len(token_ids), n_max, dtype=torch.long)
    for b, toks in enumerate(token_ids):
        seq = [int(start[b]), *list(toks)[:-1]]
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
    return ids, mask


def per_token_attention(got: dict[str, Any], sites: Sequence[str],
                        token_ids: Sequence[Sequence[int]]) -> list[Any]:
    """Captured ``site -> [B, H, n_max, K]`` cross-attention of a teacher-forced pass ->
    per image ``[L, H, n_tokens, K]`` (layers in ``sites`` order)."""
    import torch

    stacked = torch.stack([got[s] for s in sites], dim=1)  # [B, L, H, n_max, K]
    return [stacked[b, :, :, : len(t)] for b, t in enumerate(token_ids)]


def decode_grid(
    decoder: Any, tokenizer: Any, grid_features: Any, *, max_length: int, num_beams: int = 1,
    batch_size: int = 100, rows: Sequence[int] | None = None, progress: bool = False,
    desc: str = "decode",
) -> list[str]:
    """Captions of stored grid features ``[N, C*g*g]`` (rows ``rows``, default all), in
    batches; special tokens removed."""
    import torch
    from tqdm.auto import tqdm

    arch = decoder.arch
    order = np.arange(len(grid_features)) if rows is None else np.asarray(rows)
    texts: list[str] = []
    starts = range(0, len(order), batch_size)
    for s in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
        idx = order[s : s + batch_size]
        grid = grid_tokens(_rows(grid_features, idx), arch["feature_dim"], arch["grid"])
        with torch.no_grad():
            ids = decoder.generate_ids(grid, max_length=max_length, num_beams=num_beams)
        texts += [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return texts


def _rows(array: Any, idx: np.ndarray) -> np.ndarray:
    """``array[idx]`` for numpy arrays and memory maps (fancy indexing reads only those
    rows)."""
    return np.asarray(array[idx], dtype=np.float32)

"""Batch plans of one extraction call: which items go into each forward pass (length
bucketing, span items grouped by text) and the background preparation of the next batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlprobe.errors import ConfigError


def _batches(
    adapter: Any, stimuli: Any, modality: str, start: int, stop: int, batch_size: int,
    bucket: bool,
) -> list[np.ndarray]:
    """Row positions (relative to ``start``) of each batch of shard ``[start, stop)``."""
    order = np.arange(stop - start)
    if bucket and modality in ("text", "pair") and stop - start > 1:
        lengths = np.asarray(
            adapter.text_lengths(stimuli.payloads("text", range(start, stop))), dtype=np.int64
        )
        order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _span_chars(stimuli: Any, modality: str) -> np.ndarray:
    """``[N, 2]`` character spans of the items (span pooling), validated."""
    if modality != "text":
        raise ConfigError(f"span pooling applies to text items, not {modality!r}")
    column = (getattr(stimuli, "descriptors", None) or {}).get("span_chars")
    if column is None:
        raise ConfigError(
            f"span pooling needs items with a 'span_chars' descriptor (one character span per "
            f"item, e.g. the conll2000 loader); dataset {stimuli.dataset!r} has none"
        )
    arr = np.asarray([tuple(c) for c in column], dtype=np.int64).reshape(-1, 2)
    if arr.shape[0] != len(stimuli):
        raise ConfigError(f"span_chars has {arr.shape[0]} rows for {len(stimuli)} items")
    return arr


def _span_batches(
    adapter: Any, stimuli: Any, start: int, stop: int, batch_size: int, bucket: bool
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batches of shard ``[start, stop)`` grouped by text: ``(rel, reps, row_of)`` with ``rel``
    the items (relative to ``start``), ``reps`` one item per unique text (the batch rows) and
    ``row_of[k]`` the batch row of item ``rel[k]``. ``batch_size`` counts unique texts."""
    texts = stimuli.payloads("text", range(start, stop))
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        groups.setdefault(text, []).append(i)
    members = list(groups.values())
    order = np.arange(len(members))
    if bucket and len(members) > 1:
        lengths = np.asarray(
            adapter.text_lengths([texts[m[0]] for m in members]), dtype=np.int64
        )
        order = np.argsort(lengths, kind="stable")
    out = []
    for b in range(0, len(order), batch_size):
        chosen = [members[g] for g in order[b : b + batch_size]]
        rel = np.asarray([i for m in chosen for i in m], dtype=np.int64)
        reps = np.asarray([m[0] for m in chosen], dtype=np.int64)
        row_of = np.asarray([r for r, m in enumerate(chosen) for _ in m], dtype=np.int64)
        out.append((rel, reps, row_of))
    return out


def _prefetched(jobs: Sequence[Any], prepare: Any, enabled: bool) -> Any:
    """Yield ``(job, prepare(job))``; with ``enabled``, the next job is prepared in a
    background thread while the caller runs the model on the current one."""
    if not enabled or len(jobs) < 2:
        for job in jobs:
            yield job, prepare(job)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlprobe-prepare") as ex:
        future = ex.submit(prepare, jobs[0])
        for i, job in enumerate(jobs):
            batch = future.result()
            if i + 1 < len(jobs):
                future = ex.submit(prepare, jobs[i + 1])
            yield job, batch

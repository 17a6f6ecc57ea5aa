"""Run a model over stimuli once and cache every requested site's pooled activations (and
attention statistics).

:func:`extract_features` cuts the N items into shards of ``shard_size`` rows. Every output
(a hidden-state site pooled to ``[B, D]``; an attention site's reducer or raw attention) is
one store entry. For each shard that some output still misses, it runs ONE forward pass per
batch capturing all the sites those outputs need, computes every output, fills a per-output
shard buffer and, when the shard is done, writes it for every output (atomically; the sidecar
is the commit marker). Memory therefore holds at most one shard per output, whatever N is.

Resume: rerunning the same extraction reads every committed, intact shard and only computes
the rest; a fully cached extraction does no forward pass at all.

Text: inside each shard items are sorted by token count (:meth:`ModelAdapter.text_lengths`),
batched, and scattered back to their original positions, so each batch is padded only to its
own longest text. Pooling is padding-aware, so this does not change the numbers.

Preparation (image decoding / tokenization) of the next batch runs in one background thread
while the model runs on the current batch (``prefetch=True``); batch plans (including the
token counts for bucketing) are computed up front so the tokenizer is never shared by two
threads at once.

Span pooling (``span``, catalogue T2): every item is one character span
(``stimuli.descriptors["span_chars"]``, ``(start, end)`` end exclusive) of its text, and many
items share one text (CoNLL chunks of one sentence). Inside each shard the items are grouped by
text (first-appearance order): ONE forward pass per unique text, and every span item of that
text is pooled from it (``Batch.offsets`` -> token span via
:func:`~vlprobe.extract.alignment.align_spans`). ``batch_size`` then counts unique texts per
forward. Other sites of the same pass (e.g. the embedding, ``none``) are pooled per text and
copied to each of its items. For span pooling ``n_truncated`` counts span ITEMS cut (fully or
partly) by truncation; a fully cut span is stored as an all-zero vector. The cache key holds
pooling ``span``; the spans themselves are covered by the stimuli fingerprint because span
items' ids encode them (``conll2000`` loader: ``{split}/{sentence}:{first_word}-{end_word}``).

Grid pooling (``grid<g>``, catalogue V5) keeps a coarse ``g x g`` spatial map of image sites,
stored flattened as ``[N, C*g*g]`` (:func:`~vlprobe.pooling.unflatten_grid`); text
towers reject it.

Attention sites (``*.attn``) are captured in the same pass. Each needs one or more methods
(``attention=`` or a ``pooling`` dict entry; :mod:`vlprobe.extract.attention`): streaming
reducers ``reduce:<name>`` (:mod:`vlprobe.extract.reducers`) store small ``[N, H, ...]``
float32 statistics, named ``"<site>@<reducer>"`` in :attr:`ExtractionResult.features`;
``raw`` stores the attention of each item's real tokens, float16 ``[H, Tq_i, Tk_i]``, as a
ragged entry (``"<site>@raw"``, a :class:`~vlprobe.extract.ragged.RaggedArray`, with the
tags of those tokens in ``"<site>@raw_tags"``). Token classes come from the trace's tags
(:func:`~vlprobe.extract.reducers.attention_context`); padding never enters a value.

Raw attention is estimated first (one forward of item 0 gives each site's heads and token
counts; text lengths give the rest): past ``raw_attention_limit_bytes`` the call refuses with
the byte count, and the shard size shrinks so that one shard's raw attention stays under
:data:`~vlprobe.extract.attention.RAW_SHARD_BYTES` in memory. The probe forward counts in
``n_forward_batches``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlprobe.errors import ConfigError, StoreError
from vlprobe.extract.alignment import align_spans
from vlprobe.extract.attention import (
    DEFAULT_RAW_LIMIT_BYTES,
    RAW,
    batch_values,
    companion_sites,
    is_attention_site,
    over_limit_error,
    probe_raw_bytes,
    raw_shard_size,
)
from vlprobe.extract.batching import _batches, _prefetched, _span_batches, _span_chars
from vlprobe.extract.keys import hash_key
from vlprobe.extract.plan import (
    Output,
    _key_dicts,
    feature_keys,
    resolve_modality,
    resolve_outputs,
    resolve_pooling,
    resolve_sites,
)
from vlprobe.extract.ragged import RaggedArray
from vlprobe.extract.store import ActivationStore, n_shards_for, shard_bounds
from vlprobe.modality import tags_for_site
from vlprobe.pooling import pool_numpy

log = logging.getLogger(__name__)

__all__ = [
    "ExtractionResult", "extract_features", "feature_keys", "resolve_modality",
    "resolve_pooling", "resolve_sites",
]


@dataclass
class ExtractionResult:
    """What :func:`extract_features` did.

    Attributes:
        features: output name -> values: a hidden-state site -> ``[N, D]`` float32; an
            attention reducer ``"<site>@<reducer>"`` -> ``[N, H, ...]`` float32 (both
            memory-mapped copy-on-write from the store); ``"<site>@raw"`` /
            ``"<site>@raw_tags"`` -> a read-only RaggedArray (:mod:`vlprobe.extract.attention`).
        keys: output name -> store key.
        poolings: output name -> pooling / attention method used.
        n_forward_batches: forward passes run (0 when everything was cached; includes the one
            probe forward that sizes raw attention).
        n_items_computed: items that went through the model in this call.
        n_truncated: texts cut at the model's maximum length (all N items, cached or not).
        seconds_model: time spent in ``adapter.forward``.
        seconds_total: wall time of the call.
        store_events: problems the store found and repaired (corrupt / partial shards).
        sites: output name -> the site it was captured from.
        raw_bytes_estimate: the estimated bytes of the raw attention computed (0 if none).
    """

    features: dict[str, Any]
    keys: dict[str, str]
    poolings: dict[str, str] = field(default_factory=dict)
    n_forward_batches: int = 0
    n_items_computed: int = 0
    n_truncated: int = 0
    seconds_model: float = 0.0
    seconds_total: float = 0.0
    store_events: list[str] = field(default_factory=list)
    sites: dict[str, str] = field(default_factory=dict)
    raw_bytes_estimate: int = 0


def extract_features(
    adapter: Any,
    stimuli: Any,
    *,
    modality: str | None = None,
    sites: Sequence[str] | None = None,
    pooling: str | Mapping[str, Any] | None = None,
    attention: str | Sequence[str] | Mapping[str, Any] | None = None,
    store: ActivationStore | None = None,
    batch_size: int = 32,
    shard_size: int = 1024,
    progress: bool = True,
    bucket_by_length: bool = True,
    prefetch: bool = True,
    raw_attention_limit_bytes: int = DEFAULT_RAW_LIMIT_BYTES,
) -> ExtractionResult:
    """Features of ``sites`` for every item, computed in one pass and cached.

    Args:
        adapter: a loaded :class:`~vlprobe.models.base.ModelAdapter`.
        stimuli: the :class:`~vlprobe.data.stimuli.Stimuli` to run.
        modality: what to run: ``"image"`` / ``"text"`` (one tower) or ``"pair"`` (a fusion
            model on (image, text) items); None = :func:`vlprobe.modality.resolve_modality`.
            On a paired set, ``"image"`` runs each distinct image once (``image_id``) and
            gives every item its image's features.
        sites: sites to capture; None = every hidden-state layer of the tower + its embedding.
            Attention sites (``*.attn``) need methods (``attention`` / ``pooling`` dict).
        pooling: one method for all hidden-state sites, a dict site -> method, or None for
            the adapter's default (``adapter.pooling_for(modality)``); embedding / logits
            sites default to ``none``. In the dict, an attention site's value is one attention
            method or a list of them.
        attention: methods of the attention sites the ``pooling`` dict does not name:
            ``"reduce:<reducer>"`` or ``"raw"``, one or a list for every attention site, or a
            dict site -> method(s). Outputs are named ``"<site>@<reducer>"`` / ``"<site>@raw"``.
        store: the activation store (default: ``ActivationStore()`` under the cache dir).
        batch_size: items per forward pass.
        shard_size: items per shard (unit of resume; also bounds memory: one shard per
            output). With raw attention it shrinks so a shard's raw attention stays under
            :data:`~vlprobe.extract.attention.RAW_SHARD_BYTES`.
        progress: show a tqdm bar (items/s).
        bucket_by_length: sort texts by token count within each shard before batching.
        prefetch: prepare (decode / tokenize) the next batch in a background thread while
            the model runs on the current one.
        raw_attention_limit_bytes: refuse raw attention whose estimated size (float16 bytes,
            all raw sites and items) exceeds this.

    Returns:
        :class:`ExtractionResult`.

    Raises:
        ConfigError: modality mismatch, unknown site / pooling / attention method, an
            attention site without a method, raw attention over the limit.
        StoreError: the store could not complete an entry.

    Concurrency: the store locks of every key of the call are held from the cache check to
    the read-back (:meth:`ActivationStore.lock`), so a second process extracting the same
    keys waits, then finds them complete (no forward pass) and never deletes the first
    one's shards in flight.
    """
    with contextlib.ExitStack() as held:
        return _extract_holding(
            adapter, stimuli, held, modality=modality, sites=sites, pooling=pooling,
            attention=attention, store=store, batch_size=batch_size, shard_size=shard_size,
            progress=progress, bucket_by_length=bucket_by_length, prefetch=prefetch,
            raw_limit=raw_attention_limit_bytes,
        )


def _take(values: Any, index: np.ndarray) -> Any:
    """Rows ``index`` of an output (a dense array, or a RaggedArray copied item by item)."""
    if isinstance(values, RaggedArray):
        return RaggedArray.from_arrays([values[int(i)] for i in index], dtype=values.dtype)
    return values[index]


def _hidden_values(
    trace: Any, site: str, method: str, row_of: Any, tok_spans: Any
) -> np.ndarray:
    """Pooled ``[items, D]`` of a hidden-state site (span mode: one row per span item)."""
    if site not in trace.hidden:
        raise StoreError(f"the adapter did not capture site {site!r}")
    if method == "span":
        hid = trace.hidden[site]
        if hasattr(hid, "detach"):
            hid = hid.detach().float().cpu().numpy()
        # gather only each item's first / last token: [K, 2, D]
        ends = np.asarray(hid)[row_of[:, None], np.maximum(tok_spans, 0)]
        local = np.where(tok_spans < 0, -1, np.array([0, 1]))
        return pool_numpy(ends, "span", spans=local)
    tags, mask = tags_for_site(trace, site)
    pooled = pool_numpy(
        trace.hidden[site], method, attention_mask=mask, eos_index=trace.eos_index,
        modality_tags=tags,
    )
    return pooled if row_of is None else pooled[row_of]


def _fill(buffers: dict[str, Any], out: Output, value: Any, rel: np.ndarray, rows: int) -> None:
    """Put one batch's ``value`` of ``out`` at rows ``rel`` of its shard buffer."""
    if len(value) != len(rel):
        raise StoreError(f"output {out.name!r}: {len(value)} rows for a batch of {len(rel)}")
    if out.kind == "ragged":
        buf = buffers.setdefault(out.name, [None] * rows)
        for j, r in enumerate(rel.tolist()):
            buf[r] = value[j]
        return
    buf = buffers.get(out.name)
    if buf is None:
        buf = np.empty((rows, *np.shape(value)[1:]), dtype=np.float32)
        buffers[out.name] = buf
    buf[rel] = value


def _extract_holding(
    adapter: Any,
    stimuli: Any,
    held: contextlib.ExitStack,
    *,
    modality: str | None,
    sites: Sequence[str] | None,
    pooling: str | Mapping[str, Any] | None,
    attention: Any,
    store: ActivationStore | None,
    batch_size: int,
    shard_size: int,
    progress: bool,
    bucket_by_length: bool,
    prefetch: bool,
    raw_limit: int,
) -> ExtractionResult:
    """:func:`extract_features`; the store locks of its keys are entered on ``held`` as soon
    as the keys are known and released when the caller's ``with`` block ends."""
    t_start = time.perf_counter()
    if batch_size <= 0 or shard_size <= 0:
        raise ConfigError(f"batch_size ({batch_size}) and shard_size ({shard_size}) must be > 0")
    if raw_limit <= 0:
        raise ConfigError(f"raw_attention_limit_bytes must be > 0, got {raw_limit}")
    store = store if store is not None else ActivationStore()
    n_events_before = len(store.events)
    modality = resolve_modality(adapter, stimuli, modality)
    shared = stimuli.unique_images() if modality == "image" else None
    if shared is not None:  # a paired set: every image runs once, whatever its caption count
        view, inverse = shared
        result = extract_features(
            adapter, view, modality="image", sites=sites, pooling=pooling, attention=attention,
            store=store, batch_size=batch_size, shard_size=shard_size, progress=progress,
            bucket_by_length=bucket_by_length, prefetch=prefetch,
            raw_attention_limit_bytes=raw_limit,
        )
        result.features = {name: _take(arr, inverse) for name, arr in result.features.items()}
        result.seconds_total = time.perf_counter() - t_start
        return result
    outputs = resolve_outputs(adapter, modality, sites, pooling, attention)
    n_items = len(stimuli)
    span_mode = any(o.method == "span" for o in outputs)
    span_chars = _span_chars(stimuli, modality) if span_mode else None
    vision_cls = bool(getattr(adapter, "vision_class_token", True))

    key_dicts = _key_dicts(adapter, stimuli, modality, outputs)
    keys = {name: hash_key(kd) for name, kd in key_dicts.items()}
    held.enter_context(store.lock(keys.values()))  # every key of the call, taken at once

    # -- what is cached? ---------------------------------------------------------------
    def load(out: Output, **kw: Any) -> Any:
        read = store.load_ragged if out.kind == "ragged" else store.load
        return read(keys[out.name], **kw)

    features: dict[str, Any] = {}
    todo: dict[str, set[int]] = {}  # output name -> shard indexes to compute
    layout: dict[str, int] = {}
    for out in outputs:
        arr = load(out)
        if arr is not None:
            features[out.name] = arr
            continue
        meta = store.meta(keys[out.name])
        # keep the shard size of an interrupted entry so its committed shards can be reused
        if meta is not None and not meta.get("complete") and meta.get("n_items") == n_items:
            layout[out.name] = int(meta["shard_size"])
    # one layout for all outputs of this pass (one forward per shard captures every site)
    sizes = set(layout.values())
    eff_shard = sizes.pop() if len(sizes) == 1 else shard_size
    n_batches = n_computed = 0
    seconds_model = 0.0
    raw_sites = [o.site for o in outputs if o.method == RAW and o.name not in features]
    raw_bytes = 0
    if raw_sites:  # size raw attention before computing any of it
        per_item, seconds_model = probe_raw_bytes(adapter, stimuli, modality, raw_sites,
                                                    vision_cls)
        n_batches += 1
        raw_bytes = int(per_item.sum())
        if raw_bytes > raw_limit:
            raise over_limit_error(raw_bytes, raw_limit, raw_sites, n_items)
        eff_shard = min(eff_shard, raw_shard_size(per_item, shard_size))
    for out in outputs:
        if out.name in features:
            continue
        key = keys[out.name]
        store.open_entry(key, key_dicts[out.name], n_items, eff_shard, kind=out.kind,
                         dtype=out.dtype)
        missing = store.missing_shards(key)
        if missing:
            todo[out.name] = set(missing)
        else:
            store.finalize(key)

    # -- compute missing shards ----------------------------------------------------------
    n_shards = n_shards_for(n_items, eff_shard)
    shards = sorted(set().union(*todo.values())) if todo else []
    n_to_compute = sum(
        shard_bounds(i, n_items, eff_shard)[1] - shard_bounds(i, n_items, eff_shard)[0]
        for i in shards
    )
    if shards:
        import torch
        from tqdm.auto import tqdm

        bar = tqdm(
            total=n_to_compute, unit="item", disable=not progress,
            desc=f"{getattr(adapter, 'family', 'model')} {stimuli.dataset}/{stimuli.split}",
        )
        # the batch plan of every shard up front (text: token counts for bucketing), so the
        # tokenizer is never used by two threads at once once batches are prefetched
        plan = []
        for index in shards:
            if index >= n_shards:
                raise StoreError(f"shard {index} out of range ({n_shards})")
            start, stop = shard_bounds(index, n_items, eff_shard)
            if span_mode:
                for rel, reps, row_of in _span_batches(
                    adapter, stimuli, start, stop, batch_size, bucket_by_length
                ):
                    plan.append((index, start, rel, reps, row_of))
                continue
            for rel in _batches(
                adapter, stimuli, modality, start, stop, batch_size, bucket_by_length
            ):
                plan.append((index, start, rel, rel, None))

        def prepare(job: tuple[int, int, np.ndarray, np.ndarray, Any]) -> Any:
            _, start, _, reps, _ = job
            return adapter.prepare(stimuli.payloads(modality, (start + reps).tolist()), modality)

        buffers: dict[str, Any] = {}
        filled = n_trunc_shard = 0
        try:
            for (index, start, rel, reps, row_of), batch in _prefetched(plan, prepare,
                                                                          prefetch):
                stop = shard_bounds(index, n_items, eff_shard)[1]
                shard_outputs = [o for o in outputs if index in todo.get(o.name, ())]
                shard_sites = list(dict.fromkeys(o.site for o in shard_outputs))
                for out in shard_outputs:  # token vectors some attention reducers read
                    if is_attention_site(out.site):
                        shard_sites += [s for s in companion_sites(out.site, [out.method])
                                        if s not in shard_sites]
                tok_spans = None
                if span_mode:
                    if getattr(batch, "offsets", None) is None:
                        raise ConfigError(
                            f"span pooling: model {getattr(adapter, 'family', '?')!r} gave no "
                            "token character offsets (it needs a fast tokenizer)"
                        )
                    tok_spans, cut = align_spans(batch.offsets, row_of, span_chars[start + rel])
                    n_trunc_shard += int(cut.sum())
                else:
                    n_trunc_shard += int(batch.n_truncated or 0)
                t0 = time.perf_counter()
                with torch.inference_mode():
                    trace = adapter.forward(batch, shard_sites)
                seconds_model += time.perf_counter() - t0
                n_batches += 1
                del batch
                values = _batch_values(trace, shard_outputs, row_of, tok_spans, vision_cls,
                                       _batch_items(stimuli, start + reps))
                del trace
                for out in shard_outputs:
                    _fill(buffers, out, values.pop(out.name), rel, stop - start)
                n_computed += len(rel)
                filled += len(rel)
                bar.update(len(rel))
                if filled == stop - start:  # shard done: commit it for every output
                    for out in shard_outputs:
                        store.write_shard(
                            keys[out.name], index, buffers.pop(out.name),
                            n_truncated=n_trunc_shard,
                        )
                    buffers = {}
                    filled = n_trunc_shard = 0
        finally:
            bar.close()
        for name in todo:
            store.finalize(keys[name])

    # -- read back ------------------------------------------------------------------------
    for out in outputs:
        if out.name not in features:
            # just written and hashed by finalize(): no need to hash it again
            arr = load(out, verify=False)
            if arr is None:
                raise StoreError(
                    f"store entry {keys[out.name]} of output {out.name!r} is not readable"
                )
            features[out.name] = arr
    meta0 = store.meta(keys[outputs[0].name]) or {}
    return ExtractionResult(
        features={o.name: features[o.name] for o in outputs},
        keys=keys,
        poolings={o.name: o.method for o in outputs},
        n_forward_batches=n_batches,
        n_items_computed=n_computed,
        n_truncated=int(meta0.get("n_truncated", 0)),
        seconds_model=seconds_model,
        seconds_total=time.perf_counter() - t_start,
        store_events=store.events[n_events_before:],
        sites={o.name: o.site for o in outputs},
        raw_bytes_estimate=raw_bytes,
    )


def _batch_items(stimuli: Any, index: np.ndarray) -> dict[str, list[Any]]:
    """The descriptors (and ids) of the items behind a batch's rows, for attention reducers
    that read per-item context (``ctx.items``)."""
    rows = [int(i) for i in index]
    out = {name: [values[i] for i in rows] for name, values in stimuli.descriptors.items()}
    out["id"] = [stimuli.ids[i] for i in rows]
    return out


def _batch_values(
    trace: Any, outputs: list[Output], row_of: Any, tok_spans: Any, vision_cls: bool,
    items: dict[str, list[Any]] | None = None,
) -> dict[str, Any]:
    """Output name -> this batch's values (one row / item per batch item; span mode: per
    span item). Each attention site is read once for all of its methods; ``items``: the
    batch rows' descriptors (:func:`_batch_items`)."""
    values: dict[str, Any] = {}
    attn_methods: dict[str, list[Output]] = {}
    for out in outputs:
        if is_attention_site(out.site):
            attn_methods.setdefault(out.site, []).append(out)
        else:
            values[out.name] = _hidden_values(trace, out.site, out.method, row_of, tok_spans)
    for site, outs in attn_methods.items():
        if site not in trace.attentions:
            raise StoreError(f"the adapter did not capture attention site {site!r}")
        got = batch_values(trace, site, [o.method for o in outs], vision_cls, items)
        for out in outs:
            value = got[out.method]
            if row_of is not None:  # span mode: one text row -> its items
                value = [value[r] for r in row_of] if isinstance(value, list) else value[row_of]
            values[out.name] = value
    return values

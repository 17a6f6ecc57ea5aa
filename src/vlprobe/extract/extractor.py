"""Run a model over stimuli once and cache every requested site's pooled activations.

:func:`extract_features` cuts the N items into shards of ``shard_size`` rows. For each shard
that some requested site still misses, it runs ONE forward pass per batch capturing all those
sites, pools each site's output to ``[B, D]``, fills a per-site shard buffer and, when the
shard is done, writes it for every site (atomically; the sidecar is the commit marker).
Memory therefore holds at most one shard per site, whatever N is.

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

Attention sites (``*.attn``) are not cached in this version (they are ``[H, T, T]`` per
item, not a vector); asking for one is an error. Attention caching comes later.
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
from vlprobe.extract.keys import hash_key, make_key_dict, stimuli_identity
from vlprobe.extract.store import ActivationStore, n_shards_for, shard_bounds
from vlprobe.modality import check_sites_for, tags_for_site
from vlprobe.modality import resolve_modality as modality_rule
from vlprobe.pooling import check_pooling, grid_size, is_pooled_site, pool_numpy

log = logging.getLogger(__name__)


@dataclass
class ExtractionResult:
    """What :func:`extract_features` did.

    Attributes:
        features: site -> ``[N, D]`` float32 (memory-mapped copy-on-write from the store).
        keys: site -> store key.
        poolings: site -> pooling method used.
        n_forward_batches: forward passes run (0 when everything was cached).
        n_items_computed: items that went through the model in this call.
        n_truncated: texts cut at the model's maximum length (all N items, cached or not).
        seconds_model: time spent in ``adapter.forward``.
        seconds_total: wall time of the call.
        store_events: problems the store found and repaired (corrupt / partial shards).
    """

    features: dict[str, np.ndarray]
    keys: dict[str, str]
    poolings: dict[str, str] = field(default_factory=dict)
    n_forward_batches: int = 0
    n_items_computed: int = 0
    n_truncated: int = 0
    seconds_model: float = 0.0
    seconds_total: float = 0.0
    store_events: list[str] = field(default_factory=list)


def resolve_modality(adapter: Any, stimuli: Any, modality: str | None) -> str:
    """The modality to run (:func:`vlprobe.modality.resolve_modality` on this model and data)."""
    return modality_rule(
        adapter.modalities, stimuli.modalities, modality,
        model=getattr(adapter, "family", type(adapter).__name__), dataset=stimuli.dataset,
    )


def resolve_sites(adapter: Any, modality: str, sites: Sequence[str] | None) -> list[str]:
    """Requested sites (default: every layer of the tower plus its embedding site)."""
    if sites is None:
        out = list(adapter.layer_sites(modality))
        emb = adapter.embedding_site(modality)
        if emb in adapter.sites() and emb not in out:
            out.append(emb)
    else:
        if isinstance(sites, str):
            sites = [sites]
        out = list(dict.fromkeys(sites))
    if not out:
        raise ConfigError("no sites to extract")
    adapter.check_sites(out)
    attn = [s for s in out if s.endswith(".attn")]
    if attn:
        raise ConfigError(
            f"attention sites are not cached by the extractor yet ({', '.join(attn[:3])}); "
            "request hidden-state, embedding or logits sites"
        )
    check_sites_for(modality, out, getattr(adapter, "family", "model"))
    return out


def resolve_pooling(
    adapter: Any,
    sites: Sequence[str],
    pooling: str | Mapping[str, str] | None,
    modality: str | None = None,
) -> dict[str, str]:
    """Pooling per site.

    A string (or None = the adapter's default for the tower, ``adapter.pooling_for(modality)``
    / ``adapter.default_pooling``) applies to hidden-state sites; embedding / logits sites
    (already ``[B, D]``) get ``"none"``. A dict sets sites explicitly; sites it does not name
    get the defaults. ``grid<g>`` (e.g. ``grid7``, a ``g x g`` spatial map stored as
    ``[N, C*g*g]``) is accepted for image towers only.
    """
    default = None
    if modality is not None and hasattr(adapter, "pooling_for"):
        default = adapter.pooling_for(modality)
    default = default or getattr(adapter, "default_pooling", None) or "mean"
    explicit: dict[str, str] = {}
    if isinstance(pooling, Mapping):
        unknown = sorted(set(pooling) - set(sites))
        if unknown:
            raise ConfigError(f"pooling given for site(s) not requested: {', '.join(unknown)}")
        explicit = dict(pooling)
    elif pooling is not None:
        default = pooling
    out = {}
    for site in sites:
        method = explicit.get(site) or ("none" if is_pooled_site(site) else default)
        try:
            check_pooling(method)
        except ConfigError as exc:
            raise ConfigError(f"site {site!r}: {exc}") from None
        if grid_size(method) is not None and modality == "text":
            raise ConfigError(
                f"pooling {method!r} (a spatial grid) applies to image feature maps / patch "
                f"tokens, not to the text tower (site {site!r})"
            )
        out[site] = method
    return out


def _key_dicts(
    adapter: Any, stimuli: Any, modality: str, poolings: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """site -> store key dict of one extraction (the sites of ``poolings``, in order)."""
    ident = adapter.identity()
    stim_ident = stimuli_identity(stimuli)
    return {
        site: make_key_dict(ident, stim_ident, modality=modality, site=site, pooling=method)
        for site, method in poolings.items()
    }


def feature_keys(
    adapter: Any,
    stimuli: Any,
    *,
    modality: str | None = None,
    sites: Sequence[str] | None = None,
    pooling: str | Mapping[str, str] | None = None,
) -> dict[str, str]:
    """site -> the store key that :func:`extract_features` with the same arguments reads or
    writes, computed without touching the store or running the model (a paired set's image
    side is keyed on its distinct images, as extraction does)."""
    modality = resolve_modality(adapter, stimuli, modality)
    shared = stimuli.unique_images() if modality == "image" else None
    if shared is not None:
        stimuli = shared[0]
    site_list = resolve_sites(adapter, modality, sites)
    poolings = resolve_pooling(adapter, site_list, pooling, modality)
    return {s: hash_key(kd) for s, kd in _key_dicts(adapter, stimuli, modality, poolings).items()}


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


def extract_features(
    adapter: Any,
    stimuli: Any,
    *,
    modality: str | None = None,
    sites: Sequence[str] | None = None,
    pooling: str | Mapping[str, str] | None = None,
    store: ActivationStore | None = None,
    batch_size: int = 32,
    shard_size: int = 1024,
    progress: bool = True,
    bucket_by_length: bool = True,
    prefetch: bool = True,
) -> ExtractionResult:
    """Pooled ``[N, D]`` features of ``sites`` for every item, computed once and cached.

    Args:
        adapter: a loaded :class:`~vlprobe.models.base.ModelAdapter`.
        stimuli: the :class:`~vlprobe.data.stimuli.Stimuli` to run.
        modality: what to run: ``"image"`` / ``"text"`` (one tower) or ``"pair"`` (a fusion
            model on (image, text) items); None = :func:`vlprobe.modality.resolve_modality`.
            On a paired set, ``"image"`` runs each distinct image once (``image_id``) and
            gives every item its image's features.
        sites: sites to capture; None = every hidden-state layer of the tower + its embedding.
            Attention sites are not supported yet (ConfigError).
        pooling: one method for all hidden-state sites, a dict site -> method, or None for
            the adapter's default (``adapter.pooling_for(modality)``); embedding / logits
            sites default to ``none``.
        store: the activation store (default: ``ActivationStore()`` under the cache dir).
        batch_size: items per forward pass.
        shard_size: items per shard (unit of resume; also bounds memory: one shard per site).
        progress: show a tqdm bar (items/s).
        bucket_by_length: sort texts by token count within each shard before batching.
        prefetch: prepare (decode / tokenize) the next batch in a background thread while
            the model runs on the current one.

    Returns:
        :class:`ExtractionResult`.

    Raises:
        ConfigError: modality mismatch, unknown / attention site, unknown pooling.
        StoreError: the store could not complete an entry.

    Concurrency: the store locks of every key of the call are held from the cache check to
    the read-back (:meth:`ActivationStore.lock`), so a second process extracting the same
    keys waits, then finds them complete (no forward pass) and never deletes the first
    one's shards in flight.
    """
    with contextlib.ExitStack() as held:
        return _extract_holding(
            adapter, stimuli, held, modality=modality, sites=sites, pooling=pooling,
            store=store, batch_size=batch_size, shard_size=shard_size, progress=progress,
            bucket_by_length=bucket_by_length, prefetch=prefetch,
        )


def _extract_holding(
    adapter: Any,
    stimuli: Any,
    held: contextlib.ExitStack,
    *,
    modality: str | None,
    sites: Sequence[str] | None,
    pooling: str | Mapping[str, str] | None,
    store: ActivationStore | None,
    batch_size: int,
    shard_size: int,
    progress: bool,
    bucket_by_length: bool,
    prefetch: bool,
) -> ExtractionResult:
    """:func:`extract_features`; the store locks of its keys are entered on ``held`` as soon
    as the keys are known and released when the caller's ``with`` block ends."""
    t_start = time.perf_counter()
    if batch_size <= 0 or shard_size <= 0:
        raise ConfigError(f"batch_size ({batch_size}) and shard_size ({shard_size}) must be > 0")
    store = store if store is not None else ActivationStore()
    n_events_before = len(store.events)
    modality = resolve_modality(adapter, stimuli, modality)
    shared = stimuli.unique_images() if modality == "image" else None
    if shared is not None:  # a paired set: every image runs once, whatever its caption count
        view, inverse = shared
        result = extract_features(
            adapter, view, modality="image", sites=sites, pooling=pooling, store=store,
            batch_size=batch_size, shard_size=shard_size, progress=progress,
            bucket_by_length=bucket_by_length, prefetch=prefetch,
        )
        result.features = {site: arr[inverse] for site, arr in result.features.items()}
        result.seconds_total = time.perf_counter() - t_start
        return result
    site_list = resolve_sites(adapter, modality, sites)
    poolings = resolve_pooling(adapter, site_list, pooling, modality)
    n_items = len(stimuli)
    span_mode = "span" in poolings.values()
    span_chars = _span_chars(stimuli, modality) if span_mode else None

    key_dicts = _key_dicts(adapter, stimuli, modality, poolings)
    keys = {site: hash_key(kd) for site, kd in key_dicts.items()}
    held.enter_context(store.lock(keys.values()))

    # -- what is cached? ---------------------------------------------------------------
    features: dict[str, np.ndarray] = {}
    todo: dict[str, set[int]] = {}  # site -> shard indexes to compute
    layout: dict[str, int] = {}
    for site in site_list:
        key = keys[site]
        arr = store.load(key)
        if arr is not None:
            features[site] = arr
            continue
        meta = store.meta(key)
        # keep the shard size of an interrupted entry so its committed shards can be reused
        if meta is not None and not meta.get("complete") and meta.get("n_items") == n_items:
            layout[site] = int(meta["shard_size"])
    # one layout for all sites of this pass (one forward per shard captures every site)
    sizes = set(layout.values())
    eff_shard = sizes.pop() if len(sizes) == 1 else shard_size
    for site in site_list:
        if site in features:
            continue
        store.open_entry(keys[site], key_dicts[site], n_items, eff_shard)
        missing = store.missing_shards(keys[site])
        if missing:
            todo[site] = set(missing)
        else:
            store.finalize(keys[site])

    # -- compute missing shards ----------------------------------------------------------
    n_shards = n_shards_for(n_items, eff_shard)
    shards = sorted(set().union(*todo.values())) if todo else []
    n_to_compute = sum(
        shard_bounds(i, n_items, eff_shard)[1] - shard_bounds(i, n_items, eff_shard)[0]
        for i in shards
    )
    n_batches = n_computed = 0
    seconds_model = 0.0
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

        buffers: dict[str, np.ndarray] = {}
        filled = n_trunc_shard = 0
        try:
            for (index, start, rel, _, row_of), batch in _prefetched(plan, prepare, prefetch):
                stop = shard_bounds(index, n_items, eff_shard)[1]
                shard_sites = [s for s in site_list if index in todo.get(s, ())]
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
                for site in shard_sites:
                    if site not in trace.hidden:
                        raise StoreError(
                            f"adapter {getattr(adapter, 'family', '?')!r} did not capture "
                            f"site {site!r}"
                        )
                    if poolings[site] == "span":
                        hid = trace.hidden[site]
                        if hasattr(hid, "detach"):
                            hid = hid.detach().float().cpu().numpy()
                        # gather only each item's first / last token: [K, 2, D]
                        ends = np.asarray(hid)[row_of[:, None], np.maximum(tok_spans, 0)]
                        local = np.where(tok_spans < 0, -1, np.array([0, 1]))
                        pooled = pool_numpy(ends, "span", spans=local)
                    else:
                        tags, mask = tags_for_site(trace, site)
                        pooled = pool_numpy(
                            trace.hidden[site], poolings[site], attention_mask=mask,
                            eos_index=trace.eos_index, modality_tags=tags,
                        )
                        if row_of is not None:  # span mode: one text row -> its items
                            pooled = pooled[row_of]
                    if pooled.shape[0] != len(rel):
                        raise StoreError(
                            f"site {site!r}: pooled {pooled.shape[0]} rows for a batch of "
                            f"{len(rel)}"
                        )
                    buf = buffers.get(site)
                    if buf is None:
                        buf = np.empty((stop - start, pooled.shape[1]), dtype=np.float32)
                        buffers[site] = buf
                    buf[rel] = pooled
                del trace
                n_computed += len(rel)
                filled += len(rel)
                bar.update(len(rel))
                if filled == stop - start:  # shard done: commit it for every site
                    for site in shard_sites:
                        store.write_shard(
                            keys[site], index, buffers[site], n_truncated=n_trunc_shard
                        )
                    buffers = {}
                    filled = n_trunc_shard = 0
        finally:
            bar.close()
        for site in todo:
            store.finalize(keys[site])

    # -- read back ------------------------------------------------------------------------
    n_truncated = 0
    for site in site_list:
        if site not in features:
            # just written and hashed by finalize(): no need to hash it again
            arr = store.load(keys[site], verify=False)
            if arr is None:
                raise StoreError(f"store entry {keys[site]} of site {site!r} is not readable")
            features[site] = arr
    meta0 = store.meta(keys[site_list[0]]) or {}
    n_truncated = int(meta0.get("n_truncated", 0))
    events = store.events[n_events_before:]
    return ExtractionResult(
        features={s: features[s] for s in site_list},
        keys=keys,
        poolings=poolings,
        n_forward_batches=n_batches,
        n_items_computed=n_computed,
        n_truncated=n_truncated,
        seconds_model=seconds_model,
        seconds_total=time.perf_counter() - t_start,
        store_events=events,
    )

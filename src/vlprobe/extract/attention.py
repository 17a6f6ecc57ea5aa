"""Attention sites in the single extraction pass: methods, output names, per-batch values and
the size estimate of raw attention.

Methods of an attention site (``*.attn``, ``[B, H, T_query, T_key]`` post-softmax):

- ``reduce:<name>``: a registered streaming reducer (:mod:`vlprobe.extract.reducers`,
  ``reducer_names()``): a small float32 block per item, stored as a dense entry
  ``[N, H, ...]`` (``reduce:entropy`` -> ``[N, H]``, ``reduce:mass`` -> ``[N, H, 3, 3]``);
- ``raw``: the attention itself, float16, one ``[H, Tq_i, Tk_i]`` array per item holding only
  the item's REAL query and key tokens (padding rows and columns cut away by the token tags),
  stored as a ragged entry; it comes with ``raw_tags``: float32 ``[Tq_i + Tk_i]`` per item,
  the tags (:mod:`vlprobe.modality`: special 0, text 1, image 2) of those query tokens then
  of those key tokens (:func:`split_raw_tags`).

Several methods can be asked of one site in one pass; each (site, method) is one store entry
(its key dict holds the site and the method as ``pooling``) and one output, named
:func:`attention_output` ``(site, method)``: ``"fusion.blocks.3.attn@entropy"``,
``"fusion.blocks.3.attn@raw"``, ``"fusion.blocks.3.attn@raw_tags"``.

Raw attention grows with ``N * H * T^2``; before computing any, the extractor estimates its
bytes (:func:`estimate_raw_bytes`) and refuses past a limit (``raw_attention_limit_bytes``),
and shrinks the shard size so that one shard's raw attention stays under
:data:`RAW_SHARD_BYTES` in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlprobe.errors import ConfigError
from vlprobe.extract.objects import object_context
from vlprobe.extract.reducers import (
    REDUCE_PREFIX,
    attention_context,
    check_reducer,
    feature_sites,
    needs_features,
    needs_objects,
    reduce_many,
    reducer_names,
    reducer_of,
)
from vlprobe.modality import TAG_PAD, TAG_TEXT

RAW = "raw"
RAW_TAGS = "raw_tags"
#: separator of a site and its method in an attention output name.
SEP = "@"
#: default refusal limit of raw attention (bytes) for one extraction call.
DEFAULT_RAW_LIMIT_BYTES = 2 * 10**9
#: raw attention of one shard (all raw sites) kept under this many bytes in memory.
RAW_SHARD_BYTES = 256 * 2**20


def is_attention_site(site: str) -> bool:
    """Whether ``site`` is an attention site (``*.attn``)."""
    return site.endswith(".attn")


def attention_output(site: str, method: str) -> str:
    """The output / feature name of ``method`` on attention ``site``:
    ``("fusion.blocks.3.attn", "reduce:entropy")`` -> ``"fusion.blocks.3.attn@entropy"``,
    ``"raw"`` -> ``"...@raw"``, ``"raw_tags"`` -> ``"...@raw_tags"``."""
    return f"{site}{SEP}{reducer_of(method) or method}"


def parse_output(name: str) -> tuple[str, str | None]:
    """``(site, method)`` of an output name; ``method`` is None for a hidden-state output
    (its name is the site). Inverse of :func:`attention_output`."""
    if SEP not in name:
        return name, None
    site, what = name.rsplit(SEP, 1)
    return site, what if what in (RAW, RAW_TAGS) else REDUCE_PREFIX + what


def check_method(method: Any, site: str) -> str:
    """``method`` if it is ``raw`` or ``reduce:<registered reducer>``, else a ConfigError
    naming the site and the registered reducers."""
    if method == RAW:
        return method
    name = reducer_of(method)
    if name is not None:
        try:
            return REDUCE_PREFIX + check_reducer(name)
        except ConfigError as exc:
            raise ConfigError(f"attention site {site!r}: {exc}") from None
    hint = ""
    if isinstance(method, str) and method in reducer_names():
        hint = f" (did you mean {REDUCE_PREFIX + method!r}?)"
    raise ConfigError(
        f"attention site {site!r}: {method!r} is not an attention method{hint}; use "
        f"{REDUCE_PREFIX}<reducer> ({', '.join(REDUCE_PREFIX + r for r in reducer_names())}) "
        f"or {RAW!r}"
    )


def methods_of(value: Any, site: str) -> list[str]:
    """One method or a list of methods for ``site``, validated, duplicates dropped."""
    items = [value] if isinstance(value, str) else list(value or ())
    if not items:
        raise missing_methods(site)
    return list(dict.fromkeys(check_method(m, site) for m in items))


def missing_methods(site: str) -> ConfigError:
    """The error for an attention site requested without a method."""
    return ConfigError(
        f"attention site {site!r} needs a method: one or a list of "
        f"{', '.join(REDUCE_PREFIX + r for r in reducer_names())} or {RAW!r} (e.g. "
        f"attention=['{REDUCE_PREFIX}entropy'], or pooling={{'{site}': "
        f"['{REDUCE_PREFIX}mass', '{REDUCE_PREFIX}entropy']}})"
    )


def resolve_attention(
    sites: Sequence[str], from_pooling: Mapping[str, Any], attention: Any
) -> dict[str, list[str]]:
    """Methods per attention site: the site's ``pooling`` dict entry, else ``attention`` (a
    mapping site -> method(s), or method(s) for every attention site), else an error.

    Raises:
        ConfigError: an unknown method, an attention site without any, or ``attention``
            given for sites that were not requested / when no attention site was.
    """
    if attention is not None and not isinstance(attention, str) and len(attention) == 0:
        attention = None
    if isinstance(attention, Mapping):
        unknown = sorted(set(attention) - set(sites))
        if unknown:
            raise ConfigError(
                f"attention methods given for site(s) not requested: {', '.join(unknown)}"
            )
    elif attention is not None and not sites:
        raise ConfigError(
            f"attention methods {attention!r} were given but no attention site (*.attn) was "
            "requested; add the attention sites to `sites`"
        )
    out = {}
    for site in sites:
        if site in from_pooling:
            value = from_pooling[site]
        elif isinstance(attention, Mapping):
            value = attention.get(site)
        else:
            value = attention
        if value is None:
            raise missing_methods(site)
        out[site] = methods_of(value, site)
    return out


# -- per-batch values -----------------------------------------------------------------------
def batch_values(
    trace: Any, site: str, methods: Sequence[str], vision_class_token: bool = True,
    items: Mapping[str, Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """What ``methods`` give for the attention of ``site`` in one forward's ``trace``.

    ``items``: the batch items' stimuli descriptors ``{name: [value per row]}`` (plus
    ``"id"``), handed to the reducers as ``ctx.items``; reducers that read object
    memberships (``objects``) need ``boxes`` and ``image_size`` there.

    Returns method -> value: ``reduce:<r>``: float32 ``[B, H, ...]`` numpy; ``raw``: a list of
    B float16 ``[H, Tq_b, Tk_b]`` arrays of the real tokens only; ``raw_tags``: a list of B
    float32 ``[Tq_b + Tk_b]`` arrays (query tags, then key tags).
    """
    attn = trace.attentions.get(site)
    if attn is None:
        raise ConfigError(f"site {site!r} is not in the trace's attentions")
    ctx = attention_context(trace, site, tuple(attn.shape), vision_class_token)
    ctx.items = items
    reducers = [reducer_of(m) for m in methods if reducer_of(m) is not None]
    if any(needs_objects(r) for r in reducers):
        object_context(trace, site, ctx, items)
    if any(needs_features(r) for r in reducers):
        q_site, k_site = feature_sites(site)
        missing = [s for s in (q_site, k_site) if s not in trace.hidden]
        if missing:
            raise ConfigError(f"attention site {site!r}: the trace holds no {missing[0]!r}, "
                              "the token vectors its reducer needs")
        ctx.query_features = trace.hidden[q_site]
        ctx.key_features = trace.hidden[k_site]
    out: dict[str, Any] = {}
    if reducers:
        for name, value in reduce_many(reducers, attn, ctx).items():
            out[REDUCE_PREFIX + name] = value
    if RAW in methods or RAW_TAGS in methods:
        raw, tags = _real_tokens(attn, ctx)
        if RAW in methods:
            out[RAW] = raw
        if RAW_TAGS in methods:
            out[RAW_TAGS] = tags
    return out


def companion_sites(site: str, methods: Sequence[str]) -> list[str]:
    """Hidden-state sites a forward must also capture for ``methods`` of attention ``site``:
    the stem sites of reducers that read token vectors (:func:`feature_sites`), else none."""
    if not any(needs_features(reducer_of(m) or "") for m in methods):
        return []
    return list(dict.fromkeys(feature_sites(site)))


def _real_tokens(attn: Any, ctx: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per item: the attention of its real queries over its real keys (float16, cut on the
    attention's device before the copy) and the tags of those queries and keys."""
    import torch

    qt = torch.as_tensor(ctx.query_tags).cpu().long()
    kt = torch.as_tensor(ctx.key_tags).cpu().long()
    raw, tags = [], []
    for b in range(attn.shape[0]):
        q = torch.nonzero(qt[b] != TAG_PAD).flatten()
        k = torch.nonzero(kt[b] != TAG_PAD).flatten()
        item = attn[b].index_select(1, q.to(attn.device)).index_select(2, k.to(attn.device))
        raw.append(item.detach().to(torch.float16).cpu().numpy())
        tags.append(torch.cat([qt[b, q], kt[b, k]]).numpy().astype(np.float32))
    return raw, tags


def split_raw_tags(tags: np.ndarray, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(query_tags [Tq], key_tags [Tk])`` (int8) of one item's ``raw_tags`` entry and its
    raw attention ``[H, Tq, Tk]``."""
    tq, tk = int(raw.shape[1]), int(raw.shape[2])
    if tags.shape != (tq + tk,):
        raise ConfigError(f"raw tags of shape {tags.shape} do not fit raw attention {raw.shape}")
    t = np.asarray(tags).astype(np.int8)
    return t[:tq], t[tq:]


# -- raw size estimate -------------------------------------------------------------------------
def estimate_raw_bytes(
    probe: Any, sites: Sequence[str], n_items: int, text_lengths: np.ndarray | None,
    vision_class_token: bool = True,
) -> np.ndarray:
    """``[N]`` estimated bytes of every item's raw attention over ``sites`` (float16).

    ``probe`` is the trace of ONE forward of item 0 with ``sites`` captured: it gives each
    site's head count and real query / key token counts. Other items differ from item 0 only
    by their text length (``text_lengths`` ``[N]``, capped at the model's maximum; None where
    the sequence holds no text), which changes a stream's count where that stream holds text
    tokens. (Image token counts are taken as item 0's; ViLT, whose patch count follows the
    image's aspect ratio, is therefore estimated approximately.)
    """
    total = np.zeros(n_items, dtype=np.float64)
    for site in sites:
        attn = probe.attentions[site]
        ctx = attention_context(probe, site, tuple(attn.shape), vision_class_token)
        heads = int(attn.shape[1])
        counts = []
        for tags in (ctx.query_tags, ctx.key_tags):
            t = np.asarray(tags)[0]
            real = float((t != TAG_PAD).sum())
            if text_lengths is not None and (t == TAG_TEXT).any():
                real = real + (text_lengths - text_lengths[0])
            counts.append(np.maximum(real, 1.0))
        total += heads * counts[0] * counts[1] * 2
    return total


def raw_shard_size(per_item: np.ndarray, shard_size: int) -> int:
    """The shard size to use with raw attention: at most ``shard_size``, and small enough that
    a shard of the largest items stays under :data:`RAW_SHARD_BYTES`."""
    biggest = float(np.max(per_item)) if len(per_item) else 0.0
    if biggest <= 0:
        return shard_size
    return int(max(1, min(shard_size, RAW_SHARD_BYTES // biggest)))


def over_limit_error(
    n_bytes: float, limit: int, sites: Sequence[str], n_items: int
) -> ConfigError:
    """The refusal of raw attention over the limit: names the estimated bytes and the option
    that raises the limit."""
    shown = ", ".join(sites[:4]) + (f" and {len(sites) - 4} more" if len(sites) > 4 else "")
    return ConfigError(
        f"raw attention of {shown} for {n_items} items would take about {int(n_bytes):,} "
        f"bytes ({n_bytes / 1e9:.2f} GB) on disk, over the limit of {limit:,} bytes "
        f"({limit / 1e9:.2f} GB). Raise the limit with extract_features("
        f"raw_attention_limit_bytes=...) or the run config's extraction.raw_attention_limit_gb, "
        f"or use streaming reducers ({REDUCE_PREFIX}<name>), fewer sites or fewer items"
    )


def block_sites(site: str) -> list[str]:
    """Hidden-state sites that may hold the output of the block an attention site belongs
    to, most specific first: ``fusion.blocks.3.attn`` -> ``fusion.blocks.3``;
    ``cross.blocks.1.t2v.attn`` -> ``cross.blocks.1.text`` (a two-stream cross layer's output
    of the query stream), then ``text.blocks.1`` (a captioner's decoder block);
    ``cross.blocks.1.vision.attn`` -> ``cross.blocks.1.vision``. The first one a model has in
    its layer sites gives the attention's catalogue layer index (block ``i`` -> ``i + 1``)."""
    base = site.removesuffix(".attn")
    parts = base.split(".")
    out = [base]
    if len(parts) == 4 and parts[0] == "cross" and parts[3] in ("t2v", "v2t"):
        query = "text" if parts[3] == "t2v" else "vision"
        out = [f"cross.blocks.{parts[2]}.{query}", f"{query}.blocks.{parts[2]}"]
    return out


def attention_layer_index(adapter: Any, site: str) -> int | None:
    """Catalogue layer index of the block attention ``site`` belongs to (see
    :func:`block_sites`), or None."""
    for candidate in block_sites(site):
        index = adapter.layer_index(candidate)
        if index is not None:
            return index
    return None


def probe_raw_bytes(
    adapter: Any, stimuli: Any, modality: str, sites: list[str], vision_cls: bool
) -> tuple[np.ndarray, float]:
    """``([N] estimated raw bytes per item, seconds of the probe forward)``: one forward of
    item 0 capturing ``sites`` (heads, real token counts) + the text lengths of all items."""
    import time

    import torch

    n = len(stimuli)
    batch = adapter.prepare(stimuli.payloads(modality, [0]), modality)
    t0 = time.perf_counter()
    with torch.inference_mode():
        probe = adapter.forward(batch, sites)
    seconds = time.perf_counter() - t0
    lengths = None
    if modality in ("text", "pair"):
        try:
            lengths = np.asarray(
                adapter.text_lengths(stimuli.payloads("text", range(n))), dtype=np.float64
            )
        except NotImplementedError:
            lengths = None
        max_len = adapter.max_text_length() if lengths is not None else None
        if max_len:
            lengths = np.minimum(lengths, max_len)
    return estimate_raw_bytes(probe, sites, n, lengths, vision_cls), seconds

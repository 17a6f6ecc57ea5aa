"""Streaming attention reducers: small per-item, per-head statistics of an attention map,
computed inside the single extraction pass so that no ``[H, T, T]`` tensor is ever stored.

Convention (SCIENCE.md): attention is ``[B, H, T_query, T_key]`` post-softmax, and "A attends
to B" means query in A, key in B. Tokens are selected by their modality tags
(:mod:`vlprobe.modality`: pad -1, special 0, text 1, image 2), never by offset; padded queries
and keys never enter a statistic.

A reducer is registered under a name and maps ``(attn, ctx)`` to a float32 array ``[B, H, ...]``
(one small block per item). The extractor stores it under the key of ``(site, reducer)`` like
a pooled site (pooling name ``reduce:<name>``). Register new ones with :func:`register_reducer`.

Built-in reducers (``Q`` = query tokens of a class, ``K`` = key tokens of a class):

- ``mass``: ``[B, H, 3, 3]``; entry ``[q, k]`` = mean over queries of class ``q`` (special /
  text / image) of the attention mass on keys of class ``k``. NaN where an item has no query
  of that class. Row sums over ``k`` are 1 for rows with queries.
- ``cls_mass``: ``[B, H, 3]``: the mass that query 0 (``[CLS]``) puts on special / text /
  image keys (seed 001 eq. 1 uses the text and image entries).
- ``max_image_to_text``: ``[B, H]``: the largest mass any image query puts on text keys (seed
  001 eq. 2 thresholds it at 0.5). NaN where an item has no image query.
- ``entropy``: ``[B, H]``: mean over real queries of the row entropy (nats) over real keys.
  A uniform row over ``n`` keys has entropy ``log n``.
- ``distance``: ``[B, H]``: mean attention distance between image patches (ViT's "attention
  distance", Dosovitskiy et al. 2021), in patch units: image queries, image keys renormalised,
  patches laid out row-major on the square grid of the item's image tokens.
- ``similarity``: ``[B, H, 2]``: attention vs semantic similarity of image tokens (seed 003):
  ``[..., 0]`` = mean over image queries of the attention-weighted cosine similarity between
  the query's and each image key's layer-0 vector (the model's own embedding of each region /
  patch, the stream's ``*.stem``), keys renormalised over the image keys other than the query
  itself; ``[..., 1]`` = the same with uniform weights (the baseline a head that ignores
  similarity gets). NaN where an item has fewer than two image tokens. It reads token vectors,
  so the extractor captures the stem sites of its attention site in the same forward
  (:func:`feature_sites`); ``ctx.query_features`` / ``ctx.key_features`` carry them.
- ``objects``: ``[B, H, 5]``: attention between image tokens of the same annotated object
  (seed 003; :mod:`vlprobe.extract.objects`): observed, uniform and distance-matched
  same-object mass, mean weight per same-object / other pair. It reads per-item object boxes
  (``ctx.items``) joined with the trace's token boxes into ``ctx.query_objects`` /
  ``ctx.key_objects`` (:func:`~vlprobe.extract.objects.object_context`), in the same forward.

What a reducer can read besides the attention (all ``[B, ...]`` in batch order): the token tags
(always); ``ctx.items``, the batch items' stimuli descriptors ``{name: [value per row]}`` plus
their ``"id"`` (the extractor gives them whenever it runs on stimuli); the layer-0 token
vectors (``needs_features=True``); the tokens' boxes and object memberships
(``needs_objects=True``). Reducers that ask for neither get neither and run unchanged.

Self-attention of a single-modality sequence (a ViT block, a text block) has no tags: every
real token then counts as image (vision stream) or text (text stream) except position 0 when
the model has a class token, which ``ctx`` marks special.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlprobe.errors import ConfigError
from vlprobe.modality import TAG_IMAGE, TAG_PAD, TAG_SPECIAL, TAG_TEXT

Reducer = Callable[[Any, "AttentionContext"], Any]
_REDUCERS: dict[str, tuple[Reducer, str]] = {}
_NEEDS_FEATURES: set[str] = set()
_NEEDS_OBJECTS: set[str] = set()
REDUCE_PREFIX = "reduce:"


@dataclass
class AttentionContext:
    """What a reducer knows about the tokens of one batch.

    Attributes:
        query_tags: ``[B, T_query]`` int tags of the query tokens (TAG_PAD for padding).
        key_tags: ``[B, T_key]`` int tags of the key tokens.
        cache: intermediate results shared by the reducers of one :func:`reduce_many` call.
    """

    query_tags: Any
    key_tags: Any
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: ``[B, T_query, D]`` / ``[B, T_key, D]`` layer-0 vectors of the query / key tokens, for
    #: reducers registered with ``needs_features`` (None otherwise).
    query_features: Any = None
    key_features: Any = None
    #: the batch items' stimuli descriptors, ``{name: [value of row 0, row 1, ...]}`` plus
    #: ``"id"`` (None where the caller has no stimuli, e.g. a bare trace).
    items: Any = None
    #: ``[B, T, 4]`` token boxes in the image (NaN at non-image tokens) and ``[B, T, O]`` bool
    #: object membership of the query / key tokens, for reducers registered with
    #: ``needs_objects`` (:func:`vlprobe.extract.objects.object_context`; None otherwise).
    #: Query and key fields are the same tensors for a self-attention.
    query_boxes: Any = None
    key_boxes: Any = None
    query_objects: Any = None
    key_objects: Any = None


def register_reducer(
    name: str, doc: str = "", needs_features: bool = False, needs_objects: bool = False
) -> Callable[[Reducer], Reducer]:
    """Decorator: register ``fn(attn [B, H, Tq, Tk] torch, ctx) -> [B, H, ...]`` as ``name``.
    ``needs_features``: the reducer reads ``ctx.query_features`` / ``ctx.key_features`` (the
    extractor then captures the stem sites of :func:`feature_sites` in the same forward).
    ``needs_objects``: it reads ``ctx.query_objects`` / ``key_objects`` / ``query_boxes`` /
    ``key_boxes`` (filled from the items' object boxes and the trace's token boxes)."""

    def wrap(fn: Reducer) -> Reducer:
        if name in _REDUCERS:
            raise ValueError(f"attention reducer {name!r} is registered twice")
        _REDUCERS[name] = (fn, doc or (fn.__doc__ or "").strip().splitlines()[0])
        if needs_features:
            _NEEDS_FEATURES.add(name)
        if needs_objects:
            _NEEDS_OBJECTS.add(name)
        return fn

    return wrap


def needs_features(name: str) -> bool:
    """Whether reducer ``name`` reads token vectors (``ctx.query_features``)."""
    return name in _NEEDS_FEATURES


def needs_objects(name: str) -> bool:
    """Whether reducer ``name`` reads object memberships (``ctx.query_objects``)."""
    return name in _NEEDS_OBJECTS


def feature_sites(site: str) -> tuple[str, str]:
    """``(query site, key site)``: the layer-0 sites holding the token vectors of attention
    ``site``'s queries and keys: ``fusion.blocks.3.attn`` -> ``fusion.stem`` twice;
    ``vision.blocks.1.attn`` / ``cross.blocks.1.vision.attn`` -> ``vision.stem``;
    ``cross.blocks.1.v2t.attn`` -> (``vision.stem``, ``text.stem``), ``t2v`` the reverse."""
    from vlprobe.modality import site_stream

    stream = site_stream(site)
    parts = site.split(".")
    if stream == "cross" and len(parts) >= 5:
        kind = parts[3]
        pairs = {"t2v": ("text", "vision"), "v2t": ("vision", "text"),
                 "text": ("text", "text"), "vision": ("vision", "vision")}
        if kind not in pairs:
            raise ConfigError(f"attention site {site!r}: no token vectors are known for it")
        q, k = pairs[kind]
        return f"{q}.stem", f"{k}.stem"
    return f"{stream}.stem", f"{stream}.stem"


def reducer_names() -> list[str]:
    """Registered reducer names."""
    return sorted(_REDUCERS)


def reducer_of(method: str) -> str | None:
    """``"entropy"`` for the pooling name ``"reduce:entropy"``, None for other poolings."""
    if isinstance(method, str) and method.startswith(REDUCE_PREFIX):
        return method[len(REDUCE_PREFIX):]
    return None


def check_reducer(name: str) -> str:
    """``name`` if registered, else a ConfigError with a suggestion."""
    if name not in _REDUCERS:
        import difflib

        close = difflib.get_close_matches(name, list(_REDUCERS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown attention reducer {name!r}.{hint} Registered: {', '.join(reducer_names())}"
        )
    return name


def reduce_attention(name: str, attn: Any, ctx: AttentionContext) -> np.ndarray:
    """Run reducer ``name`` on ``attn`` ``[B, H, Tq, Tk]``; returns float32 ``[B, H, ...]``."""
    return reduce_many([name], attn, ctx)[name]


def reduce_many(names: Any, attn: Any, ctx: AttentionContext) -> dict[str, np.ndarray]:
    """Run several reducers on one attention map ``[B, H, Tq, Tk]`` (on its own device; the
    reducers compute in float32): ``name -> float32 [B, H, ...]`` numpy arrays. Padding is
    zeroed once and intermediate results (each query's mass per key class) are shared."""
    import torch

    fns = {name: _REDUCERS[check_reducer(name)][0] for name in names}
    a = torch.as_tensor(attn)
    if a.ndim != 4:
        raise ConfigError(f"attention must be [B, H, T_query, T_key], got {tuple(a.shape)}")
    a = a.detach().float()
    qt = torch.as_tensor(ctx.query_tags).to(a.device).long()
    kt = torch.as_tensor(ctx.key_tags).to(a.device).long()
    if qt.shape != (a.shape[0], a.shape[2]) or kt.shape != (a.shape[0], a.shape[3]):
        raise ConfigError(
            f"token tags {tuple(qt.shape)} / {tuple(kt.shape)} do not match attention "
            f"{tuple(a.shape)} ([B, T_query] / [B, T_key] expected)"
        )
    # padded keys and queries never count: zero them (NaN / Inf there must not spread)
    real = (qt != TAG_PAD)[:, None, :, None] & (kt != TAG_PAD)[:, None, None, :]
    a = torch.where(real, a, torch.zeros((), dtype=a.dtype, device=a.device))
    shared = AttentionContext(qt, kt, query_features=ctx.query_features,
                              key_features=ctx.key_features, items=ctx.items,
                              query_boxes=ctx.query_boxes, key_boxes=ctx.key_boxes,
                              query_objects=ctx.query_objects, key_objects=ctx.key_objects)
    missing = [n for n in fns if needs_features(n) and ctx.key_features is None]
    if missing:
        raise ConfigError(f"attention reducer(s) {', '.join(missing)} need the token vectors "
                          "of the attention's queries and keys (ctx.query_features / "
                          "key_features), which were not given")
    missing = [n for n in fns if needs_objects(n) and ctx.key_objects is None]
    if missing:
        raise ConfigError(f"attention reducer(s) {', '.join(missing)} need the tokens' object "
                          "memberships (ctx.query_objects / key_objects, from "
                          "vlprobe.extract.objects.object_context), which were not given")
    out = {}
    for name, fn in fns.items():
        value = fn(a, shared)
        out[name] = np.ascontiguousarray(value.detach().cpu().numpy(), dtype=np.float32)
    return out


_CLASSES = (TAG_SPECIAL, TAG_TEXT, TAG_IMAGE)


def _one_hot(tags: Any, dtype: Any) -> Any:
    """``[B, T, 3]``: 1 where a token is special / text / image (padding: all 0)."""
    import torch

    return torch.stack([tags == c for c in _CLASSES], dim=-1).to(dtype)


def _class_mass(a: Any, ctx: AttentionContext) -> Any:
    """``[B, H, Tq, 3]``: each query's attention mass on special / text / image keys: one
    batched matmul over the keys, cached in ``ctx`` for the other reducers of the call."""
    if "class_mass" not in ctx.cache:
        ctx.cache["class_mass"] = a @ _one_hot(ctx.key_tags, a.dtype)[:, None]
    return ctx.cache["class_mass"]


def _mean_over(values: Any, select: Any) -> Any:
    """Mean of ``values [B, H, Tq]`` over the queries where ``select [B, Tq]``; NaN if none."""
    import torch

    w = select[:, None, :].to(values.dtype)
    n = w.sum(-1)
    return torch.where(n > 0, (values * w).sum(-1) / n.clamp(min=1), torch.nan)


@register_reducer("mass", "[B, H, 3, 3] mean mass from query class to key class")
def _mass(a: Any, ctx: AttentionContext) -> Any:
    import torch

    per_key = _class_mass(a, ctx)  # [B, H, Tq, key class]
    onehot_q = _one_hot(ctx.query_tags, a.dtype)  # [B, Tq, query class]
    total = onehot_q.transpose(1, 2)[:, None] @ per_key  # [B, H, query class, key class]
    n = onehot_q.sum(1)[:, None, :, None]  # queries per class [B, 1, 3, 1]
    return torch.where(n > 0, total / n.clamp(min=1), torch.nan)


@register_reducer("cls_mass", "[B, H, 3] mass of query 0 ([CLS]) on special/text/image keys")
def _cls_mass(a: Any, ctx: AttentionContext) -> Any:
    return _class_mass(a, ctx)[:, :, 0, :]


@register_reducer("max_image_to_text", "[B, H] max mass of an image query on text keys")
def _max_image_to_text(a: Any, ctx: AttentionContext) -> Any:
    import torch

    mass = _class_mass(a, ctx)[..., _CLASSES.index(TAG_TEXT)]  # [B, H, Tq]
    is_image = (ctx.query_tags == TAG_IMAGE)[:, None, :]
    best = torch.where(is_image, mass, torch.full_like(mass, -1.0)).amax(-1)
    return torch.where(best < 0, torch.nan, best)


@register_reducer("entropy", "[B, H] mean row entropy (nats) over real queries and keys")
def _entropy(a: Any, ctx: AttentionContext) -> Any:
    import torch

    # entropy of the row renormalised over real keys, p = a / s, without dividing the map:
    # -sum p log p = log s + sum(-a log a) / s  (entr(0) = 0)
    s = a.sum(-1).clamp(min=1e-12)
    h = torch.log(s) + torch.special.entr(a).sum(-1) / s
    return _mean_over(h, ctx.query_tags != TAG_PAD)


@register_reducer("distance", "[B, H] mean attention distance between image patches")
def _distance(a: Any, ctx: AttentionContext) -> Any:
    import torch

    qi = ctx.query_tags == TAG_IMAGE  # [B, Tq]
    ki = ctx.key_tags == TAG_IMAGE  # [B, Tk]
    n_q, n_k = qi.sum(-1), ki.sum(-1)
    side = n_k.double().sqrt().round().long()
    ok = (n_q > 0) & (n_q == n_k) & (side * side == n_k)  # a square grid of patches
    side = side.clamp(min=1)[:, None]
    # each patch's grid cell: its rank among the item's image tokens, row-major
    rq, rk = qi.long().cumsum(-1) - 1, ki.long().cumsum(-1) - 1
    dy = (rq // side)[:, :, None] - (rk // side)[:, None, :]
    dx = (rq % side)[:, :, None] - (rk % side)[:, None, :]
    pairs = (qi[:, :, None] & ki[:, None, :]).to(a.dtype)  # [B, Tq, Tk]
    dist = torch.sqrt((dx * dx + dy * dy).to(a.dtype)) * pairs  # patch units, 0 elsewhere
    on_image = _class_mass(a, ctx)[..., _CLASSES.index(TAG_IMAGE)]  # renormalise over these
    row = (a * dist[:, None]).sum(-1) / on_image.clamp(min=1e-12)
    out = _mean_over(row, qi)
    return torch.where(ok[:, None], out, torch.nan)


@register_reducer("similarity", "[B, H, 2] attention-weighted vs uniform cosine similarity "
                  "of image tokens' layer-0 vectors", needs_features=True)
def _similarity(a: Any, ctx: AttentionContext) -> Any:
    import torch

    qf = torch.nn.functional.normalize(torch.as_tensor(ctx.query_features).to(a).float(), dim=-1)
    kf = torch.nn.functional.normalize(torch.as_tensor(ctx.key_features).to(a).float(), dim=-1)
    sim = qf @ kf.transpose(1, 2)  # [B, Tq, Tk] cosine similarity
    qi = ctx.query_tags == TAG_IMAGE
    ki = ctx.key_tags == TAG_IMAGE
    pairs = qi[:, :, None] & ki[:, None, :]
    if a.shape[2] == a.shape[3] and ctx.query_features is ctx.key_features:
        pairs &= ~torch.eye(a.shape[2], dtype=torch.bool, device=a.device)  # not itself
    w = pairs.to(a.dtype)  # [B, Tq, Tk]
    on = (a * w[:, None]).sum(-1)  # attention on the other image keys [B, H, Tq]
    weighted = (a * (sim * w)[:, None]).sum(-1) / on.clamp(min=1e-12)
    uniform = (sim * w).sum(-1) / w.sum(-1).clamp(min=1)  # [B, Tq]
    has = w.sum(-1) > 0  # queries with another image key
    att = _mean_over(weighted, has)
    base = _mean_over(uniform[:, None, :].expand_as(weighted), has)
    return torch.stack([att, base], dim=-1)


def single_stream_tags(mask: Any, stream: str, has_cls: bool) -> Any:
    """Tags ``[B, T]`` for a single-modality sequence: every real token is ``text`` (text
    stream) or ``image`` (vision stream); position 0 is special where the model has a class
    token; padding (``mask == 0``) is pad."""
    import torch

    m = torch.as_tensor(mask).bool()
    tag = TAG_IMAGE if stream == "vision" else TAG_TEXT
    tags = torch.where(m, torch.tensor(tag), torch.tensor(TAG_PAD))
    if has_cls:
        tags[:, 0] = torch.where(m[:, 0], torch.tensor(TAG_SPECIAL), torch.tensor(TAG_PAD))
    return tags.to(torch.int8)


def attention_context(
    trace: Any, site: str, shape: tuple[int, ...], vision_class_token: bool = True
) -> AttentionContext:
    """Query and key tags of attention ``site`` (``shape`` = ``[B, H, Tq, Tk]``) in ``trace``.

    Two-stream models' streams come from ``trace.tags_by_stream`` (``cross.blocks.k.t2v.attn``:
    text queries, vision keys; ``v2t`` the reverse); a fused sequence from
    ``trace.modality_tags``; a single tower's self-attention from its mask (vision: position 0
    is the class token where ``vision_class_token``)."""
    import torch

    from vlprobe.modality import site_stream

    b, _, tq, tk = shape
    by_stream = getattr(trace, "tags_by_stream", None) or {}
    stream = site_stream(site)
    parts = site.split(".")
    if stream == "cross" and len(parts) >= 5:
        kind = parts[3]
        pairs = {"t2v": ("text", "vision"), "v2t": ("vision", "text"),
                 "text": ("text", "text"), "vision": ("vision", "vision")}
        if kind not in pairs or any(s not in by_stream for s in pairs[kind]):
            raise ConfigError(
                f"attention site {site!r}: the model gave no token tags for its streams"
            )
        q, k = pairs[kind]
        return AttentionContext(by_stream[q], by_stream[k])
    if stream in by_stream:
        return AttentionContext(by_stream[stream], by_stream[stream])
    tags = getattr(trace, "modality_tags", None)
    if tags is not None and tuple(tags.shape) == (b, tq) and tq == tk:
        return AttentionContext(tags, tags)
    if stream == "vision" and tq == tk:
        ones = torch.ones((b, tq), dtype=torch.bool)
        tags = single_stream_tags(ones, "vision", vision_class_token)
        return AttentionContext(tags, tags)
    if stream == "text" and tq == tk:
        mask = trace.attention_mask if trace.attention_mask is not None else torch.ones(b, tq)
        tags = single_stream_tags(mask, "text", has_cls=False)
        return AttentionContext(tags, tags)
    raise ConfigError(f"attention site {site!r}: no token tags match its shape {tuple(shape)}")


# reducers defined in their own modules register on import
from vlprobe.extract import objects as _objects  # noqa: E402,F401

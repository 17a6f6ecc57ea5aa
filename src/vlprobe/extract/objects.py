"""Attention between tokens of the same object (catalogue F6, seed 003): the reducer
``objects`` and the per-item object context it reads.

A reducer sees one batch's attention and token tags. This one also needs to know, per item,
which image tokens (grid cells, regions, patches) lie on which annotated object. That comes
from two places, joined here before the reducer runs (in the same forward, see
:func:`object_context`):

- the item's object boxes: the stimuli descriptors ``boxes`` (a list per item of COCO
  ``[x, y, w, h, category]`` in pixels, as loaders ``coco_instances`` and ``coco_captions``
  with ``instances: true`` give them) and ``image_size`` (``[width, height]``); the extractor
  hands the batch's descriptors to the context as ``items`` (``{"id": [...], "boxes": [...],
  ...}``, one entry per batch row);
- each token's box in the original image: ``Trace.extras["boxes"]`` ``[B, T, 4]``
  (normalised ``x0, y0, x1, y1``; VisualBERT / ViLT over the fused sequence, LXMERT over
  ``[text; vision]``; NaN at non-image positions).

Membership (:func:`token_membership`, the rule F4 uses to map a box to grid cells): a token
belongs to an object when more than ``cover`` (0.5) of the token's own box lies inside the
object's box; an object that covers no token that much owns the one token it overlaps most
(a small object still owns a cell); an object that overlaps no token (cropped away by the
model's centre crop) owns none. A token may belong to several (overlapping) objects; two
tokens are a *same-object pair* when they share at least one.

The statistic (:func:`_objects`, ``[B, H, 5]``): image queries, their attention renormalised
over the OTHER image keys of the item (the query itself left out, as it trivially shares its
own object; text and special keys left out), ``p(k | q)``:

- ``[..., 0]`` observed same-object mass: mean over image queries that have at least one
  same-object key of ``sum_{k same} p(k | q)``. Attention only within the object gives 1.
- ``[..., 1]`` the uniform (chance) mass: the same with ``p`` uniform over the image keys,
  ``n_same(q) / (n_image - 1)``: what a head that ignores objects gets, given how many keys
  the object has. Observed - chance corrects for object size / key count.
- ``[..., 2]`` the distance-matched mass: the same with ``p(k | q)`` replaced by the head's
  own distance profile ``f(d)`` for that item (the mean ``p`` over all image pairs of the
  item at distance ``d``, in half-token bins of the centres' distance measured in token
  widths / heights), renormalised per query. Same-object tokens are close together, so a
  purely local head beats chance; observed - distance-matched is the preference for the
  object beyond locality (a head whose attention depends only on distance scores about 0).
- ``[..., 3]`` / ``[..., 4]`` mean ``p`` per same-object pair / per other image pair
  (different objects, object-background, background-background), over all image queries:
  both are ``1 / (n_image - 1)`` for uniform attention, so their ratio is 1 at chance.

NaN where an item has no same-object pair (no boxes, every object cropped away, objects of one
token each) or a head puts no attention on the item's other image tokens; such items drop out
of the means (the analyses report ``n``). Attention with text queries or text keys only
(LXMERT's cross-attention, a captioner's decoder cross-attention over patches: text queries)
has no image query, hence NaN throughout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlprobe.errors import ConfigError, DataError
from vlprobe.extract.reducers import AttentionContext, register_reducer
from vlprobe.modality import TAG_IMAGE, site_stream

#: a token belongs to an object when more than this share of its box lies inside the object.
COVER = 0.5
#: descriptors the object context reads.
OBJECT_DESCRIPTORS = ("boxes", "image_size")


# -- object boxes of an item ----------------------------------------------------------------
def object_boxes(boxes: Any, image_size: Any, where: str) -> np.ndarray:
    """``[O, 4]`` normalised ``(x0, y0, x1, y1)`` of an item's COCO boxes ``[[x, y, w, h,
    (category)], ...]`` (pixels) in a ``[width, height]`` image.

    Raises:
        DataError: naming ``where`` for a box without area, or one lying more than a pixel
            outside the image, or an unusable image size.
    """
    try:
        width, height = (float(v) for v in image_size)
    except (TypeError, ValueError):
        raise DataError(f"{where}: image_size {image_size!r} is not [width, height]") from None
    if not (width > 0 and height > 0):
        raise DataError(f"{where}: image_size {image_size!r} must be positive")
    out = []
    for box in boxes or ():
        try:
            x, y, w, h = (float(v) for v in list(box)[:4])
        except (TypeError, ValueError):
            raise DataError(f"{where}: box {box!r} is not [x, y, w, h, ...] in pixels") from None
        if not np.all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
            raise DataError(f"{where}: box {list(box)[:4]} (x, y, w, h) has no area")
        if x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
            raise DataError(f"{where}: box {list(box)[:4]} (x, y, w, h in pixels) lies outside "
                            f"the {width:g} x {height:g} image")
        out.append([x / width, y / height, (x + w) / width, (y + h) / height])
    return np.clip(np.asarray(out, dtype=np.float64).reshape(-1, 4), 0.0, 1.0)


def box_coverage(token_boxes: np.ndarray, box: Any) -> np.ndarray:
    """``[T]`` the share of each token box (``[T, 4]``) lying inside ``box`` ``(x0, y0, x1,
    y1)``, all in one frame."""
    t = np.asarray(token_boxes, dtype=np.float64)
    x0, y0, x1, y1 = (float(v) for v in box)
    area = np.maximum((t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1]), 1e-12)
    w = np.clip(np.minimum(t[:, 2], x1) - np.maximum(t[:, 0], x0), 0, None)
    h = np.clip(np.minimum(t[:, 3], y1) - np.maximum(t[:, 1], y0), 0, None)
    return w * h / area


def token_membership(token_boxes: np.ndarray, objects: np.ndarray,
                     cover: float = COVER) -> np.ndarray:
    """``[T, O]`` bool: token ``t`` (box ``token_boxes[t]``, NaN rows = not an image token)
    belongs to object ``o`` (see the module docstring for the rule)."""
    tb = np.asarray(token_boxes, dtype=np.float64)
    out = np.zeros((len(tb), len(objects)), dtype=bool)
    real = np.isfinite(tb).all(axis=1)
    if not real.any():
        return out
    cols = np.flatnonzero(real)
    for o, box in enumerate(np.asarray(objects, dtype=np.float64)):
        frac = box_coverage(tb[real], box)
        inside = frac > cover
        if not inside.any() and frac.max() > 0:
            inside[int(np.argmax(frac))] = True
        out[cols[inside], o] = True
    return out


# -- the per-batch object context ---------------------------------------------------------
def _stream_boxes(trace: Any, stream: str, length: int, site: str) -> Any:
    """``[B, length, 4]`` token boxes of ``stream``'s sequence (from ``extras["boxes"]``)."""
    import torch

    boxes = (getattr(trace, "extras", None) or {}).get("boxes")
    if boxes is None:
        raise ConfigError(
            f"attention site {site!r}: reducer 'objects' needs each image token's box in the "
            "image (Trace.extras['boxes']), which this model's trace does not give (region "
            "models VisualBERT / LXMERT and ViLT give them; a captioner or an image tower does "
            "not)")
    boxes = torch.as_tensor(boxes).float()
    by_stream = getattr(trace, "tags_by_stream", None) or {}
    if stream in ("text", "vision") and "text" in by_stream:  # two-stream: [text; vision]
        t_text = int(by_stream["text"].shape[1])
        boxes = boxes[:, :t_text] if stream == "text" else boxes[:, t_text:]
    if boxes.shape[1] != length:
        raise ConfigError(f"attention site {site!r}: the trace's token boxes cover "
                          f"{boxes.shape[1]} tokens of the {stream} sequence, the attention "
                          f"{length}")
    return boxes


def _site_streams(site: str) -> tuple[str, str]:
    """(query stream, key stream) of an attention site (``fusion``, ``text``, ``vision``)."""
    stream = site_stream(site)
    parts = site.split(".")
    if stream == "cross" and len(parts) >= 5:
        pairs = {"t2v": ("text", "vision"), "v2t": ("vision", "text"),
                 "text": ("text", "text"), "vision": ("vision", "vision")}
        if parts[3] in pairs:
            return pairs[parts[3]]
    return stream, stream


def object_context(trace: Any, site: str, ctx: AttentionContext,
                   items: Mapping[str, Sequence[Any]] | None) -> None:
    """Fill ``ctx.query_boxes`` / ``key_boxes`` (``[B, T, 4]``) and ``ctx.query_objects`` /
    ``key_objects`` (``[B, T, O]`` bool, ``O`` = most objects of any item of the batch) for
    attention ``site`` from the trace's token boxes and the batch's ``items`` descriptors
    (see the module docstring). Query and key fields are the same tensors when the site's
    queries and keys are one sequence (self-attention).

    Raises:
        ConfigError: no item descriptors / no ``boxes`` or ``image_size`` descriptor, or a
            trace without token boxes. DataError: a box outside its image (naming the item).
    """
    import torch

    missing = [d for d in OBJECT_DESCRIPTORS if not items or d not in items]
    if missing:
        raise ConfigError(
            f"attention site {site!r}: reducer 'objects' needs the items' object boxes "
            f"(descriptors {', '.join(OBJECT_DESCRIPTORS)}; missing: {', '.join(missing)}): use "
            "a dataset with COCO instance boxes (loader coco_captions with instances: true)")
    n = len(items["boxes"])
    ids = list(items.get("id") or [f"#{b}" for b in range(n)])
    objects = [object_boxes(items["boxes"][b], items["image_size"][b], f"item {ids[b]!r}")
               for b in range(n)]
    n_obj = max([len(o) for o in objects] + [1])
    q_stream, k_stream = _site_streams(site)
    tq, tk = int(ctx.query_tags.shape[1]), int(ctx.key_tags.shape[1])

    def side(stream: str, length: int, tags: Any) -> tuple[Any, Any]:
        boxes = _stream_boxes(trace, stream, length, site)
        is_image = torch.as_tensor(tags).cpu() == TAG_IMAGE
        if boxes.shape[0] != n:
            raise ConfigError(f"attention site {site!r}: {boxes.shape[0]} traced items, "
                              f"{n} item descriptors")
        bad = is_image & ~torch.isfinite(boxes).all(-1)
        if bad.any():
            raise ConfigError(f"attention site {site!r}: an image token of item "
                              f"{ids[int(bad.any(-1).nonzero()[0])]!r} has no box")
        boxes = torch.where(is_image[..., None], boxes, torch.tensor(float("nan")))
        member = np.zeros((n, length, n_obj), dtype=bool)
        for b in range(n):
            member[b, :, :len(objects[b])] = token_membership(boxes[b].numpy(), objects[b])
        return boxes, torch.from_numpy(member)

    ctx.query_boxes, ctx.query_objects = side(q_stream, tq, ctx.query_tags)
    if (k_stream, tk) == (q_stream, tq):
        ctx.key_boxes, ctx.key_objects = ctx.query_boxes, ctx.query_objects
    else:
        ctx.key_boxes, ctx.key_objects = side(k_stream, tk, ctx.key_tags)


# -- the reducer ------------------------------------------------------------------------------
def _masked_mean(values: Any, weight: Any) -> Any:
    """Mean of ``values [B, H, Tq]`` over queries with ``weight [B, H, Tq]`` > 0; NaN if none."""
    import torch

    n = weight.sum(-1)
    return torch.where(n > 0, (values * weight).sum(-1) / n.clamp(min=1e-12), torch.nan)


def _distance_bins(qb: Any, kb: Any, pairs: Any) -> Any:
    """``[B, Tq, Tk]`` long: half-token bins of the distance between token centres, in units
    of the item's median image-token width / height (0 outside ``pairs``)."""
    import torch

    wh = torch.stack([kb[..., 2] - kb[..., 0], kb[..., 3] - kb[..., 1]], dim=-1)  # [B, Tk, 2]
    unit = torch.nanmedian(wh, dim=1).values.clamp(min=1e-6)  # [B, 2]
    cq = (qb[..., :2] + qb[..., 2:]) / 2 / unit[:, None]
    ck = (kb[..., :2] + kb[..., 2:]) / 2 / unit[:, None]
    d = torch.linalg.vector_norm(cq[:, :, None] - ck[:, None], dim=-1)  # [B, Tq, Tk]
    bins = torch.round(2 * torch.nan_to_num(d, nan=0.0)).long()
    return torch.where(pairs, bins, torch.zeros_like(bins))


@register_reducer("objects", "[B, H, 5] same-object attention of image tokens: observed, "
                  "uniform and distance-matched mass, weight per same / other pair",
                  needs_objects=True)
def _objects(a: Any, ctx: AttentionContext) -> Any:
    import torch

    qm = torch.as_tensor(ctx.query_objects).to(a.device).to(a.dtype)  # [B, Tq, O]
    km = torch.as_tensor(ctx.key_objects).to(a.device).to(a.dtype)
    qb = torch.as_tensor(ctx.query_boxes).to(a.device).to(a.dtype)
    kb = torch.as_tensor(ctx.key_boxes).to(a.device).to(a.dtype)
    pairs = (ctx.query_tags == TAG_IMAGE)[:, :, None] & (ctx.key_tags == TAG_IMAGE)[:, None]
    if ctx.query_objects is ctx.key_objects:  # self-attention: not the query itself
        pairs &= ~torch.eye(a.shape[2], dtype=torch.bool, device=a.device)
    same = ((qm @ km.transpose(1, 2)) > 0) & pairs  # [B, Tq, Tk]
    other = pairs & ~same
    on = (a * pairs[:, None]).sum(-1)  # attention on the other image keys [B, H, Tq]
    p = a * pairs[:, None] / on.clamp(min=1e-12)[..., None]  # renormalised over them
    seen = on > 0  # [B, H, Tq]: queries whose p is defined in this head
    has_same = same.any(-1)[:, None] & seen  # [B, H, Tq]
    sf, of, pf = same.to(a.dtype), other.to(a.dtype), pairs.to(a.dtype)
    observed = _masked_mean((p * sf[:, None]).sum(-1), has_same.to(a.dtype))
    chance_q = sf.sum(-1) / pf.sum(-1).clamp(min=1)  # [B, Tq]
    chance = _masked_mean(chance_q[:, None].expand_as(on), has_same.to(a.dtype))
    # the head's distance profile for the item: mean p per distance bin over all image pairs
    bins = _distance_bins(qb, kb, pairs)  # [B, Tq, Tk]
    b, h = a.shape[:2]
    flat = bins.flatten(1)[:, None].expand(b, h, -1)  # [B, H, Tq*Tk]
    counted = (pairs[:, None] & seen[..., None]).to(a.dtype).flatten(2)
    n_bins = int(bins.max()) + 1
    total = torch.zeros(b, h, n_bins, dtype=a.dtype, device=a.device)
    total.scatter_add_(2, flat, p.flatten(2))
    count = torch.zeros_like(total).scatter_add_(2, flat, counted)
    profile = total / count.clamp(min=1)
    f = profile.gather(2, flat).view_as(p) * pf[:, None]  # [B, H, Tq, Tk]
    f_all = f.sum(-1)
    expected_q = (f * sf[:, None]).sum(-1) / f_all.clamp(min=1e-12)
    matched = _masked_mean(expected_q, (has_same & (f_all > 0)).to(a.dtype))
    seen_f = seen[..., None].to(a.dtype)
    n_same = (sf[:, None] * seen_f).sum((-1, -2))
    n_other = (of[:, None] * seen_f).sum((-1, -2))
    w_same = torch.where(n_same > 0, (p * sf[:, None]).sum((-1, -2)) / n_same.clamp(min=1),
                         torch.nan)
    w_other = torch.where(n_other > 0, (p * of[:, None]).sum((-1, -2)) / n_other.clamp(min=1),
                          torch.nan)
    w_other = torch.where(torch.isnan(observed), torch.nan, w_other)
    return torch.stack([observed, chance, matched, w_same, w_other], dim=-1)

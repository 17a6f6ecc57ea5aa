"""What V7 (``attention_maps``) reads from each kind of model: which attention, which query,
which tokens are image tokens and where they lie, and the target of gradient relevance.

Three kinds (:func:`map_plan`):

- ``vision``: an image tower with self-attention (``hf_vit``, CLIP / SigLIP vision, a
  captioner's ViT encoder) on ``image`` batches; sites ``vision.blocks.{i}.attn``
  ``[B, H, 1 + P, 1 + P]``. Query = the class token (position 0). Towers without a class token
  (SigLIP, ``vision_class_token = False``) get the documented substitute: the MEAN of all
  query rows (the attention each patch receives on average). Image tokens = the ``P`` patches,
  a square grid over the processor's input window.
- ``single``: a single-stream fusion model (``visual_bert``, ``vilt``) on ``pair`` batches;
  sites ``fusion.blocks.{i}.attn`` over the fused sequence. Query = ``[CLS]`` (position 0);
  image tokens = the tokens tagged image, placed by ``Trace.extras["boxes"]``.
- ``two_stream``: LXMERT on ``pair`` batches. Per layer: the text ``[CLS]``'s cross-attention
  over the regions (``cross.blocks.{k}.t2v.attn``). Rollout has no single-matrix form across
  two streams: its substitute is Chefer et al.'s propagation rules with the head-mean
  attention in place of the gradient-weighted one. Regions are placed by ``visual_pos``.

Gradient relevance (Chefer et al. 2021) needs a scalar target per item and a forward that keeps
the attention in the autograd graph (``adapter.forward_attached``): an image classifier's top
``vision.logits``; a dual encoder's cosine similarity of the image and its caption
(``vision.proj`` / ``text.proj``); a fusion checkpoint of ``vlprobe train``'s ITM logit of the
match class (``heads.safetensors``' ``seq_relationship`` on ``fusion.pooled``). A model with
none of these gets raw attention and rollout only (a note says why).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.analyses.fusion.attention_math import (
    AttentionStep,
    gradient_cam,
    grid_boxes,
    propagate_relevance,
    rollout,
)
from vlprobe.errors import AnalysisError
from vlprobe.modality import TAG_IMAGE, TAG_PAD


@dataclass
class MapPlan:
    """How one model's attention maps are read (see the module docstring).

    Attributes:
        kind: ``vision`` | ``single`` | ``two_stream``; modality: the batch modality.
        map_sites: the sites of the per-layer maps (query row -> image tokens), in layer
            order; steps: every attention site of the propagation (rollout / relevance), in
            forward order, with its (query stream, key stream, group).
        class_token: whether the query is a class token (else the mean of all rows).
    """

    kind: str
    modality: str
    map_sites: list[str]
    steps: list[tuple[str, str, str, int]] = field(default_factory=list)
    class_token: bool = True


def _blocks(sites: Sequence[str], stream: str, sub: str = "attn") -> list[str]:
    return [s for s in sites if s.startswith(f"{stream}.blocks.") and s.endswith(f".{sub}")
            and s.count(".") == 3]


def map_plan(adapter: Any, model: str, owner: str = "attention_maps") -> MapPlan:
    """The :class:`MapPlan` of ``adapter``.

    Raises:
        AnalysisError: a model that takes no images, or one without attention sites (a CNN).
    """
    mods = tuple(adapter.modalities)
    sites = list(adapter.sites())
    if "image" not in mods and "pair" not in mods:
        raise AnalysisError(f"{owner}: model {model!r} ({adapter.family}) takes "
                            f"{'/'.join(mods)} input only; attention maps need a model that "
                            "sees images")
    if not any(s.endswith(".attn") for s in sites):
        raise AnalysisError(f"{owner}: model {model!r} ({adapter.family}) has no attention "
                            "sites (*.attn); attention maps need a transformer (a CNN has none)")
    fusion = _blocks(sites, "fusion")
    if "pair" in mods and fusion:
        steps = [(s, "fusion", "fusion", i) for i, s in enumerate(fusion)]
        return MapPlan("single", "pair", fusion, steps)
    t2v = [s for s in sites if s.startswith("cross.") and s.endswith(".t2v.attn")]
    if "pair" in mods and "image" not in mods and t2v:
        steps: list[tuple[str, str, str, int]] = []
        for s in _blocks(sites, "text"):
            steps.append((s, "text", "text", len(steps)))
        for s in _blocks(sites, "vision"):
            steps.append((s, "vision", "vision", len(steps)))
        for k in range(len(t2v)):
            g = len(steps)
            steps += [(f"cross.blocks.{k}.t2v.attn", "text", "vision", g),
                      (f"cross.blocks.{k}.v2t.attn", "vision", "text", g)]
            g += 2
            steps += [(f"cross.blocks.{k}.text.attn", "text", "text", g),
                      (f"cross.blocks.{k}.vision.attn", "vision", "vision", g)]
        missing = [s for s, *_ in steps if s not in sites]
        if missing:
            raise AnalysisError(f"{owner}: model {model!r} ({adapter.family}): a two-stream "
                                f"model needs the sites {missing[:3]}")
        return MapPlan("two_stream", "pair", t2v, steps)
    vision = _blocks(sites, "vision")
    if "image" in mods and vision:
        steps = [(s, "vision", "vision", i) for i, s in enumerate(vision)]
        return MapPlan("vision", "image", vision, steps,
                       class_token=bool(getattr(adapter, "vision_class_token", True)))
    raise AnalysisError(f"{owner}: model {model!r} ({adapter.family}) has attention sites but "
                        "none over image tokens (vision.blocks.*.attn, fusion.blocks.*.attn or "
                        "cross.blocks.*.t2v.attn)")


# -- targets of gradient relevance -------------------------------------------------------
def itm_head(adapter: Any) -> tuple[Any, Any, int] | None:
    """``(weight [2, D], bias [2], match class)`` of a ``vlprobe train`` fusion checkpoint's
    ITM head, or None for a checkpoint without one (a published base model)."""
    source = getattr(adapter, "source", None)
    if source is None or getattr(source, "kind", None) != "local":
        return None
    directory = Path(source.ref)
    if not (directory / "heads.safetensors").is_file() or not (directory / "fusion.json").is_file():
        return None
    from safetensors.torch import load_file

    from vlprobe.train.fusion_models import MATCH_CLASS, read_meta

    meta = read_meta(directory)
    heads = load_file(str(directory / "heads.safetensors"))
    return (heads["seq_relationship.weight"], heads["seq_relationship.bias"],
            int(meta.get("match_class", MATCH_CLASS[meta["kind"]])))


def target_kind(plan: MapPlan, adapter: Any) -> tuple[str | None, str]:
    """``(target, why)``: the relevance target of a model (``class_logit``, ``similarity``,
    ``itm``) or None with the reason."""
    sites = set(adapter.sites())
    if plan.kind == "vision":
        if "vision.logits" in sites:
            return "class_logit", "the top class logit (vision.logits)"
        if {"vision.proj", "text.proj"} <= sites:
            return "similarity", "cos(vision.proj, text.proj) of the image and its caption"
        return None, "no class head (vision.logits) and no text tower to compare with"
    if "fusion.pooled" in sites and itm_head(adapter) is not None:
        return "itm", "the ITM logit of the match class (heads.safetensors on fusion.pooled)"
    return None, ("the checkpoint has no image-text matching head (only vlprobe train fusion "
                  "checkpoints ship heads.safetensors)")


def _target(kind: str, adapter: Any, trace: Any, texts: Sequence[str] | None) -> Any:
    """``[B]`` target scalars, in the graph of ``trace``."""
    import torch

    if kind == "class_logit":
        return trace.hidden["vision.logits"].float().max(dim=-1).values
    if kind == "similarity":
        text = adapter.forward(adapter.prepare(list(texts), "text"), ["text.proj"])
        t = text.hidden["text.proj"].to(trace.hidden["vision.proj"].device)
        v = trace.hidden["vision.proj"].float()
        return torch.nn.functional.cosine_similarity(v, t.float(), dim=-1)
    weight, bias, match = itm_head(adapter)
    pooled = trace.hidden["fusion.pooled"].float()
    logits = pooled @ weight.to(pooled.device).float().T + bias.to(pooled.device).float()
    return logits[:, match]


# -- per-item maps ------------------------------------------------------------------------
@dataclass
class ItemMaps:
    """One item's maps over its ``n`` image tokens.

    Attributes:
        raw: ``[L, H, n]`` per map site and head: the query's attention on each image token.
        rollout: ``[n]`` (rollout / gradient-free propagation, query row).
        relevance: ``[n]`` gradient-weighted relevance, or None.
        boxes: ``[n, 4]`` normalised ``(x0, y0, x1, y1)`` of each image token in the image.
        image_mass: ``[L, H]`` total attention of the query on image tokens.
    """

    raw: np.ndarray
    rollout: np.ndarray
    relevance: np.ndarray | None
    boxes: np.ndarray
    image_mass: np.ndarray


def _np(x: Any) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def _query(a: np.ndarray, class_token: bool) -> np.ndarray:
    """``[..., Tq, Tk]`` -> ``[..., Tk]``: row 0 (class token) or the mean of all rows."""
    return a[..., 0, :] if class_token else a.mean(axis=-2)


def batch_maps(plan: MapPlan, adapter: Any, payloads: Sequence[Any], target: str | None,
               texts: Sequence[str] | None = None) -> list[ItemMaps]:
    """Run ``adapter`` on ``payloads`` (images, or ``(image, text)`` pairs) once and read
    every item's maps. With ``target`` the forward keeps the graph and relevance is computed
    from the gradient of the ``[B]`` targets (summed: items do not interact); ``texts`` are
    the captions a ``similarity`` target compares each image with."""
    import torch

    batch = adapter.prepare(list(payloads), plan.modality)
    sites = list(dict.fromkeys([s for s, *_ in plan.steps] + plan.map_sites))
    grads: dict[str, np.ndarray] = {}
    if target is not None:
        extra = {"class_logit": ["vision.logits"], "similarity": ["vision.proj"],
                 "itm": ["fusion.pooled"]}[target]
        trace = adapter.forward_attached(batch, sites + extra)
        value = _target(target, adapter, trace, texts)
        attn = [trace.attentions[s] for s in sites]
        got = torch.autograd.grad(value.sum(), attn, allow_unused=True)
        grads = {s: (np.zeros(tuple(a.shape), np.float32) if g is None else _np(g))
                 for s, a, g in zip(sites, attn, got)}
        attentions = {s: _np(trace.attentions[s]) for s in sites}
    else:
        trace = adapter.forward(batch, sites)
        attentions = {s: _np(trace.attentions[s]) for s in sites}
    return [_item(plan, adapter, batch, trace, attentions, grads, b, payloads[b])
            for b in range(len(payloads))]


def _item(plan: MapPlan, adapter: Any, batch: Any, trace: Any, attn: dict[str, np.ndarray],
          grads: dict[str, np.ndarray], b: int, payload: Any) -> ItemMaps:
    image = payload[0] if plan.modality == "pair" else payload
    if plan.kind == "two_stream":
        tt = np.asarray(trace.tags_by_stream["text"][b])
        vt = np.asarray(trace.tags_by_stream["vision"][b])
        keep = {"text": np.flatnonzero(tt != TAG_PAD), "vision": np.flatnonzero(vt != TAG_PAD)}
        boxes = np.asarray(batch.inputs["visual_pos"][b])[keep["vision"]]
        img = np.arange(len(keep["vision"]))
        qrow, q_stream, k_stream = 0, "text", "vision"
    else:
        if plan.kind == "single":
            tags = np.asarray(trace.modality_tags[b])
            real = np.flatnonzero(tags != TAG_PAD)
            img = np.flatnonzero(tags[real] == TAG_IMAGE)
            boxes = np.asarray(trace.extras["boxes"][b])[real][img]
        else:
            n = attn[plan.map_sites[0]].shape[-1]
            real = np.arange(n)
            img = np.arange(1, n) if plan.class_token else np.arange(n)
            boxes = _patch_boxes(adapter, image, len(img))
        keep = {"fusion" if plan.kind == "single" else "vision": real}
        qrow, q_stream = 0, next(iter(keep))
        k_stream = q_stream

    def cut(site: str, values: np.ndarray, qs: str, ks: str) -> np.ndarray:
        return values[b][:, keep[qs]][:, :, keep[ks]]  # [H, Tq, Tk] real tokens

    raw_rows = []
    for site in plan.map_sites:
        a = cut(site, attn[site], q_stream, k_stream)
        row = a[:, qrow, :] if plan.class_token else a.mean(axis=1)
        raw_rows.append(row[:, img])
    raw = np.stack(raw_rows)  # [L, H, n]
    steps_free, steps_grad = [], []
    for site, qs, ks, group in plan.steps:
        a = cut(site, attn[site], qs, ks)
        steps_free.append(AttentionStep(qs, ks, a.mean(axis=0), group))
        if grads:
            steps_grad.append(AttentionStep(qs, ks, gradient_cam(a, cut(site, grads[site], qs,
                                                                            ks)), group))
    sizes = {s: len(v) for s, v in keep.items()}
    if plan.kind == "two_stream":
        roll = propagate_relevance(steps_free, sizes)[("text", "vision")][qrow]
    else:
        r = rollout([s.cam for s in steps_free])
        roll = _query(r, plan.class_token)[img]
    relevance = None
    if steps_grad:
        r = propagate_relevance(steps_grad, sizes)[(q_stream, k_stream)]
        relevance = (r[qrow] if plan.class_token or plan.kind == "two_stream"
                     else r.mean(axis=0))[img]
    return ItemMaps(raw=raw.astype(np.float32), rollout=np.asarray(roll, np.float32),
                    relevance=None if relevance is None else relevance.astype(np.float32),
                    boxes=np.asarray(boxes, np.float32), image_mass=raw.sum(axis=-1))


def _patch_boxes(adapter: Any, image: Any, n: int) -> np.ndarray:
    """Boxes of a ViT's ``n`` patch tokens (a square grid over the processor's window)."""
    g = math.isqrt(n)
    if g * g != n:
        raise AnalysisError(f"attention_maps: {adapter.family}: {n} patch tokens do not form a "
                            "square grid; cannot place them on the image")
    width, height = image.size
    window = image_window(adapter, width, height)
    return grid_boxes(g, window, width, height)


def image_window(adapter: Any, width: int, height: int) -> tuple[float, float, float, float]:
    """The pixels of a ``width x height`` image that the model's image input covers (its
    ``input_window``, a captioner's tower's, else the whole image)."""
    for owner in (adapter, getattr(adapter, "tower", None)):
        method = getattr(owner, "input_window", None)
        if method is not None:
            return tuple(float(v) for v in method(width, height))
    return (0.0, 0.0, float(width), float(height))

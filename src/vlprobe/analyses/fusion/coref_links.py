"""(region, phrase) links -> token positions, and per-head link attention (F4, F5).

A link (from the ``links`` descriptor of a dataset, e.g. loader ``coco_coref``,
:mod:`vlprobe.data.silver_links`) names a phrase by its characters in the caption and a region
by one or more boxes (normalised ``x0, y0, x1, y1``). Here it becomes token positions:

- **phrase**: the caption's sub-word tokens that overlap the phrase's characters (the model's
  own tokenizer and truncation; offsets from :mod:`vlprobe.extract.alignment`), as indices
  among the item's TEXT-tagged tokens (specials excluded; text tokens keep their order in
  every adapter);
- **region**: the model's region tokens (IMAGE-tagged, in region order) whose box is more than
  half covered by one of the link's boxes (``cover > 0.5`` of the region's own area); when no
  region is, the one with the largest overlap. For grid-region models (VisualBERT / LXMERT
  with ``regions: {source: grid}``) a region is a cell of the CNN's feature map, box = the
  cell's footprint in the image (:func:`region_boxes`).

Attention of a link in one head (``A`` = post-softmax ``[Tq, Tk]``, "A attends to B" = query
in A, key in B, as in SCIENCE.md):

- ``v2t`` = max over phrase tokens ``t`` of the MEAN over the region's tokens ``r`` of
  ``A[r, t]``: the region's attention to the phrase (a region of several cells acts as one
  query whose distribution is the mean of its cells' rows);
- ``t2v`` = max over phrase tokens ``t`` of the SUM over the region's tokens ``r`` of
  ``A[t, r]``: the attention mass a phrase token puts on the region.

For a one-token region both are seed 001's "maximum attention weight between the image region
and each word of the noun phrase". A single-stream site (``fusion.blocks.i.attn``) gives both
directions; a two-stream model gives ``v2t`` in ``cross.blocks.k.v2t.attn`` and ``t2v`` in
``cross.blocks.k.t2v.attn``; sites with text or image on one side only give none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlprobe.data.silver_links import check_box
from vlprobe.errors import ConfigError, DataError
from vlprobe.extract.objects import box_coverage
from vlprobe.modality import TAG_IMAGE, TAG_TEXT
from vlprobe.models.regions import grid_cell_boxes

DIRECTIONS = ("v2t", "t2v")
_LINK_DESCRIPTORS = ("links", "noun_phrases", "image_size")


@dataclass
class LinkTokens:
    """One link of one item resolved to token positions (see the module docstring).

    Attributes:
        item: index of the item in its stimuli.
        link: index of the link in the item's ``links``.
        type: the link type (COCO supercategory).
        category: the category.
        group: the item's image id (cross-validation groups).
        phrase: ``[P]`` indices among the item's text tokens.
        region: ``[R_link]`` indices among the item's region tokens.
        rand_phrase: ``[P']`` a noun phrase of the same caption that is not linked to the
            link's category (None when the caption has none).
        rand_region: ``[R_link]`` region tokens drawn at random outside ``region`` (same count
            where the image has enough).
    """

    item: int
    link: int
    type: str
    category: str
    group: str
    phrase: np.ndarray
    region: np.ndarray
    rand_phrase: np.ndarray | None
    rand_region: np.ndarray


def link_splits(analysis: Any, source: Any) -> list[str]:
    """The dataset splits an F4 / F5 analysis pools: ``params["splits"]`` (None = all)."""
    available = source.splits(analysis.dataset)
    splits = analysis.params["splits"] or available
    unknown = sorted(set(splits) - set(available))
    if unknown:
        raise ConfigError(f"{analysis.name}: dataset {analysis.dataset!r} has no split(s) "
                          f"{', '.join(unknown)}")
    return list(splits)


def check_link_data(stimuli: Any, where: str) -> None:
    """The stimuli carry pair items and the link descriptors, else a ConfigError."""
    missing = [d for d in _LINK_DESCRIPTORS if d not in stimuli.descriptors]
    if missing or stimuli.texts is None or stimuli.images is None:
        raise ConfigError(
            f"{where}: dataset {stimuli.dataset!r} split {stimuli.split!r} has no (region, "
            f"phrase) links (missing descriptors: {', '.join(missing) or 'image/text payloads'}); "
            "use the loader coco_coref (silver links from COCO instances + captions) or a "
            "loader that gives the same descriptors (links, noun_phrases, image_size)"
        )


def check_links(stimuli: Any, where: str) -> None:
    """Every link's phrase is in its caption at its characters and every box lies inside
    the image; else a DataError naming the item and the link."""
    check_link_data(stimuli, where)
    for i, links in enumerate(stimuli.descriptors["links"]):
        text = stimuli.texts[i]
        for j, link in enumerate(links):
            at = f"{where}: item {stimuli.ids[i]!r} link {j} ({link.get('phrase')!r})"
            start, end = int(link["start"]), int(link["end"])
            if not (0 <= start < end <= len(text)) or text[start:end] != link["phrase"]:
                raise DataError(
                    f"{at}: the phrase is not in the caption at characters [{start}, {end}) "
                    f"(caption: {text!r})"
                )
            if not link.get("boxes"):
                raise DataError(f"{at}: the link has no box")
            for box in link["boxes"]:
                check_box(box, at)


# -- text tokens ----------------------------------------------------------------------------
def text_token_offsets(adapter: Any, texts: Sequence[str]) -> list[np.ndarray]:
    """``[n_text_i, 2]`` character offsets of every text's non-special tokens, tokenized as
    the adapter does (its tokenizer, its maximum length)."""
    tok = getattr(adapter, "tokenizer", None)
    if tok is None or not getattr(tok, "is_fast", True):
        raise ConfigError(f"model {getattr(adapter, 'family', '?')!r}: links need a fast "
                          "tokenizer with character offsets")
    max_len = adapter.max_text_length()
    enc = tok([str(t) for t in texts], truncation=max_len is not None, max_length=max_len,
              return_offsets_mapping=True, return_special_tokens_mask=True)
    out = []
    for offsets, special in zip(enc["offset_mapping"], enc["special_tokens_mask"], strict=True):
        off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        out.append(off[np.asarray(special, dtype=bool) == 0])
    return out


def phrase_tokens(offsets: np.ndarray, start: int, end: int) -> np.ndarray:
    """Indices of the tokens (rows of ``offsets``) that overlap characters ``[start, end)``;
    empty when truncation cut the phrase away."""
    hit = (offsets[:, 0] < end) & (offsets[:, 1] > start) & (offsets[:, 1] > offsets[:, 0])
    return np.flatnonzero(hit)


# -- regions --------------------------------------------------------------------------------
def region_boxes(adapter: Any, image_id: Any, image_size: Sequence[int], n_regions: int,
                 item: int = 0) -> np.ndarray:
    """``[n_regions, 4]`` normalised boxes of the model's region tokens for one image.

    Grid regions (``adapter.regions.cnn.input_window``): a square ``g x g`` grid (``g**2 ==
    n_regions``) over the CNN's input window, raster order; a regions file: its boxes.

    Raises:
        ConfigError: the model has no region boxes (e.g. ViLT patches) or a non-square grid.
    """
    regions = getattr(adapter, "regions", None)
    cnn = getattr(regions, "cnn", None)
    if cnn is not None and hasattr(cnn, "input_window"):
        g = math.isqrt(int(n_regions))
        if g * g != n_regions:
            raise ConfigError(f"{n_regions} grid regions do not form a square grid")
        width, height = (float(v) for v in image_size)
        window = cnn.input_window(int(width), int(height))
        return grid_cell_boxes(g, g, window, (width, height))
    if regions is not None and hasattr(regions, "read"):
        boxes = regions.read(str(image_id), item)[1]
        if len(boxes) != n_regions:
            raise DataError(f"image {image_id!r}: the regions file has {len(boxes)} boxes but "
                            f"the model saw {n_regions} regions")
        return np.asarray(boxes, dtype=np.float64)
    raise ConfigError(
        f"model {getattr(adapter, 'family', '?')!r} has no region boxes (links need a region "
        "model: visual_bert / lxmert with grid or file regions)"
    )


def box_regions(link_boxes: Sequence[Sequence[float]], regions: np.ndarray,
                cover: float = 0.5) -> np.ndarray:
    """Indices of the regions (``[R, 4]`` boxes) more than ``cover`` of whose area lies
    inside one of ``link_boxes``; the single region with the largest overlap when none; empty
    when no region overlaps any box (the object lies outside what the model sees, e.g. cut
    away by a centre crop)."""
    best_frac = np.zeros(len(regions))
    for box in link_boxes:
        best_frac = np.maximum(best_frac, box_coverage(regions, box))
    chosen = np.flatnonzero(best_frac > cover)
    if chosen.size:
        return chosen
    if not best_frac.any():
        return np.zeros(0, dtype=np.int64)
    return np.asarray([int(np.argmax(best_frac))])


def resolve_links(
    adapter: Any, stimuli: Any, items: Sequence[int], n_text: Sequence[int],
    n_regions: Sequence[int], seed: int, where: str,
) -> tuple[list[LinkTokens], dict[str, int]]:
    """Token positions of the links of ``items`` (with ``n_text[k]`` text tokens and
    ``n_regions[k]`` region tokens each, as the model saw them) plus counts of links dropped
    (``"truncated"``: the phrase was cut away; ``"outside"``: no region overlaps the box).
    Random phrases / regions are drawn with ``np.random.default_rng(seed)`` in item order."""
    check_links(stimuli, where)
    rng = np.random.default_rng(seed)
    offsets = text_token_offsets(adapter, [stimuli.texts[i] for i in items])
    out, dropped = [], {"truncated": 0, "outside": 0}
    for k, i in enumerate(items):
        off = offsets[k]
        if len(off) != int(n_text[k]):
            raise DataError(
                f"{where}: item {stimuli.ids[i]!r}: the tokenizer gives {len(off)} text tokens "
                f"but the model's trace has {int(n_text[k])}"
            )
        links = stimuli.descriptors["links"][i]
        boxes = region_boxes(adapter, stimuli.descriptors["image_id"][i],
                             stimuli.descriptors["image_size"][i], int(n_regions[k]), i)
        spans = [tuple(int(v) for v in s) for s in stimuli.descriptors["noun_phrases"][i]]
        for j, link in enumerate(links):
            phrase = phrase_tokens(off, int(link["start"]), int(link["end"]))
            if phrase.size == 0:
                dropped["truncated"] += 1
                continue
            region = box_regions(link["boxes"], boxes)
            if region.size == 0:
                dropped["outside"] += 1
                continue
            same = {(int(o["start"]), int(o["end"])) for o in links
                    if o["category"] == link["category"]}
            others = [p for p in (phrase_tokens(off, s, e) for s, e in spans if (s, e) not in same)
                      if p.size]
            rand_phrase = others[int(rng.integers(len(others)))] if others else None
            pool = np.setdiff1d(np.arange(int(n_regions[k])), region)
            if pool.size < region.size:
                pool = np.arange(int(n_regions[k]))
            rand_region = np.sort(rng.choice(pool, size=region.size, replace=False))
            out.append(LinkTokens(i, j, str(link["type"]), str(link["category"]),
                                  str(stimuli.descriptors["image_id"][i]), phrase, region,
                                  rand_phrase, rand_region))
    return out, dropped


# -- attention of links ---------------------------------------------------------------------
def site_directions(query_tags: np.ndarray, key_tags: np.ndarray) -> tuple[str, ...]:
    """Which of ``v2t`` / ``t2v`` an attention with these query / key tags holds."""
    q, k = set(np.asarray(query_tags).tolist()), set(np.asarray(key_tags).tolist())
    out = []
    if TAG_IMAGE in q and TAG_TEXT in k:
        out.append("v2t")
    if TAG_TEXT in q and TAG_IMAGE in k:
        out.append("t2v")
    return tuple(out)


def link_attention(
    raw: np.ndarray, query_tags: np.ndarray, key_tags: np.ndarray, direction: str,
    phrase: np.ndarray, region: np.ndarray,
) -> np.ndarray:
    """``[H]`` attention of one link in every head of one item's attention ``raw``
    ``[H, Tq, Tk]`` (real tokens; tags of its queries / keys): see the module docstring."""
    a = np.asarray(raw, dtype=np.float32)
    qt, kt = np.asarray(query_tags), np.asarray(key_tags)
    if direction == "v2t":
        rows = np.flatnonzero(qt == TAG_IMAGE)[region]
        cols = np.flatnonzero(kt == TAG_TEXT)[phrase]
        return a[:, rows][:, :, cols].mean(axis=1).max(axis=1)
    if direction == "t2v":
        rows = np.flatnonzero(qt == TAG_TEXT)[phrase]
        cols = np.flatnonzero(kt == TAG_IMAGE)[region]
        return a[:, rows][:, :, cols].sum(axis=2).max(axis=1)
    raise ValueError(f"unknown direction {direction!r}")


def coref_sites(sites: Sequence[str]) -> list[str]:
    """The attention sites that may hold text<->image attention: single-stream
    ``fusion.*.attn`` and two-stream ``cross.blocks.k.v2t.attn`` / ``.t2v.attn``."""
    return [s for s in sites if s.startswith("fusion.")
            or s.endswith(".v2t.attn") or s.endswith(".t2v.attn")]


def token_counts(tags: np.ndarray) -> tuple[int, int]:
    """``(n_text, n_image)`` tokens of a tag row."""
    t = np.asarray(tags)
    return int((t == TAG_TEXT).sum()), int((t == TAG_IMAGE).sum())


__all__ = [
    "DIRECTIONS", "LinkTokens", "box_regions", "check_link_data", "check_links", "coref_sites",
    "link_attention", "phrase_tokens", "region_boxes", "resolve_links", "site_directions",
    "text_token_offsets", "token_counts",
]

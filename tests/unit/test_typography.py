"""Rendered text stimuli: fonts, determinism, the word really in the image (decoded by template
matching), non-word controls, content digests."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlprobe.data.typography import (
    FONT_PACKAGE,
    TextJob,
    TextStyle,
    find_font,
    nonword_like,
    pixel_digest,
    render_text,
    typographic_stimuli,
    upscale,
    word_card_stimuli,
)
from vlprobe.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def font():
    try:
        return find_font()
    except DataError as exc:
        pytest.skip(f"no font: {exc}")


def _noise(size=(96, 80), seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def _mask(a, b, thr=40):
    diff = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).sum(-1)
    return diff > thr


def _crop(mask):
    ys, xs = np.nonzero(mask)
    return mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]


def _iou(a, b):
    h, w = max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1])
    pa = np.zeros((h, w), bool)
    pb = np.zeros((h, w), bool)
    pa[: a.shape[0], : a.shape[1]] = a
    pb[: b.shape[0], : b.shape[1]] = b
    return (pa & pb).sum() / max((pa | pb).sum(), 1)


def decode(attacked, clean, candidates, style, font):
    """Template matching: the candidate whose rendering (same font, size, style, on a blank
    canvas) best overlaps (IoU of text masks, aligned at their boxes) the pixels the
    rendering changed."""
    seen = _crop(_mask(attacked, clean))
    blank = Image.new("RGB", clean.size, (127, 127, 127))
    scores = []
    for word in candidates:
        tpl = render_text(blank, word, style, seed=0, font_path=font).image
        scores.append(_iou(seen, _crop(_mask(tpl, blank))))
    return candidates[int(np.argmax(scores))], scores


def test_find_font_default_and_clear_errors(font, tmp_path):
    assert font.is_file() and font.suffix == ".ttf"
    with pytest.raises(DataError, match=FONT_PACKAGE) as err:
        find_font(None, dirs=(str(tmp_path),), use_fc_match=False)
    assert "apt-get install" in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        find_font(str(tmp_path / "nope.ttf"))
    with pytest.raises(DataError, match=FONT_PACKAGE):
        find_font("NoSuchFontAnywhere.ttf", dirs=(str(tmp_path),))


@pytest.mark.parametrize("position", ["center", "random", (0.3, 0.7)])
def test_rendering_is_deterministic_for_a_seed(font, position):
    style = TextStyle(position=position)
    img = _noise()
    a = render_text(img, "ship", style, seed=(3, 1), font_path=font)
    b = render_text(img, "ship", style, seed=(3, 1), font_path=font)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.box == b.box
    assert pixel_digest(a.image) == pixel_digest(b.image) != pixel_digest(img)
    c = render_text(img, "ship", style, seed=(4, 1), font_path=font)
    assert (c.box != a.box) == (position == "random")
    assert render_text(img, "", style).box is None  # empty text: the image as is
    assert np.array_equal(np.asarray(render_text(img, "", style).image), np.asarray(img))


@pytest.mark.parametrize("style", [
    TextStyle(),
    TextStyle(position="random", colour=(255, 0, 0), stroke=None),
    TextStyle(position="top", opacity=0.6, size=0.25),
])
def test_the_written_word_is_decoded_by_template_matching(font, style):
    # same-length class names: only the letters tell them apart
    candidates = ["cat", "car", "dog", "cow", "bat", "rat"]
    for k, word in enumerate(candidates):
        clean = upscale(_noise(seed=k), 224)
        attacked = render_text(clean, word, style, seed=(0, k), font_path=font).image
        got, scores = decode(attacked, clean, candidates, style, font)
        assert got == word, (word, dict(zip(candidates, np.round(scores, 3))))


def test_long_words_are_shrunk_to_fit(font):
    r = render_text(_noise((120, 120)), "suspicious person", TextStyle(size=0.5),
                    font_path=font)
    x0, _, x1, _ = r.box
    assert x0 >= 0 and x1 <= 120 and x1 - x0 <= 0.9 * 120 and r.font_px < 60


def test_nonword_control_keeps_length_and_shape():
    rng = np.random.default_rng(0)
    for word in ("cat", "Suspicious person", "t-shirt", "dog"):
        out = nonword_like(word, rng, avoid=["cat", "dog", "cow"])
        assert len(out) == len(word) and out.lower() not in {"cat", "dog", "cow", word.lower()}
        for a, b in zip(word, out):
            assert a.isalpha() == b.isalpha() and (a == b or a.isalpha())
            assert a.isupper() == b.isupper()
    assert nonword_like("ship", np.random.default_rng(5)) == nonword_like(
        "ship", np.random.default_rng(5))


def test_style_params_are_checked():
    s = TextStyle.from_params({"position": [0.2, 0.9], "colour": "#ff0000",
                               "stroke_colour": None}, "M3")
    assert s.position == (0.2, 0.9) and s.colour == (255, 0, 0) and s.stroke is None
    for bad in ({"size": 0}, {"size": 2}, {"position": "left"}, {"position": [0.5]},
                {"colour": "not-a-colour"}, {"colour": [300, 0, 0]}, {"opacity": 0},
                {"stroke_width": 0.9}, {"font": 3}):
        with pytest.raises(ConfigError):
            TextStyle.from_params(bad, "M3")


def _base(n=4, size=32):
    from vlprobe.data._common import array_image_source
    from vlprobe.data.stimuli import Stimuli

    pixels = np.random.default_rng(1).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    ids = [f"test/{i}" for i in range(n)]
    return Stimuli("toy", "test", ids, images=array_image_source(pixels, ids),
                   labels=np.arange(n) % 2, label_names=["cat", "dog"])


def test_typographic_stimuli_carry_content_digests(font):
    base = _base()
    jobs = [TextJob(0, "", "clean"), TextJob(0, "dog", "attack", slot=1, target=1),
            TextJob(0, "xqz", "control", slot=1, target=1), TextJob(3, "cat", "attack", 0, 0)]
    style = TextStyle(position="random")
    a = typographic_stimuli(base, jobs, style, seed=7)
    b = typographic_stimuli(base, jobs, style, seed=7)
    assert a.fingerprint() == b.fingerprint()
    assert a.ids == ["clean/test/0/0", "attack/test/0/1", "control/test/0/1", "attack/test/3/0"]
    for i in range(len(a)):  # digests are sha1 of the rendered pixels, re-rendered lazily
        img = a.images[i]
        assert img.size == (224, 224) and a.images.digests[i] == pixel_digest(img)
    assert a.images.digests[0] == pixel_digest(upscale(base.images[0], 224))
    assert list(a.labels) == [0, 0, 0, 1] and a.descriptors["target"] == [-1, 1, 1, 0]
    # the attack and its control share a slot, hence the same uniform draw of the position
    # (the centre moves by at most half their width difference: the range depends on it)
    (a0, b0, a1, b1), (c0, d0, c1, d1) = [
        render_text(upscale(base.images[0], 224), t, style, seed=(7, 0, 1)).box
        for t in ("dog", "xqz")]
    dw, dh = abs((a1 - a0) - (c1 - c0)), abs((b1 - b0) - (d1 - d0))
    assert abs((a0 + a1) - (c0 + c1)) / 2 <= dw / 2 + 1.5
    assert abs((b0 + b1) - (d0 + d1)) / 2 <= dh / 2 + 1.5
    c = typographic_stimuli(base, jobs, style, seed=8)
    assert c.fingerprint() != a.fingerprint()
    assert typographic_stimuli(base, jobs, style, 7, min_size=None).images[0].size == (32, 32)


def test_word_cards(font):
    style = TextStyle(colour=(0, 0, 0), stroke=None, position="random")
    cards = word_card_stimuli(["cat", "xqz"], [0, -1], ["name", "nonword"], 3, style, seed=1,
                              size=64)
    assert len(cards) == 6 and cards.descriptors["concept"] == [0, 0, 0, -1, -1, -1]
    assert cards.images[0].size == (64, 64)
    assert len(set(cards.images.digests)) == 6  # variants differ (size, position)
    again = word_card_stimuli(["cat", "xqz"], [0, -1], ["name", "nonword"], 3, style, seed=1,
                              size=64)
    assert again.images.digests == cards.images.digests
    with pytest.raises(ConfigError):
        word_card_stimuli(["cat"], [0], ["name"], 0, style, seed=1)

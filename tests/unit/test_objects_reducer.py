"""Same-object attention (F6, seed 003): the ``objects`` reducer on planted attention over a
4 x 4 grid of image tokens with known object boxes, the object context (token boxes x item
boxes), and its errors / documented skips."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vlprobe.errors import ConfigError, DataError
from vlprobe.extract.attention import batch_values
from vlprobe.extract.objects import token_membership
from vlprobe.extract.reducers import AttentionContext, reduce_attention
from vlprobe.modality import TAG_IMAGE, TAG_SPECIAL, TAG_TEXT

G = 4  # 4 x 4 grid
N_TEXT = 3  # [CLS] + 2 words, then the 16 cells
IMAGE = 100  # the image is 100 x 100 pixels
LEFT = [0, 0, 50, 100, "dog"]  # columns 0-1 of the grid
RIGHT = [50, 0, 50, 100, "cat"]  # columns 2-3


def _tags(b: int) -> torch.Tensor:
    t = torch.full((b, N_TEXT + G * G), TAG_IMAGE, dtype=torch.int8)
    t[:, 0] = TAG_SPECIAL
    t[:, 1:N_TEXT] = TAG_TEXT
    return t


def _cell_boxes() -> np.ndarray:
    rows, cols = np.divmod(np.arange(G * G), G)
    return np.stack([cols / G, rows / G, (cols + 1) / G, (rows + 1) / G], 1)


def _trace(b: int, attn: torch.Tensor, site: str = "fusion.blocks.0.attn") -> SimpleNamespace:
    boxes = torch.full((b, N_TEXT + G * G, 4), float("nan"))
    boxes[:, N_TEXT:] = torch.as_tensor(_cell_boxes(), dtype=torch.float32)
    tags = _tags(b)
    return SimpleNamespace(attentions={site: attn}, modality_tags=tags, tags_by_stream={},
                           attention_mask=torch.ones_like(tags), extras={"boxes": boxes},
                           hidden={})


def _items(*boxes: list) -> dict:
    return {"id": [f"img{i}" for i in range(len(boxes))], "boxes": list(boxes),
            "image_size": [[IMAGE, IMAGE]] * len(boxes)}


def _objects(attn: torch.Tensor, items: dict) -> np.ndarray:
    trace = _trace(attn.shape[0], attn)
    return batch_values(trace, "fusion.blocks.0.attn", ["reduce:objects"], items=items)[
        "reduce:objects"]


def _planted(weight: np.ndarray, heads: int = 2) -> torch.Tensor:
    """``[1, H, T, T]``: image queries attend to image keys by ``weight [16, 16]``, rows
    normalised (text / special rows uniform over everything)."""
    t = N_TEXT + G * G
    a = np.full((t, t), 1.0 / t)
    w = weight / weight.sum(1, keepdims=True)
    a[N_TEXT:] = 0.0
    a[N_TEXT:, N_TEXT:] = w
    return torch.tensor(a, dtype=torch.float32)[None, None].repeat(1, heads, 1, 1)


def _side() -> np.ndarray:
    return (np.arange(G * G) % G) >= G // 2  # True = right half


def test_attention_only_within_the_object_gives_mass_one():
    same = _side()[:, None] == _side()[None, :]
    w = same.astype(float) - np.eye(G * G) + np.eye(G * G) * 1e-9
    out = _objects(_planted(w), _items([LEFT, RIGHT]))
    assert out.shape == (1, 2, 5)
    np.testing.assert_allclose(out[0, :, 0], 1.0, atol=1e-6)  # observed same-object mass
    np.testing.assert_allclose(out[0, :, 1], 7 / 15, atol=1e-6)  # chance: 7 of 15 other keys
    np.testing.assert_allclose(out[0, :, 4], 0.0, atol=1e-6)  # nothing on other pairs
    np.testing.assert_allclose(out[0, :, 3], 1 / 7, atol=1e-6)  # uniform inside the object


def test_uniform_attention_gives_the_chance_value():
    t = N_TEXT + G * G
    attn = torch.full((2, 3, t, t), 1.0 / t)  # uniform over every key, text included
    out = _objects(attn, _items([LEFT, RIGHT], [LEFT, RIGHT]))
    np.testing.assert_allclose(out[..., 0], 7 / 15, atol=1e-6)
    np.testing.assert_allclose(out[..., 1], 7 / 15, atol=1e-6)
    np.testing.assert_allclose(out[..., 2], 7 / 15, atol=1e-6)  # flat distance profile
    np.testing.assert_allclose(out[..., 3], 1 / 15, atol=1e-6)
    np.testing.assert_allclose(out[..., 4], 1 / 15, atol=1e-6)


def test_local_attention_beats_chance_but_not_the_distance_control():
    c = _cell_boxes()[:, :2]
    d = np.linalg.norm(c[:, None] - c[None], axis=-1) * G
    w = np.exp(-2.0 * d) * (1 - np.eye(G * G))  # depends on distance only
    out = _objects(_planted(w), _items([LEFT, RIGHT]))[0, 0]
    assert out[0] - out[1] > 0.15  # locality alone lifts the same-object mass over chance
    assert abs(out[0] - out[2]) < 0.05  # ... and the distance-matched control explains it
    same = _side()[:, None] == _side()[None, :]
    w_obj = w * np.where(same, 3.0, 1.0)  # the same locality, plus a preference for the object
    obj = _objects(_planted(w_obj), _items([LEFT, RIGHT]))[0, 0]
    assert obj[0] - obj[2] > 0.1


def test_items_without_boxes_are_nan_and_others_unchanged():
    t = N_TEXT + G * G
    attn = torch.full((2, 1, t, t), 1.0 / t)
    out = _objects(attn, _items([LEFT, RIGHT], []))
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()


def test_bad_boxes_and_missing_context_are_clear_errors():
    t = N_TEXT + G * G
    attn = torch.full((1, 1, t, t), 1.0 / t)
    with pytest.raises(DataError, match=r"item 'img0'.*outside the 100 x 100 image"):
        _objects(attn, _items([[60, 0, 50, 100, "cat"]]))
    with pytest.raises(DataError, match="no area"):
        _objects(attn, _items([[0, 0, 0, 10, "cat"]]))
    with pytest.raises(ConfigError, match="descriptors boxes, image_size"):
        _objects(attn, {"id": ["img0"]})
    trace = _trace(1, attn)
    trace.extras = {}  # a model whose trace has no token boxes (a captioner)
    with pytest.raises(ConfigError, match=r"extras\['boxes'\]"):
        batch_values(trace, "fusion.blocks.0.attn", ["reduce:objects"], items=_items([LEFT]))
    ctx = AttentionContext(_tags(1), _tags(1))  # called without the object context
    with pytest.raises(ConfigError, match="object"):
        reduce_attention("objects", attn, ctx)


def test_other_reducers_ignore_the_items():
    t = N_TEXT + G * G
    attn = torch.softmax(torch.randn(2, 2, t, t, generator=torch.Generator().manual_seed(0)), -1)
    trace = _trace(2, attn)
    with_items = batch_values(trace, "fusion.blocks.0.attn", ["reduce:entropy", "reduce:mass"],
                              items=_items([LEFT], [RIGHT]))
    without = batch_values(trace, "fusion.blocks.0.attn", ["reduce:entropy", "reduce:mass"])
    for k in without:
        np.testing.assert_array_equal(with_items[k], without[k])


def test_text_queries_give_nan_and_two_stream_sites_slice_their_stream():
    # LXMERT-like trace: text stream [CLS] w w, vision stream 16 cells; boxes over [text; vision]
    tt = torch.tensor([[TAG_SPECIAL, TAG_TEXT, TAG_TEXT]], dtype=torch.int8)
    vt = torch.full((1, G * G), TAG_IMAGE, dtype=torch.int8)
    boxes = torch.full((1, N_TEXT + G * G, 4), float("nan"))
    boxes[:, N_TEXT:] = torch.as_tensor(_cell_boxes(), dtype=torch.float32)
    same = _side()[:, None] == _side()[None, :]
    w = same.astype(float) - np.eye(G * G) + np.eye(G * G) * 1e-9
    vision = torch.tensor(w / w.sum(1, keepdims=True), dtype=torch.float32)[None, None]
    t2v = torch.full((1, 1, N_TEXT, G * G), 1.0 / (G * G))
    trace = SimpleNamespace(
        attentions={"cross.blocks.0.vision.attn": vision, "cross.blocks.0.t2v.attn": t2v},
        tags_by_stream={"text": tt, "vision": vt}, modality_tags=torch.cat([tt, vt], 1),
        attention_mask=None, extras={"boxes": boxes}, hidden={})
    items = _items([LEFT, RIGHT])
    got = batch_values(trace, "cross.blocks.0.vision.attn", ["reduce:objects"], items=items)
    np.testing.assert_allclose(got["reduce:objects"][0, 0, 0], 1.0, atol=1e-6)
    got = batch_values(trace, "cross.blocks.0.t2v.attn", ["reduce:objects"], items=items)
    assert np.isnan(got["reduce:objects"]).all()  # text queries: no image-to-image pair


def test_membership_rule():
    cells = _cell_boxes()
    m = token_membership(cells, np.array([[0.0, 0.0, 0.5, 1.0],  # left half: 8 cells
                                          [0.3, 0.3, 0.35, 0.35],  # inside one cell
                                          [0.0, 0.0, 0.3, 0.3]]))  # 1 cell > half covered
    assert m[:, 0].sum() == 8 and m[:, 0].reshape(G, G)[:, :2].all()
    assert np.flatnonzero(m[:, 1]).tolist() == [5]  # the small object owns its cell
    assert np.flatnonzero(m[:, 2]).tolist() == [0]
    nan = cells.copy()
    nan[0] = np.nan  # not an image token
    assert not token_membership(nan, np.array([[0.0, 0.0, 0.5, 1.0]]))[0].any()

"""Streaming attention reducers on planted attention: values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vlprobe.errors import ConfigError  # noqa: E402
from vlprobe.extract.reducers import (  # noqa: E402
    AttentionContext,
    attention_context,
    reduce_attention,
    reduce_many,
    reducer_names,
    register_reducer,
    single_stream_tags,
)
from vlprobe.modality import TAG_IMAGE as I  # noqa: E402
from vlprobe.modality import TAG_PAD as P  # noqa: E402
from vlprobe.modality import TAG_SPECIAL as S  # noqa: E402
from vlprobe.modality import TAG_TEXT as T  # noqa: E402
from vlprobe.models.base import Trace  # noqa: E402

#: one fused item: [CLS] w w [SEP] p p p p pad   (T = 9)
TAGS = torch.tensor([[S, T, T, S, I, I, I, I, P]], dtype=torch.int8)


def planted() -> torch.Tensor:
    """``[1, 2, 9, 9]``: head 0 = every real query spreads uniformly over the 8 real keys;
    head 1 = [CLS] looks only at the words, words look at [CLS], patch 0 puts 0.7 on word 1
    and 0.3 on patch 1, other patches attend to themselves. The pad row/column hold garbage
    (NaN) that must never reach a statistic."""
    a = torch.zeros(1, 2, 9, 9)
    a[0, 0, :8, :8] = 1 / 8
    h = a[0, 1]
    h[0, 1] = h[0, 2] = 0.5
    h[1, 0] = h[2, 0] = h[3, 0] = 1.0
    h[4, 1], h[4, 5] = 0.7, 0.3
    for q in (5, 6, 7):
        h[q, q] = 1.0
    a[0, :, 8, :] = float("nan")
    a[0, :, :, 8] = float("nan")
    return a


#: token vectors of the 9 positions (reducers that read them: ``similarity``)
FEATURES = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 9, 4))).float()


#: boxes of the 9 positions: the 4 patches are a 2 x 2 grid, NaN elsewhere; one object owns
#: the left column (patches 0 and 2) (reducers that read them: ``objects``)
BOXES = torch.full((1, 9, 4), float("nan"))
BOXES[0, 4:8] = torch.tensor([[0, 0, .5, .5], [.5, 0, 1, .5], [0, .5, .5, 1], [.5, .5, 1, 1]])
OBJECTS = torch.zeros(1, 9, 1, dtype=torch.bool)
OBJECTS[0, [4, 6], 0] = True


def ctx() -> AttentionContext:
    return AttentionContext(TAGS, TAGS, query_features=FEATURES, key_features=FEATURES,
                            query_boxes=BOXES, key_boxes=BOXES, query_objects=OBJECTS,
                            key_objects=OBJECTS)


def test_cls_mass_by_hand():
    out = reduce_attention("cls_mass", planted(), ctx())
    assert out.shape == (1, 2, 3)
    np.testing.assert_allclose(out[0, 0], [2 / 8, 2 / 8, 4 / 8], atol=1e-6)
    np.testing.assert_allclose(out[0, 1], [0.0, 1.0, 0.0], atol=1e-6)


def test_mass_matrix_by_hand():
    out = reduce_attention("mass", planted(), ctx())  # [1, 2, q class, k class]
    np.testing.assert_allclose(out[0, 0], np.tile([0.25, 0.25, 0.5], (3, 1)), atol=1e-6)
    # head 1: special queries ([CLS], [SEP]) -> ([CLS]: text 1) and ([SEP]: special 1)
    np.testing.assert_allclose(out[0, 1, 0], [0.5, 0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(out[0, 1, 1], [1.0, 0.0, 0.0], atol=1e-6)  # words -> [CLS]
    np.testing.assert_allclose(out[0, 1, 2], [0.0, 0.7 / 4, 1 - 0.7 / 4], atol=1e-6)


def test_image_to_text_max_by_hand():
    out = reduce_attention("max_image_to_text", planted(), ctx())
    np.testing.assert_allclose(out[0], [2 / 8, 0.7], atol=1e-6)
    no_image = torch.tensor([[S, T, T, S, T, T, T, T, P]], dtype=torch.int8)
    out = reduce_attention("max_image_to_text", planted(), AttentionContext(no_image, no_image))
    assert np.isnan(out).all()


def test_entropy_of_uniform_rows_is_log_n_and_one_hot_rows_zero():
    out = reduce_attention("entropy", planted(), ctx())
    assert out[0, 0] == pytest.approx(math.log(8), abs=1e-5)
    h_patch0 = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    h_cls = math.log(2)
    assert out[0, 1] == pytest.approx((h_cls + h_patch0) / 8, abs=1e-5)


def test_distance_on_a_2x2_grid():
    a = torch.zeros(1, 1, 9, 9)
    a[0, 0, :8, :8] = 1 / 8
    # patches 4..7 = grid (0,0) (0,1) (1,0) (1,1); patch (0,0) attends only to (1,1)
    a[0, 0, 4, :] = 0
    a[0, 0, 4, 7] = 1.0
    out = reduce_attention("distance", a, ctx())
    uniform = (0 + 1 + 1 + math.sqrt(2)) / 4  # mean distance from any patch to all four
    assert out[0, 0] == pytest.approx((math.sqrt(2) + 3 * uniform) / 4, abs=1e-5)


def test_padding_never_leaks_into_any_reducer():
    clean = planted()
    for name in reducer_names():
        out = reduce_attention(name, clean, ctx())
        dirty = clean.clone()
        dirty[0, :, 8, :] = 1e6  # garbage in the padded query row and key column
        dirty[0, :, :, 8] = -3.0
        np.testing.assert_array_equal(out, reduce_attention(name, dirty, ctx()), err_msg=name)


def test_direction_matters_v2t_vs_t2v():
    """Cross-attention: text queries over image keys differ from the reverse."""
    text = torch.tensor([[S, T, T, P]], dtype=torch.int8)
    vision = torch.tensor([[S, I, I]], dtype=torch.int8)
    trace = Trace(tags_by_stream={"text": text, "vision": vision})
    t2v = attention_context(trace, "cross.blocks.0.t2v.attn", (1, 1, 4, 3))
    v2t = attention_context(trace, "cross.blocks.0.v2t.attn", (1, 1, 3, 4))
    assert torch.equal(t2v.query_tags, text) and torch.equal(t2v.key_tags, vision)
    assert torch.equal(v2t.query_tags, vision) and torch.equal(v2t.key_tags, text)
    a = torch.zeros(1, 1, 3, 4)
    a[0, 0, 1:, 1] = 1.0  # both patches look at word 1
    a[0, 0, 0, 0] = 1.0
    assert reduce_attention("max_image_to_text", a, v2t)[0, 0] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="do not match"):
        reduce_attention("max_image_to_text", a, t2v)  # swapped: shapes disagree


def test_single_tower_contexts():
    trace = Trace(attention_mask=torch.tensor([[1, 1, 1, 0]]))
    c = attention_context(trace, "text.blocks.0.attn", (1, 2, 4, 4))
    assert c.query_tags.tolist() == [[T, T, T, P]]
    v = attention_context(Trace(), "vision.blocks.0.attn", (2, 2, 5, 5))
    assert v.query_tags[0].tolist() == [S, I, I, I, I]
    assert single_stream_tags(torch.ones(1, 3), "vision", False).tolist() == [[I, I, I]]


def test_unknown_reducer_suggests_and_registration_is_open(monkeypatch):
    import vlprobe.extract.reducers as reducers

    monkeypatch.setattr(reducers, "_REDUCERS", dict(reducers._REDUCERS))
    with pytest.raises(ConfigError, match="Did you mean entropy"):
        reduce_attention("entropie", planted(), ctx())

    @register_reducer("test_row_sum", "[B, H] mean row sum (a test reducer)")
    def row_sum(a, c):
        return a.sum(-1)[:, :, :8].mean(-1)

    out = reduce_attention("test_row_sum", planted(), ctx())
    np.testing.assert_allclose(out[0], [1.0, 1.0], atol=1e-6)
    with pytest.raises(ValueError, match="twice"):
        register_reducer("test_row_sum")(row_sum)


def test_distance_is_nan_without_a_square_patch_grid_and_per_item_otherwise():
    """Two items in one batch: item 0 has 4 patches at positions 4..7 (a 2 x 2 grid), item 1
    only 3 (no square grid: NaN); item 0's value does not depend on its batch neighbour."""
    tags = torch.tensor([[S, T, T, S, I, I, I, I, P],
                         [S, T, S, I, I, I, P, P, P]], dtype=torch.int8)
    a = torch.zeros(2, 1, 9, 9)
    a[:, 0, :, :] = 1 / 9
    a[0, 0, 4, :] = 0
    a[0, 0, 4, 7] = 1.0  # patch (0,0) -> patch (1,1) only
    out = reduce_attention("distance", a, AttentionContext(tags, tags))
    uniform = (0 + 1 + 1 + math.sqrt(2)) / 4
    assert out[0, 0] == pytest.approx((math.sqrt(2) + 3 * uniform) / 4, abs=1e-5)
    assert np.isnan(out[1, 0])
    alone = reduce_attention("distance", a[:1], AttentionContext(tags[:1], tags[:1]))
    assert alone[0, 0] == pytest.approx(out[0, 0], abs=1e-6)


def test_reduce_many_equals_each_reducer_alone():
    many = reduce_many(reducer_names(), planted(), ctx())
    assert sorted(many) == reducer_names()
    for name in reducer_names():
        np.testing.assert_array_equal(many[name], reduce_attention(name, planted(), ctx()))


def test_objects_on_the_planted_map_by_hand():
    out = reduce_attention("objects", planted(), ctx())
    # head 0: uniform -> patches 0 and 2 each put 1/3 of their image attention on the other
    assert out[0, 0, 0] == pytest.approx(1 / 3) and out[0, 0, 1] == pytest.approx(1 / 3)
    # head 1: patch 0 puts its image attention on patch 1 (other object); patch 2 only on
    # itself, which is left out: no attention on other image keys -> patch 2 drops out
    assert out[0, 1, 0] == pytest.approx(0.0) and out[0, 1, 1] == pytest.approx(1 / 3)

"""V7 attention maps: rollout, Chefer relevance, planted attention, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attention_fakes import PlantedViT, cls_attention, image_stimuli, source_with

from vlprobe.analyses.fusion.attention_maps import AttentionMaps
from vlprobe.analyses.fusion.attention_math import (
    AttentionStep,
    propagate_relevance,
    rollout,
)
from vlprobe.analyses.fusion.attention_models import batch_maps, map_plan
from vlprobe.errors import AnalysisError


def _softmax_rows(rng, shape):
    x = rng.normal(size=shape)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# -- rollout ------------------------------------------------------------------------------
def test_rollout_of_identity_attention_is_identity():
    eye = np.broadcast_to(np.eye(5), (2, 5, 5))  # [H, T, T]
    np.testing.assert_allclose(rollout([eye, eye, eye]), np.eye(5))
    np.testing.assert_allclose(rollout([eye, eye], residual=False), np.eye(5))


def test_rollout_matches_a_hand_computation():
    a1 = np.array([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]],
                   [[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]])  # 2 heads
    a2 = np.array([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])  # 1 head
    # by hand: layer 1 head mean, (A + I) / 2 (rows already sum to 1)
    m1 = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    h1 = (m1 + np.eye(3)) / 2  # [[.75,.25,0],[.25,.75,0],[0,.25,.75]]
    h2 = (a2[0] + np.eye(3)) / 2  # [[.5,0,.5],[.5,.5,0],[0,.5,.5]]
    expected = np.array([[0.375, 0.25, 0.375], [0.5, 0.5, 0.0], [0.125, 0.5, 0.375]])
    np.testing.assert_allclose(h2 @ h1, expected)
    np.testing.assert_allclose(rollout([a1, a2]), expected)
    # the order of layers matters (a later layer multiplies from the left)
    assert not np.allclose(rollout([a2, a1]), expected)


def test_single_stream_relevance_rule_by_hand():
    rng = np.random.default_rng(0)
    c1, c2 = rng.random((4, 4)), rng.random((4, 4))
    r = propagate_relevance([AttentionStep("s", "s", c1, 0), AttentionStep("s", "s", c2, 1)],
                            {"s": 4})[("s", "s")]
    r1 = np.eye(4) + c1
    np.testing.assert_allclose(r, r1 + c2 @ r1)


def test_co_attention_rule_and_its_direction():
    rng = np.random.default_rng(1)
    t2v = rng.random((3, 5))  # text queries over vision keys
    r = propagate_relevance([AttentionStep("text", "vision", t2v, 0)],
                            {"text": 3, "vision": 5})
    # R^tt = R^vv = I: R-bar = I, so R^tv += I t2v I and R^tt += t2v R^vt (= 0)
    np.testing.assert_allclose(r[("text", "vision")], t2v)
    np.testing.assert_allclose(r[("vision", "text")], 0.0)
    np.testing.assert_allclose(r[("text", "text")], np.eye(3))
    # the same map read the other way (v2t) fills the other block
    swapped = propagate_relevance([AttentionStep("vision", "text", t2v.T, 0)],
                                  {"text": 3, "vision": 5})
    np.testing.assert_allclose(swapped[("text", "vision")], 0.0)
    np.testing.assert_allclose(swapped[("vision", "text")], t2v.T)


# -- planted attention ----------------------------------------------------------------------
def test_planted_cls_attention_gives_a_map_peaked_at_the_patch(tmp_path):
    k = 5
    model = PlantedViT(cls_attention(g=3, n_layers=2, n_heads=2, target=k))
    src = source_with({"m": model}, image_stimuli(3, size=(30, 30)))
    result = AttentionMaps(["m"], "toy", {"n_images": 2, "relevance": False}).run(src)
    maps = result.extra_tables["maps"]
    for row in maps.itertuples():
        assert int(np.argmax(row.last_mean)) == k
        assert row.last_mean[k] == pytest.approx(1.0)
        # rollout keeps the class token's own share (the residual): still peaked at k
        assert int(np.argmax(row.rollout)) == k
    t = result.table
    ent = t[(t.metric == "map_entropy") & (t.method == "raw")]
    assert np.allclose(ent["value"], 0.0)  # all mass on one patch
    mass = t[(t.metric == "image_mass") & (t.method == "raw")]
    assert np.allclose(mass["value"], 1.0)
    assert model.calls == ["forward"]  # relevance off: no graph kept


def test_relevance_is_zero_for_a_masked_token_and_matches_finite_differences():
    rng = np.random.default_rng(0)
    g, masked = 2, 3  # patch 3 = token 4 is masked out as a key
    attn = _softmax_rows(rng, (1, 2, 1 + g * g, 1 + g * g))
    key_mask = np.ones(1 + g * g)
    key_mask[1 + masked] = 0
    model = PlantedViT(attn, key_mask=key_mask)
    image = image_stimuli(1, size=(16, 16)).payloads("image", [0])
    plan = map_plan(model, "m")
    item = batch_maps(plan, model, image, "class_logit")[0]
    assert item.relevance[masked] == 0.0
    assert (item.relevance[np.arange(g * g) != masked] > 0).any()
    # one layer: R = I + E_h[(dy/dA * A)^+], so relevance of patch j = row 0, column 1 + j;
    # dy/dA by central finite differences of the planted model's top logit
    batch = model.prepare(image, "image")

    def top_logit(a):
        old = model.attention
        model.attention = a
        try:
            with torch.no_grad():
                logits = model._run(batch).hidden["vision.logits"][0]
        finally:
            model.attention = old
        return float(logits.max())

    base, eps = model.attention.copy(), 1e-6
    expected = np.zeros(g * g)
    for j in range(g * g):
        per_head = []
        for h in range(base.shape[1]):
            up, down = base.copy(), base.copy()
            up[0, h, 0, 1 + j] += eps
            down[0, h, 0, 1 + j] -= eps
            grad = (top_logit(up) - top_logit(down)) / (2 * eps)
            per_head.append(max(0.0, grad * base[0, h, 0, 1 + j]))
        expected[j] = np.mean(per_head)
    np.testing.assert_allclose(item.relevance, expected, rtol=1e-4, atol=1e-9)


# -- bad input ------------------------------------------------------------------------------
class _NoAttention:
    family = "cnn"
    modalities = ("image",)

    def sites(self):
        return ["vision.stem", "vision.blocks.0", "vision.pooled"]


class _TextOnly:
    family = "bert"
    modalities = ("text",)

    def sites(self):
        return ["text.blocks.0.attn", "text.blocks.0"]


@pytest.mark.parametrize("adapter, match", [
    (_NoAttention(), "no attention sites"),
    (_TextOnly(), "need a model that sees images"),
])
def test_models_without_image_attention_are_refused(adapter, match):
    src = source_with({"m": adapter}, image_stimuli(2))
    with pytest.raises(AnalysisError, match=match):
        AttentionMaps(["m"], "toy", {}).run(src)


def test_relevance_true_without_a_target_is_an_error():
    model = PlantedViT(cls_attention(2, 1, 1, 0))
    model.sites = lambda: ["vision.blocks.0.attn"]  # no vision.logits: no target
    src = source_with({"m": model}, image_stimuli(2))
    with pytest.raises(AnalysisError, match="no relevance target"):
        AttentionMaps(["m"], "toy", {"relevance": True}).run(src)
    notes = AttentionMaps(["m"], "toy", {"relevance": "auto"}).run(src).notes
    assert any("no gradient relevance" in n for n in notes)


def test_forward_attached_keeps_attention_in_the_graph(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny_models import tiny_vit
    from vlprobe.models import load_model

    adapter = load_model(tiny_vit(tmp_path))
    images = image_stimuli(2, size=(40, 32)).payloads("image", [0, 1])
    batch = adapter.prepare(images, "image")
    site = "vision.blocks.1.attn"
    plain = adapter.forward(batch, [site]).attentions[site]
    live = adapter.forward_attached(batch, [site, "vision.blocks.1"])
    assert live.attentions[site].requires_grad and not plain.requires_grad
    torch.testing.assert_close(live.attentions[site].detach().float().cpu(), plain)
    grad, = torch.autograd.grad(live.hidden["vision.blocks.1"].sum(), [live.attentions[site]])
    assert grad.shape == plain.shape and grad.abs().sum() > 0


def test_auto_layers_of_the_head_figure():
    from vlprobe.analyses.fusion.attention_maps import shown_layers

    assert shown_layers("auto", 4) == [0, 1, 2, 3]
    assert shown_layers("auto", 12) == [0, 2, 4, 7, 9, 11]
    assert shown_layers("all", 3) == [0, 1, 2]
    assert shown_layers([1, 7], 4) == [1]

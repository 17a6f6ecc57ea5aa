"""F1 fusion degree, F2 modality importance, F3 image-to-text heads, F6 attention statistics:
the k-means NMI against scikit-learn, planted attention through the reducers, direction
conventions, bad input, and all four analyses from ONE extraction pass per model on tiny
VisualBERT / LXMERT (forward calls counted)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fusion_fakes import fusion_source  # noqa: E402
from test_data_flickr8k import write_split  # noqa: E402

from _helpers import record_forwards, tiny_model_entry  # noqa: E402
from tiny_models import tiny_spec  # noqa: E402
from vlprobe.analyses import ANALYSES  # noqa: E402
from vlprobe.config import parse_config  # noqa: E402
from vlprobe.errors import ConfigError  # noqa: E402
from vlprobe.extract.reducers import AttentionContext, reduce_attention  # noqa: E402
from vlprobe.extract.token_nmi import fusion_nmi, kmeans2, nmi  # noqa: E402
from vlprobe.feature_source import RunFeatureSource  # noqa: E402
from vlprobe.modality import TAG_IMAGE, TAG_PAD, TAG_SPECIAL, TAG_TEXT  # noqa: E402
from vlprobe.pooling import pool_numpy  # noqa: E402
from vlprobe.run_plan import plan_run  # noqa: E402

S, T, IM, P = TAG_SPECIAL, TAG_TEXT, TAG_IMAGE, TAG_PAD


def _tags(n_text: int, n_image: int, pad: int = 0) -> np.ndarray:
    return np.array([S] + [T] * n_text + [S] + [IM] * n_image + [P] * pad)


# -- F1: k-means + NMI ----------------------------------------------------------------------
def test_nmi_equals_scikit_learns_on_the_same_clusters():
    from sklearn.metrics import normalized_mutual_info_score

    rng = np.random.default_rng(0)
    tags = np.stack([_tags(5 + b % 4, 9, pad=3 - b % 4) for b in range(12)])
    x = rng.normal(size=(12, tags.shape[1], 6))
    x[:, :, 0] += 1.5 * (tags == IM)  # partly separable
    valid = (tags == T) | (tags == IM)
    labels = kmeans2(x, valid, seed=3)
    assert ((labels >= 0) == valid).all()
    classes = (tags == IM).astype(int)
    ours = nmi(labels, classes, valid)
    ref = [normalized_mutual_info_score(classes[b][valid[b]], labels[b][valid[b]])
           for b in range(12)]
    assert np.allclose(ours, ref, atol=1e-12)
    assert len(set(np.round(ref, 6))) > 3  # the check saw varied values, not one constant
    # sklearn's limit cases: one class and one cluster -> 1; independent labelings -> 0
    one = np.ones((1, 4), dtype=bool)
    assert nmi(np.zeros((1, 4), int), np.zeros((1, 4), int), one)[0] == 1.0
    assert nmi(np.array([[0, 1, 0, 1]]), np.array([[0, 0, 1, 1]]), one)[0] == 0.0


def test_fusion_nmi_is_one_for_unmixed_and_near_zero_for_mixed_tokens():
    rng = np.random.default_rng(1)
    tags = np.stack([_tags(8, 16)] * 40)
    mixed = rng.normal(size=(40, tags.shape[1], 16))
    apart = mixed + 8.0 * (tags == IM)[..., None]
    assert np.array_equal(fusion_nmi(apart, tags), np.ones((40, 1), np.float32))
    assert fusion_nmi(mixed, tags).mean() < 0.1
    # through the pooling (the extraction pass's path): [B, 1], seeded by the method name
    assert pool_numpy(apart, "fusion_nmi", modality_tags=tags).shape == (40, 1)
    with pytest.raises(ConfigError, match="modality tags"):
        pool_numpy(apart, "fusion_nmi")
    no_image = np.stack([_tags(8, 0, pad=16)])
    assert np.isnan(fusion_nmi(mixed[:1], no_image)).all()


def test_fusion_nmi_is_seeded_and_independent_of_the_batch():
    rng = np.random.default_rng(2)
    tags = np.stack([_tags(6, 10, pad=2), _tags(8, 10)])
    x = rng.normal(size=(2, tags.shape[1], 5))
    both = fusion_nmi(x, tags, seed=4)
    alone = fusion_nmi(x[1:], tags[1:], seed=4)
    assert both[1] == alone[0]  # an item's value does not depend on its batch
    # trimming the padding (a differently bucketed batch) changes nothing either
    assert fusion_nmi(x[:1, :-2], tags[:1, :-2], seed=4)[0] == both[0]
    assert np.array_equal(fusion_nmi(x, tags, seed=4), both)


# -- reducers on planted attention ------------------------------------------------------------
def _planted(h: int = 3) -> tuple[torch.Tensor, AttentionContext]:
    """One item [CLS] t t [SEP] i i i i; head 1 of it: every image query puts 0.8 on text."""
    tags = torch.from_numpy(_tags(2, 4)[None])
    n = tags.shape[1]
    a = torch.full((1, h, n, n), 1.0 / n)
    img = (tags[0] == IM).nonzero().flatten()
    txt = (tags[0] == T).nonzero().flatten()
    for q in img:
        a[0, 1, q] = 0.2 / (n - len(txt))
        a[0, 1, q, txt] = 0.8 / len(txt)
    return a, AttentionContext(tags, tags)


def test_uniform_rows_have_entropy_log_t_key():
    a, ctx = _planted()
    ent = reduce_attention("entropy", a, ctx)[0]
    assert np.isclose(ent[0], np.log(a.shape[-1]), atol=1e-5)
    assert ent[1] < ent[0]


def test_f3_finds_exactly_the_planted_heads():
    a, ctx = _planted()
    best = reduce_attention("max_image_to_text", a, ctx)[0]
    assert (best > 0.5).tolist() == [False, True, False]
    src = fusion_source(image_to_text_heads=((0, 1), (2, 0)))
    table = ANALYSES.get("F3")(["m"], "toy", {}).run(src).table
    hot = table[(table["metric"] == "p_image_to_text") & table["head"].notna()
                & (table["value"] == 1.0)]
    assert sorted(zip(hot["layer"], hot["head"])) == [(1, 1), (3, 0)]
    assert table.loc[(table["metric"] == "p_image_to_text") & table["head"].notna(),
                     "value"].isin([0.0, 1.0]).all()


def test_direction_v2t_and_t2v_give_different_answers():
    """The same cross map [1, H, 4 image, 3 text] read as v2t (image queries over text keys)
    or, wrongly, with the streams swapped: the image-to-text statistic changes."""
    text = torch.tensor([[S, T, T]])
    vision = torch.tensor([[IM, IM, IM, IM]])
    a = torch.zeros(1, 1, 4, 3)
    a[..., 0] = 0.7  # 0.7 of every image query on [CLS]
    a[..., 1:] = 0.15
    v2t = reduce_attention("max_image_to_text", a, AttentionContext(vision, text))
    assert np.isclose(v2t[0, 0], 0.3)
    swapped = reduce_attention("max_image_to_text", a.transpose(2, 3),
                               AttentionContext(text, vision))
    assert np.isnan(swapped[0, 0])  # text queries: no image query at all


def test_similarity_reducer_on_planted_features():
    tags = torch.tensor([[S, T, IM, IM, IM]])
    f = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 1]]])
    a = torch.zeros(1, 2, 5, 5)
    a[0, 0, 2, 3] = a[0, 0, 3, 2] = a[0, 0, 4, 2] = 1.0  # head 0: to the twin (or token 2)
    a[0, 1, 2, 4] = a[0, 1, 3, 4] = a[0, 1, 4, 3] = 1.0  # head 1: to the orthogonal one
    for q in (0, 1):
        a[0, :, q, q] = 1.0
    ctx = AttentionContext(tags, tags, query_features=f, key_features=f)
    out = reduce_attention("similarity", a, ctx)[0]
    assert np.allclose(out[:, 0], [2 / 3, 0.0])  # queries 2, 3 hit a twin; 4 never
    assert np.allclose(out[:, 1], [1 / 3, 1 / 3])  # uniform: (1/2 + 1/2 + 0) / 3
    with pytest.raises(ConfigError, match="token vectors"):
        reduce_attention("similarity", a, AttentionContext(tags, tags))


# -- bad input ----------------------------------------------------------------------------------
def test_f2_refuses_models_without_a_cls_over_a_fused_sequence():
    src = fusion_source()
    src.attention["m"] = ["text.blocks.0.attn", "cross.blocks.0.t2v.attn"]  # a captioner
    with pytest.raises(ConfigError, match=r"\[CLS\].*captioners"):
        ANALYSES.get("F2")(["m"], "toy", {}).requests(src)
    src.attention["m"] = []
    for name in ("F2", "F6"):
        with pytest.raises(ConfigError, match="no attention sites"):
            ANALYSES.get(name)(["m"], "toy", {}).requests(src)
    with pytest.raises(ConfigError, match="image queries over text"):
        ANALYSES.get("F3")(["m"], "toy", {}).requests(src)
    src.layers["m"] = ["text.stem", "text.blocks.0"]
    with pytest.raises(ConfigError, match="no sequence that holds both modalities"):
        ANALYSES.get("F1")(["m"], "toy", {}).requests(src)
    src.modalities["m"] = ("image",)
    with pytest.raises(ConfigError, match="does not read"):
        ANALYSES.get("F1")(["m"], "toy", {}).requests(src)
    with pytest.raises(ConfigError, match="threshold"):
        ANALYSES.get("F3")(["m"], "toy", {"threshold": 1.5})


# -- one pass per model on tiny VisualBERT / LXMERT ----------------------------------------------
def _run_config(tmp_path) -> dict:
    write_split(tmp_path / "flickr", "test", 5, 0,
                captions=[[f"a red cat sits on the tree number {i}"] * 5 for i in range(5)])
    models = {name: tiny_model_entry(name, tmp_path / "tiny")
              for name in ("visual_bert", "lxmert")}
    return {
        "name": "fusion", "output_dir": str(tmp_path / "runs"),
        "cache_dir": str(tmp_path / "cache"), "models": models,
        "datasets": {"flickr": {"loader": "flickr8k", "path": str(tmp_path / "flickr"),
                                "options": {"captions_per_image": 2}}},
        "analyses": [
            {"analysis": a, "models": ms, "dataset": "flickr"}
            for a, ms in (("F1", ["visual_bert", "lxmert"]), ("F2", ["visual_bert"]),
                          ("F3", ["visual_bert", "lxmert"]), ("F6", ["visual_bert", "lxmert"]))
        ],
        "extraction": {"batch_size": 4, "shard_size": 16},
    }


def test_all_fusion_analyses_come_from_one_pass_per_model(tmp_path):
    cfg = parse_config(_run_config(tmp_path))
    source = RunFeatureSource(cfg, progress=False)
    calls = record_forwards(source, ("visual_bert", "lxmert"),
                            lambda model, batch, sites, _: (model, tuple(sites), len(batch)))
    plan = plan_run(cfg, source, cache=None, versions={})
    assert not plan.errors and all(p.error is None for p in plan.analyses)
    assert len(plan.groups) == 2  # one extraction group per model
    assert source.extract_groups(plan.groups) == []
    n_items = 10  # 5 images x 2 captions: batches of 4 -> 3 forwards per model
    for model in ("visual_bert", "lxmert"):
        mine = [c for c in calls if c[0] == model]
        assert len(mine) == 3 and sum(c[2] for c in mine) == n_items
    lx = next(c for c in calls if c[0] == "lxmert")[1]
    assert "cross.blocks.0" in lx and "cross.blocks.0.v2t.attn" in lx
    assert "vision.stem" in lx  # the similarity reducer's token vectors, same forward
    calls.clear()
    results = {}
    for planned in plan.analyses:
        results[planned.entry.analysis] = planned.analysis.run(source)
    assert calls == []  # every analysis read the one pass
    f1 = results["F1"].table
    nmi_rows = f1[f1["metric"] == "nmi"]
    assert set(nmi_rows["model"]) == {"visual_bert", "lxmert"}
    assert nmi_rows["value"].between(0, 1).all() and (nmi_rows["n"] == n_items).all()
    assert list(nmi_rows.loc[nmi_rows["model"] == "lxmert", "site"]) == [
        "cross.blocks.0", "cross.blocks.1"]
    f2 = results["F2"].table
    assert {"text_importance", "image_importance"} <= set(f2["metric"])
    f3 = results["F3"].table
    assert f3.loc[f3["model"] == "lxmert", "site"].str.endswith(".v2t.attn").all()
    f6 = results["F6"].table
    ent = f6[(f6["metric"] == "entropy") & f6["head"].notna()]
    assert (ent["value"] > 0).all()
    assert {"attention_distance", "attention_similarity"} <= set(f6["metric"])


def test_lxmert_joint_site_is_text_then_vision(tmp_path):
    from PIL import Image

    from vlprobe.models import load_model

    a = load_model(tiny_spec("lxmert", tmp_path))
    assert "cross.blocks.1" in a.sites() and a.layer_index("cross.blocks.1") is None
    image = Image.new("RGB", (64, 64), (30, 120, 200))
    batch = a.prepare([(image, "a cat"), (image, "a big red dog runs")], "pair")
    trace = a.forward(batch, ["cross.blocks.1", "cross.blocks.1.text", "cross.blocks.1.vision"])
    joint = torch.cat([trace.hidden["cross.blocks.1.text"],
                       trace.hidden["cross.blocks.1.vision"]], dim=1)
    assert torch.equal(trace.hidden["cross.blocks.1"], joint)
    assert trace.modality_tags.shape == joint.shape[:2]

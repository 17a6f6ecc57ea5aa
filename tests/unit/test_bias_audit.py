"""M4 bias audit: the caption-word group rule, rates recovered from a planted model with
bootstrap CIs that cover the planted rates, the label set as a design variable, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from test_dual_fakes import DualFakeSource, image_split

from vlprobe.analyses import ANALYSES
from vlprobe.analyses.multimodal.bias_audit import (
    DEFAULT_GROUP_WORDS,
    BiasAudit,
    caption_groups,
)
from vlprobe.data.stimuli import Stimuli
from vlprobe.errors import AnalysisError, ConfigError, DataError

SETS = {
    "base": {"people": ["a man", "a woman"], "crime-related": ["a thief"],
             "occupations": ["a doctor"]},
    "with_child": {"people": ["a man", "a woman", "a child"], "crime-related": ["a thief"],
                   "occupations": ["a doctor"]},
}
VOCAB = ["a man", "a woman", "a child", "a thief", "a doctor"]
#: planted P(top label = "a thief") per group
P_THIEF = {"man": 0.3, "woman": 0.1, "boy": 0.45, "girl": 0.2}


def _data(n=400, seed=0):
    """Images with 2 captions each; group = i % 4 (every 10th image names two groups)."""
    rng = np.random.default_rng(seed)
    groups = [list(DEFAULT_GROUP_WORDS)[i % 4] for i in range(n)]
    caps, vec = [], {}
    for i, g in enumerate(groups):
        caps.append(["a man and a woman talk", "two people"] if i % 10 == 9
                    else [f"A {g.capitalize()} walks.", "someone outside"])
        thief = rng.random() < P_THIEF[g]
        v = np.zeros(len(VOCAB))
        if g == "boy" and thief:  # a boy's image: nearest "a child", then "a thief"
            v[VOCAB.index("a child")], v[VOCAB.index("a thief")] = 0.9, 0.5
        else:
            v[VOCAB.index("a thief" if thief else "a doctor")] = 1.0
        vec[f"test/{i}"] = v
    return groups, caps, vec


def planted(vec):
    def encode(stim, modality, site):
        if modality == "text":  # one direction per label
            return np.stack([np.eye(len(VOCAB))[VOCAB.index(stim.label_names[c])]
                             for c in stim.labels])
        return np.stack([vec[i] for i in stim.ids])
    return encode


def _source(stim, vec, modalities=("image", "text")):
    return DualFakeSource({"test": stim}, {"m": planted(vec)}, modalities={"m": modalities})


def test_registered():
    assert ANALYSES.get("M4") is BiasAudit and ANALYSES.canonical("M4") == "bias_audit"


def test_caption_group_rule():
    caps = [["A man rides a bike.", "a person on a bike"],
            ["Two boys play.", "kids playing"],
            ["a man and his son", "a boy and a man"],  # two groups: left out
            ["a dog runs", "the dog"],                  # no group word
            ["a manhole cover", "German shepherd"],     # 'man' only inside words: none
            ["The WOMEN laugh", "ladies at a party"]]
    groups, left = caption_groups(caps, DEFAULT_GROUP_WORDS)
    assert groups == ["man", "boy", None, None, None, "woman"]
    assert left == {"no_group_word": 2, "several_groups": 1}


def test_planted_rates_are_recovered_and_covered():
    groups, caps, vec = _data()
    stim = image_split(np.zeros(len(caps), int), ["x"], descriptors={"captions": caps})
    res = BiasAudit(["m"], "toy", {"label_sets": SETS, "n_boot": 500}, seed=0).run(
        _source(stim, vec))
    t = res.table
    kept = [i for i in range(len(caps)) if i % 10 != 9]
    for g, p in P_THIEF.items():
        mine = [i for i in kept if groups[i] == g]
        thief = np.array([vec[f"test/{i}"][VOCAB.index("a thief")] > 0 for i in mine])
        row = t[(t.label_set == "base") & (t.metric == "label_rate") & (t.group == g)
                & (t.label == "a thief")].iloc[0]
        assert row["n"] == len(mine) >= 80
        assert row["value"] == pytest.approx(thief.mean())  # exactly the planted draws
        assert row["ci_low"] <= p <= row["ci_high"], (g, p, row["ci_low"], row["ci_high"])
        assert row["ci_high"] - row["ci_low"] < 0.3
        cat = t[(t.label_set == "base") & (t.metric == "category_rate") & (t.group == g)
                & (t.category == "crime-related")].iloc[0]
        assert cat["value"] == pytest.approx(row["value"])
    # rates of a group over the labels of a set sum to 1
    sums = t[t.metric == "label_rate"].groupby(["label_set", "group"])["value"].sum()
    assert np.allclose(sums, 1.0)
    gap = t[(t.metric == "category_gap") & (t.label_set == "base")
            & (t.category == "crime-related")].iloc[0]
    assert gap["group"] == "boy - woman" and gap["ci_low"] > 0
    assert list(res.extra_tables["groups"]["group"]) == ["man", "woman", "boy", "girl"]
    notes = " ".join(res.notes)
    assert "not a claim about people" in notes and "Hendricks" in notes
    assert "40 words of several groups" in notes and "limits" in notes
    assert set(res.figures) == {"rates_m"}


def test_label_set_design_changes_the_rates():
    """Adding 'a child' takes the boys' images that the base set sends to 'a thief'."""
    _, caps, vec = _data()
    stim = image_split(np.zeros(len(caps), int), ["x"], descriptors={"captions": caps})
    t = BiasAudit(["m"], "toy", {"label_sets": SETS, "n_boot": 0}, seed=0).run(
        _source(stim, vec)).table
    crime = t[(t.metric == "category_rate") & (t.category == "crime-related")]
    crime = crime.set_index(["label_set", "group"])["value"]
    assert crime[("base", "boy")] > 0.3 and crime[("with_child", "boy")] == 0.0
    for g in ("man", "woman", "girl"):
        assert crime[("base", g)] == crime[("with_child", g)]
    assert t["ci_low"].isna().all()  # n_boot 0: no intervals


def test_paired_caption_view_and_label_groups():
    groups, caps, vec = _data(n=80)
    base = image_split(np.zeros(len(caps), int), ["x"])
    # a paired split: one item per caption, image_id groups the captions of an image
    rows = [i for i, c in enumerate(caps) for _ in c]
    paired = Stimuli("toy", "test", [f"test/{i}#{k}" for i, c in enumerate(caps)
                                      for k in range(len(c))],
                     images=base.images.subset(rows), texts=[x for c in caps for x in c],
                     descriptors={"image_id": [f"test/{i}" for i in rows]})
    params = {"label_sets": SETS, "n_boot": 50, "min_group_size": 5}
    a = BiasAudit(["m"], "toy", params).run(_source(paired, vec)).table
    by_desc = image_split(np.zeros(len(caps), int), ["x"], descriptors={"captions": caps})
    b = BiasAudit(["m"], "toy", params).run(_source(by_desc, vec)).table
    assert a["value"].tolist() == b["value"].tolist()
    # groups from class labels (an image folder per group)
    names = list(DEFAULT_GROUP_WORDS)
    labelled = image_split([names.index(g) for g in groups], names)
    c = BiasAudit(["m"], "toy", {**params, "groups_from": "labels"}).run(
        _source(labelled, vec)).table
    n = c[c.metric == "category_rate"].groupby("group")["n"].first()
    assert (n == 20).all()  # every image counts, none is ambiguous


def test_bad_input():
    _, caps, vec = _data(n=40)
    stim = image_split(np.zeros(len(caps), int), ["x"], descriptors={"captions": caps})
    with pytest.raises(AnalysisError, match="no text tower"):
        BiasAudit(["m"], "toy", {"label_sets": SETS}).run(_source(stim, vec, ("image",)))
    with pytest.raises(AnalysisError, match="no image"):
        BiasAudit(["m"], "toy", {"label_sets": SETS, "min_group_size": 50}).run(
            _source(stim, vec))
    bare = image_split(np.zeros(len(caps), int), ["x"])
    with pytest.raises(DataError, match="captions"):
        BiasAudit(["m"], "toy", {"label_sets": SETS}).run(_source(bare, vec))
    for bad in (
        {"label_sets": {"s": {"people": ["a man", "A man "]}}},   # duplicate
        {"label_sets": {"s": {"people": ["a man", ""]}}},          # empty
        {"label_sets": {"s": {"people": []}}},
        {"label_sets": []},
        {"group_words": {"man": ["man"], "woman": ["man"]}},       # a word in two groups
        {"group_words": {"man": ["man"]}},                         # one group
        {"group_words": {"man": ["old man"], "woman": ["woman"]}},  # not a single word
        {"groups_from": "faces"},
        {"templates": ["no slot"]},
        {"n_boot": -1},
    ):
        with pytest.raises(ConfigError):
            BiasAudit(["m"], "toy", bad)

"""T2 chunking: NMI vs sklearn, planted span vectors, held-out sampling, end to end."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score
from test_analysis_fakes import FakeSource
from test_conll import write_fixture

from vlprobe.analyses import ANALYSES
from vlprobe.analyses.base import LayerFeatures
from vlprobe.analyses.text.chunking import Chunking, kmeans_nmi, sentence_keys, split_fit_eval
from vlprobe.errors import AnalysisError, ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_registered_with_alias():
    assert ANALYSES.get("T2") is Chunking
    assert ANALYSES.canonical("T2") == "chunking"


def test_kmeans_nmi_matches_sklearn():
    """The headline ``nmi`` is the in-sample clustering NMI (k-means labels of the spans it
    was fitted on); the held-out nearest-centroid NMI is ``nmi_heldout``."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6))
    y = rng.integers(0, 3, 120)
    x[:, 0] += 2 * y
    m = kmeans_nmi(x[:90], y[:90], x[90:], y[90:], k=3, seed=0, n_init=4)
    km = KMeans(n_clusters=3, n_init=4, random_state=0).fit(x[:90])
    in_sample = normalized_mutual_info_score(y[:90], km.labels_)
    held_out = normalized_mutual_info_score(y[90:], km.predict(x[90:]))
    assert abs(in_sample - held_out) > 1e-3  # the two metrics are told apart here
    assert set(m) == {"nmi", "nmi_heldout"}
    assert m["nmi"] == pytest.approx(in_sample)
    assert m["nmi_heldout"] == pytest.approx(held_out)


def test_split_fit_eval_is_seeded_and_sentence_disjoint():
    ids = [f"train/{s}:{j}-{j + 1}" for s in range(40) for j in range(5)]
    groups = sentence_keys(ids)
    assert groups[0] == "train/0" and sentence_keys(["x"]) == ["x"]
    cand = np.arange(len(ids))
    fit, ev = split_fit_eval(groups, cand, 60, 30, seed=3)
    assert len(fit) == 60 and len(ev) == 30
    assert not {groups[i] for i in fit} & {groups[i] for i in ev}
    again = split_fit_eval(groups, cand, 60, 30, seed=3)
    assert np.array_equal(fit, again[0]) and np.array_equal(ev, again[1])
    fit2, ev2 = split_fit_eval(groups, cand[::2], 20, 10, seed=0, holdout="span")
    assert len(fit2) == 20 and len(ev2) == 10 and not set(fit2) & set(ev2)
    assert set(fit2) <= set(cand[::2].tolist())


def planted_feats(n_sent=60, per_sent=6, n_tags=4, seed=0):
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for s in range(n_sent):
        for j in range(per_sent):
            ids.append(f"test/{s}:{j}-{j + 1}")
            labels.append(int(rng.integers(0, n_tags)))
    labels = np.asarray(labels)
    centres = 10 * np.eye(n_tags, 8)
    signal = (centres[labels] + 0.1 * rng.normal(size=(len(labels), 8))).astype(np.float32)
    noise = rng.normal(size=(len(labels), 8)).astype(np.float32)
    signal[0] = 0.0  # a span cut away by truncation: dropped
    feats = {"text.stem": noise, "text.blocks.0": signal}
    return LayerFeatures(features=feats, layers={"text.stem": 0, "text.blocks.0": 1},
                         labels=labels, ids=ids, label_names=[f"T{i}" for i in range(n_tags)])


def test_planted_tags_give_nmi_one_and_noise_near_zero():
    src = FakeSource(data_modalities=("text",), split_names=("test",))
    src.add("m", "test", planted_feats(), modalities=("text",))
    res = Chunking(["m"], "toy", {"n_fit": 200, "n_eval": 100, "n_init": 3}).run(src)
    t = res.table
    assert set(t.metric) == {"nmi", "nmi_heldout"}
    for metric in ("nmi", "nmi_heldout"):
        nmi = t[t.metric == metric].set_index("layer")["value"]
        assert nmi[1] == pytest.approx(1.0)
        assert nmi[0] < 0.2
    assert set(t.columns) >= {"model", "layer", "site", "metric", "value", "n_fit", "n_eval",
                              "n_dropped", "n_cut"}
    assert (t.n_fit == 200).all() and (t.n_eval == 100).all() and (t.k == 4).all()
    assert (t.n_dropped == 1).all() and (t.n_cut == 1).all()
    assert src.calls[0].pooling == "span"
    assert any("1 of 360 span(s) dropped for every model" in n for n in res.notes)
    assert "chunking_nmi" in res.figures
    # same seed, same numbers
    again = Chunking(["m"], "toy", {"n_fit": 200, "n_eval": 100, "n_init": 3}).run(src).table
    assert np.array_equal(again["value"].to_numpy(), t["value"].to_numpy())


def test_too_few_spans_shrinks_sizes_and_bad_params():
    src = FakeSource(data_modalities=("text",), split_names=("test",))
    src.add("m", "test", planted_feats(n_sent=10), modalities=("text",))
    res = Chunking(["m"], "toy", {"n_init": 2}).run(src)
    assert (res.table.n_fit + res.table.n_eval <= 59).all()
    assert any("only 59 spans" in n for n in res.notes)
    assert (res.table.n_dropped == 1).all()
    with pytest.raises(ConfigError, match="holdout"):
        Chunking(["m"], "toy", {"holdout": "doc"})
    with pytest.raises(ConfigError, match="n_fit"):
        Chunking(["m"], "toy", {"n_fit": 1})


def subset_feats(feats, keep):
    """The LayerFeatures of the items where ``keep`` is True."""
    return LayerFeatures(
        features={s: x[keep] for s, x in feats.features.items()}, layers=dict(feats.layers),
        labels=feats.labels[keep], ids=[i for i, k in zip(feats.ids, keep) if k],
        label_names=feats.label_names)


def test_headline_is_in_sample_nmi_of_the_clustered_spans():
    feats = planted_feats(seed=2)
    x = feats.features["text.blocks.0"]
    x += np.random.default_rng(5).normal(scale=6.0, size=x.shape).astype(np.float32)
    x[0] = 1.0  # not a cut span here
    src = FakeSource(data_modalities=("text",), split_names=("test",))
    src.add("m", "test", feats, modalities=("text",))
    params = {"n_fit": 150, "n_eval": 60, "n_init": 3}
    t = Chunking(["m"], "toy", params, seed=4).run(src).table
    fit, ev = split_fit_eval(sentence_keys(feats.ids), np.arange(len(feats.ids)), 150, 60, 4)
    km = KMeans(n_clusters=4, n_init=3, random_state=4).fit(x[fit].astype(np.float64))
    row = t[(t.layer == 1)].set_index("metric")["value"]
    want = normalized_mutual_info_score(feats.labels[fit], km.labels_)
    held = normalized_mutual_info_score(feats.labels[ev], km.predict(x[ev].astype(np.float64)))
    assert 0.05 < want < 0.95 and abs(want - held) > 1e-3
    assert row["nmi"] == pytest.approx(want)
    assert row["nmi_heldout"] == pytest.approx(held)


def test_a_span_one_model_cannot_see_is_dropped_for_all_and_counted():
    """Model ``a`` cuts span 7 fully (all-zero vector) and span 20 partly (flagged in
    ``truncated_items``, its vector is not zero); model ``b`` sees everything. Both models are
    scored on the same spans: the result equals a run on features without spans 7 and 20."""
    fa, fb = planted_feats(seed=0), planted_feats(seed=0)
    fb.features = {s: x + 0.5 for s, x in fa.features.items()}
    fa.features = {s: x.copy() for s, x in fa.features.items()}
    fb.features["text.blocks.0"][0] = 1.0  # cut in the planted data; here seen by both
    fa.features["text.blocks.0"][0] = 1.0
    for x in fa.features.values():
        x[7] = 0.0
    fa.truncated_items = np.zeros(len(fa.ids), dtype=bool)
    fa.truncated_items[[7, 20]] = True
    fb.truncated_items = np.zeros(len(fb.ids), dtype=bool)
    # span 20 is a planted outlier for both models: were it kept, k-means would react to it
    for f in (fa, fb):
        for x in f.features.values():
            x[20] = 1e3
    params = {"n_fit": 200, "n_eval": 100, "n_init": 3}
    src = FakeSource(data_modalities=("text",), split_names=("test",))
    src.add("a", "test", fa, modalities=("text",))
    src.add("b", "test", fb, modalities=("text",))
    res = Chunking(["a", "b"], "toy", params).run(src)
    t = res.table
    assert (t.n_dropped == 2).all()
    assert t.groupby("model")["n_cut"].first().to_dict() == {"a": 2, "b": 0}
    assert any("2 of 360 span(s) dropped for every model" in n for n in res.notes)
    assert any("model 'a': 2 of 360 span(s) cut" in n for n in res.notes)
    keep = np.ones(len(fa.ids), dtype=bool)
    keep[[7, 20]] = False
    ref = FakeSource(data_modalities=("text",), split_names=("test",))
    ref.add("a", "test", subset_feats(fa, keep), modalities=("text",))
    ref.add("b", "test", subset_feats(fb, keep), modalities=("text",))
    want = Chunking(["a", "b"], "toy", params).run(ref).table
    np.testing.assert_allclose(t["value"].to_numpy(), want["value"].to_numpy())
    assert (want.n_dropped == 0).all()


def test_without_per_item_flags_partly_cut_spans_are_noted():
    feats = planted_feats()
    feats.n_truncated = 3  # 1 fully cut (all-zero) + 2 partly cut that cannot be told apart
    src = FakeSource(data_modalities=("text",), split_names=("test",))
    src.add("m", "test", feats, modalities=("text",))
    res = Chunking(["m"], "toy", {"n_fit": 200, "n_eval": 100, "n_init": 2}).run(src)
    assert any("only the 1 fully cut ones are recognised" in n for n in res.notes)


def test_models_must_share_the_span_items():
    fa, fb = planted_feats(), planted_feats()
    fb.ids = list(reversed(fb.ids))
    src = FakeSource(data_modalities=("text",), split_names=("test",))
    src.add("a", "test", fa, modalities=("text",))
    src.add("b", "test", fb, modalities=("text",))
    with pytest.raises(AnalysisError, match="ids differ"):
        Chunking(["a", "b"], "toy", {"n_init": 2}).run(src)


def test_plot_leaves_the_global_backend_and_pyplot_alone(monkeypatch):
    import matplotlib
    import matplotlib.pyplot as plt

    def no_switch(*args, **kwargs):
        raise AssertionError("the analysis switched matplotlib's global backend")

    monkeypatch.setattr(matplotlib, "use", no_switch)
    open_before = plt.get_fignums()
    src = FakeSource(data_modalities=("text",), split_names=("test",))
    src.add("m", "test", planted_feats(), modalities=("text",))
    res = Chunking(["m"], "toy", {"n_fit": 100, "n_eval": 50, "n_init": 2}).run(src)
    assert plt.get_fignums() == open_before  # not registered with pyplot: nothing leaks
    ax = res.figures["chunking_nmi"].axes[0]
    assert "NMI" in ax.get_ylabel() and len(ax.patches) == 2


def test_end_to_end_run_with_tiny_bert(tmp_path):
    from test_runner import spec_dict

    from vlprobe.config import parse_config
    from vlprobe.results.records import read_result_table, read_run
    from vlprobe.runner import run

    root = write_fixture(tmp_path / "conll")
    cfg = parse_config({
        "name": "chunk",
        "seed": 0,
        "output_dir": str(tmp_path / "runs"),
        "models": {"bert": spec_dict("hf_text", tmp_path)},
        "datasets": {"conll": {"loader": "conll2000", "path": str(root)}},
        "analyses": [{"analysis": "T2", "models": ["bert"], "dataset": "conll",
                      "params": {"split": "train", "n_fit": 4, "n_eval": 4, "k": 2,
                                 "holdout": "span", "n_init": 2}}],
        "extraction": {"batch_size": 8, "shard_size": 16},
    })
    run_dir = run(cfg, progress=False, report=False)
    record = read_run(run_dir)
    assert record["status"] == "ok", record["analyses"]
    table = read_result_table(run_dir, "T2_conll")
    assert set(table["metric"]) == {"nmi", "nmi_heldout"}
    assert sorted(table["layer"].unique()) == [0, 1, 2]
    assert record["forward_batches"] == 1  # 2 sentences, one forward for all 8 spans


def test_sentence_initial_outlier_spans_are_reported():
    """Massive first-token activations (causal LMs' attention sink) make the sentence-initial
    spans outliers that k-means spends clusters on: the result says so, per layer."""
    from vlprobe.analyses.text.chunking import count_norm_outliers

    feats = planted_feats()
    sink = feats.features["text.stem"].copy()
    starts = np.array([int(i.rsplit(":", 1)[1].split("-")[0]) for i in feats.ids])
    sink[starts == 0] *= 1e4
    feats.features["text.stem"] = sink
    assert count_norm_outliers(sink) == (starts == 0).sum()
    assert count_norm_outliers(feats.features["text.blocks.0"]) == 0
    src = FakeSource(data_modalities=("text",), split_names=("test",))
    src.add("m", "test", feats, modalities=("text",))
    res = Chunking(["m"], "toy", {"n_fit": 200, "n_eval": 100, "n_init": 3}).run(src)
    (note,) = [n for n in res.notes if "median" in n]
    assert "at layers 0 (" in note and "attention sink" in note and "layers 1" not in note


def test_runner_source_flags_partly_cut_spans_and_drops_them_for_all_models(tmp_path):
    """Tiny CLIP (16 tokens) cuts the 20-word sentence after word 13: its chunk over words
    12-14 is partly cut (the vector is not zero, so only the tokenizer can tell), the two after
    it fully. Tiny BERT (32 tokens) sees all. All three are dropped for both models."""
    from test_conll import FIXTURE_TEST, FIXTURE_TRAIN
    from test_runner import spec_dict

    from vlprobe.analyses.base import FeatureRequest
    from vlprobe.config import parse_config
    from vlprobe.feature_source import RunFeatureSource

    words = ("the big dog runs " * 5).split()
    tags = [("B-" if i % 3 == 0 else "I-") + ("NP" if (i // 3) % 2 == 0 else "VP")
            for i in range(len(words))]
    long = "".join(f"{w} X {t}\n" for w, t in zip(words, tags))
    root = tmp_path / "conll"
    root.mkdir()
    (root / "test.txt").write_text(f"{long}\n{FIXTURE_TEST}\n{FIXTURE_TRAIN}")
    cfg = parse_config({
        "name": "chunk", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "cache_dir": str(tmp_path / "cache"),
        "models": {"clip": spec_dict("clip", tmp_path), "bert": spec_dict("hf_text", tmp_path)},
        "datasets": {"conll": {"loader": "conll2000", "path": str(root)}},
        "analyses": [{"analysis": "T2", "models": ["clip", "bert"], "dataset": "conll"}],
    })
    source = RunFeatureSource(cfg, progress=False)
    clip = source.get(FeatureRequest("clip", "conll", "test", pooling="span", modality="text"))
    bert = source.get(FeatureRequest("bert", "conll", "test", pooling="span", modality="text"))
    cut_ids = ["test/1:12-15", "test/1:15-18", "test/1:18-20"]
    assert [clip.ids[i] for i in np.flatnonzero(clip.truncated_items)] == cut_ids
    assert not bert.truncated_items.any() and clip.n_truncated == 3
    partly = clip.ids.index("test/1:12-15")
    assert all(np.abs(x[partly]).sum() > 0 for x in clip.features.values())
    params = {"n_fit": 12, "n_eval": 4, "k": 2, "holdout": "span", "n_init": 2}
    res = Chunking(["clip", "bert"], "conll", params).run(source)
    t = res.table
    assert (t.n_dropped == 3).all()
    assert t.groupby("model")["n_cut"].first().to_dict() == {"bert": 0, "clip": 3}
    n_spans = len(clip.ids)
    assert any(f"3 of {n_spans} span(s) dropped for every model" in n for n in res.notes)
    assert (t.n_fit + t.n_eval == n_spans - 3).all()

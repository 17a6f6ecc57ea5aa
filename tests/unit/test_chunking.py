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
from vlprobe.analyses.chunking import Chunking, kmeans_nmi, sentence_keys, split_fit_eval
from vlprobe.errors import ConfigError


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_registered_with_alias():
    assert ANALYSES.get("T2") is Chunking
    assert ANALYSES.canonical("T2") == "chunking"


def test_kmeans_nmi_matches_sklearn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6))
    y = rng.integers(0, 3, 120)
    x[:, 0] += 2 * y
    m = kmeans_nmi(x[:90], y[:90], x[90:], y[90:], k=3, seed=0, n_init=4)
    km = KMeans(n_clusters=3, n_init=4, random_state=0).fit(x[:90])
    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(y[90:], km.predict(x[90:])))
    assert m["nmi_fit"] == pytest.approx(normalized_mutual_info_score(y[:90], km.labels_))


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
    nmi = t[t.metric == "nmi"].set_index("layer")["value"]
    assert nmi[1] == pytest.approx(1.0)
    assert nmi[0] < 0.2
    assert set(t.columns) >= {"model", "layer", "site", "metric", "value", "n_fit", "n_eval"}
    assert (t.n_fit == 200).all() and (t.n_eval == 100).all() and (t.k == 4).all()
    assert src.calls[0].pooling == "span"
    assert any("truncation" in n for n in res.notes)
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
    with pytest.raises(ConfigError, match="holdout"):
        Chunking(["m"], "toy", {"holdout": "doc"})
    with pytest.raises(ConfigError, match="n_fit"):
        Chunking(["m"], "toy", {"n_fit": 1})


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
    assert set(table["metric"]) == {"nmi", "nmi_fit"}
    assert sorted(table["layer"].unique()) == [0, 1, 2]
    assert record["forward_batches"] == 1  # 2 sentences, one forward for all 8 spans


def test_sentence_initial_outlier_spans_are_reported():
    """Massive first-token activations (causal LMs' attention sink) make the sentence-initial
    spans outliers that k-means spends clusters on: the result says so, per layer."""
    from vlprobe.analyses.chunking import count_norm_outliers

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

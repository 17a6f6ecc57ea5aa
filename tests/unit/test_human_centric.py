"""M7 human_centric: image / text / image+text probes, single- and multi-label, bad input."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score
from test_analysis_fakes import FakeSource

from vlprobe.analyses import ANALYSES
from vlprobe.analyses.base import FeatureRequest, LayerFeatures
from vlprobe.analyses.multimodal.human_centric import (
    SINGLE_METRICS,
    HumanCentric,
    label_matrix,
    multi_label_scores,
    parse_label_sets,
    single_label_scores,
)
from vlprobe.data.stimuli import Stimuli
from vlprobe.errors import AnalysisError, ConfigError

FAST = {"Cs": [0.01, 1.0, 100.0], "max_iter": 200}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass
class DualSource(FakeSource):
    """FakeSource keyed by tower (modality) too, with item descriptors (``stimuli``)."""

    tower: dict[tuple[str, str, str], LayerFeatures] = field(default_factory=dict)
    descr: dict[str, dict[str, list]] = field(default_factory=dict)

    def add_tower(self, model, split, modality, feats, modalities=("image", "text")):
        self.tower[(model, split, modality)] = feats
        self.modalities[model] = tuple(modalities)

    def get(self, request: FeatureRequest) -> LayerFeatures:
        self.calls.append(request)
        assert request.dataset == self.dataset
        return self.tower[(request.model, request.split, request.modality)]

    def stimuli(self, request: FeatureRequest):
        f = self.tower.get((request.model, request.split, request.modality)) or next(
            f for (_, split, _), f in self.tower.items() if split == request.split)
        return Stimuli(self.dataset, request.split, list(f.ids),
                       texts=[f"content of {i}" for i in f.ids],
                       descriptors=self.descr.get(request.split, {}))


def _data(n, seed, split):
    """4 classes = 2 bits: the image carries bit 0, the text bit 1 (concat needs both)."""
    rng = np.random.default_rng(seed)
    y = np.tile(np.arange(4), n // 4)
    img = rng.normal(size=(n, 6))
    txt = rng.normal(size=(n, 5))
    img[:, 0] += 3.0 * (2 * (y % 2) - 1)
    txt[:, 0] += 3.0 * (2 * (y // 2) - 1)
    ids = [f"{split}/{i}" for i in range(n)]
    return y, img.astype(np.float32), txt.astype(np.float32), ids


def _lf(site, x, y, ids):
    return LayerFeatures({site: x}, {site: None}, None if y is None else np.asarray(y), list(ids))


def _dual_source(model="clip", n_train=160, n_test=80, multi=False):
    src = DualSource(data_modalities=("image", "text"))
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        y, img, txt, ids = _data(n, seed, split)
        src.add_tower(model, split, "image", _lf("vision.proj", img, y, ids))
        src.add_tower(model, split, "text", _lf("text.proj", txt, y, ids))
        # label sets: "odd" <- image bit, "high" <- text bit, "all" always present
        sets = [["all", *(["odd"] if c % 2 else []), *(["high"] if c // 2 else [])] for c in y]
        src.descr[split] = {"genres": ["|".join(s) for s in sets] if split == "train" else sets}
    return src


def _by(table, probe="linear"):
    t = table[table["probe"] == probe]
    return {(r.feature_set, r.metric): r.value for r in t.itertuples()}


# ---------------------------------------------------------------------------------------------


def test_registered_with_alias():
    assert ANALYSES.get("M7") is HumanCentric
    assert ANALYSES.canonical("M7") == "human_centric"


def test_metrics_match_sklearn_and_thesis_f1():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    s = single_label_scores(y, p)
    assert s["accuracy"] == pytest.approx((y == p).mean())
    assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    assert s["f1_macro"] == pytest.approx(f1_score(y, p, average="macro"))
    assert s["f1_weighted"] == pytest.approx(f1_score(y, p, average="weighted"))
    Y = rng.integers(0, 2, (40, 5))
    Y[:, 0] = 1
    P = rng.integers(0, 2, (40, 5))
    m = multi_label_scores(Y, P)
    tp, fp, fn = (Y & P).sum(1), ((1 - Y) & P).sum(1), (Y & (1 - P)).sum(1)
    assert m["f1_samples"] == pytest.approx(np.mean(tp / (tp + 0.5 * (fn + fp))))  # thesis
    assert m["subset_accuracy"] == pytest.approx((Y == P).all(1).mean())
    assert m["label_accuracy"] == pytest.approx((Y == P).mean())
    assert parse_label_sets(["a|b", ["b", "a"], None, " c | "]) == [
        ("a", "b"), ("a", "b"), (), ("c",)]
    assert label_matrix([("a",), ("b", "c")], ["a", "b", "c"]).tolist() == [[1, 0, 0], [0, 1, 1]]


def test_dual_encoder_concatenation_beats_each_tower():
    src = _dual_source()
    an = HumanCentric(["clip"], "toy", FAST)
    reqs = an.requests(src)
    assert {(r.modality, r.split) for r in reqs} == {
        ("image", "train"), ("image", "test"), ("text", "train"), ("text", "test")}
    res = an.run(src)
    t = res.table
    v = _by(t)
    # each tower alone knows one bit (~50 %), the concatenation both (~100 %)
    assert 0.35 < v[("image", "accuracy")] < 0.65 and 0.35 < v[("text", "accuracy")] < 0.65
    assert v[("image+text", "accuracy")] > 0.9
    assert v[("image+text", "balanced_accuracy")] > 0.9 and v[("image+text", "f1_macro")] > 0.9
    concat = t[t["feature_set"] == "image+text"]
    assert set(concat["site"]) == {"vision.proj+text.proj"}
    assert set(concat["model"]) == {"clip"} and (concat["dim"] == 11).all()
    assert set(t["metric"]) == {"accuracy", "balanced_accuracy", "f1_macro", "f1_weighted"}
    assert (t["n_train"] + t["n_val"] == 160).all() and (t["n_test"] == 80).all()
    assert np.allclose(t.loc[t["metric"] == "accuracy", "baseline"], 0.25)
    assert "human_centric" in res.figures
    # seeded: same numbers again
    again = HumanCentric(["clip"], "toy", FAST).run(_dual_source()).table
    assert np.array_equal(again["value"].to_numpy(), t["value"].to_numpy())


def test_two_models_as_an_explicit_pair():
    src = _dual_source(model="both")
    for split in ("train", "test"):  # split the dual encoder's towers into two models
        src.add_tower("rn50", split, "image", src.tower[("both", split, "image")], ("image",))
        src.add_tower("bert", split, "text", src.tower[("both", split, "text")], ("text",))
    an = HumanCentric(["rn50", "bert"], "toy",
                      {**FAST, "image_model": "rn50", "text_model": "bert"})
    t = an.run(src).table
    models = dict(zip(t["feature_set"], t["model"]))
    assert models == {"image": "rn50", "text": "bert", "image+text": "rn50+bert"}
    assert _by(t)[("image+text", "accuracy")] > 0.9
    # default pairing: each single-tower model gives only its own set
    res = HumanCentric(["rn50", "bert"], "toy", FAST).run(src)
    assert set(zip(res.table["model"], res.table["feature_set"])) == {
        ("rn50", "image"), ("bert", "text")}
    assert any("has no text tower" in n for n in res.notes)
    with pytest.raises(ConfigError, match="not one of the analysis' models"):
        HumanCentric(["rn50"], "toy", {"text_model": "bert"})


def test_rows_are_aligned_by_id():
    src = _dual_source()
    base = HumanCentric(["clip"], "toy", FAST).run(src).table
    for split in ("train", "test"):  # shuffle the text tower's rows: aligned back by id
        f = src.tower[("clip", split, "text")]
        perm = np.random.default_rng(5).permutation(len(f.ids))
        src.tower[("clip", split, "text")] = _lf(
            "text.proj", f.features["text.proj"][perm], f.labels[perm],
            [f.ids[i] for i in perm])
    t = HumanCentric(["clip"], "toy", FAST).run(src).table
    assert np.allclose(t["value"].to_numpy(), base["value"].to_numpy())


def test_mismatched_feature_sets_are_an_error():
    src = _dual_source()
    f = src.tower[("clip", "test", "text")]
    src.tower[("clip", "test", "text")] = _lf("text.proj", f.features["text.proj"][:-1],
                                              f.labels[:-1], f.ids[:-1])
    with pytest.raises(AnalysisError, match="item ids differ"):
        HumanCentric(["clip"], "toy", FAST).run(src)
    src = _dual_source()
    f = src.tower[("clip", "train", "text")]
    src.tower[("clip", "train", "text")] = _lf("text.proj", f.features["text.proj"],
                                               f.labels, [i + "x" for i in f.ids])
    with pytest.raises(AnalysisError, match="cannot concatenate"):
        HumanCentric(["clip"], "toy", FAST).run(src)
    src = _dual_source()
    f = src.tower[("clip", "train", "text")]
    src.tower[("clip", "train", "text")] = _lf("text.proj", f.features["text.proj"],
                                               (f.labels + 1) % 4, f.ids)
    with pytest.raises(AnalysisError, match="different labels"):
        HumanCentric(["clip"], "toy", FAST).run(src)
    # the unimodal sets alone do not need aligned towers
    t = HumanCentric(["clip"], "toy", {**FAST, "feature_sets": ["image"]}).run(src).table
    assert set(t["feature_set"]) == {"image"}


def test_train_test_leak_is_an_error():
    src = _dual_source()
    for mod, site in (("image", "vision.proj"), ("text", "text.proj")):
        f = src.tower[("clip", "test", mod)]
        ids = list(f.ids)
        ids[0] = "train/3"
        src.tower[("clip", "test", mod)] = _lf(site, f.features[site], f.labels, ids)
    with pytest.raises(AnalysisError, match="share 1 item id"):
        HumanCentric(["clip"], "toy", FAST).run(src)


def test_image_only_dataset_runs_image_set_with_a_note():
    src = _dual_source()
    src.data_modalities = ("image",)
    src.modalities["clip"] = ("image",)
    res = HumanCentric(["clip"], "toy", FAST).run(src)
    assert set(res.table["feature_set"]) == {"image"}
    assert any("'text' skipped" in n and "text features need item texts" in n
               for n in res.notes)
    assert all(r.modality == "image" for r in src.calls)
    with pytest.raises(AnalysisError, match="no feature set"):
        HumanCentric(["clip"], "toy", {**FAST, "feature_sets": ["text"]}).run(src)


def test_multi_label_one_vs_rest_and_mlp():
    src = _dual_source()
    params = {**FAST, "multi_label": "genres", "probe": "both", "mlp_max_epochs": 20,
              "mlp_weight_decay": [0.0]}
    res = HumanCentric(["clip"], "toy", params).run(src)
    t = res.table
    assert set(t["task"]) == {"multi_label"}
    assert set(t["metric"]) == {"f1_samples", "f1_micro", "f1_macro", "subset_accuracy",
                                "label_accuracy"}
    lin, mlp = _by(t, "linear"), _by(t, "mlp")
    # "all" is constant (noted); "odd" comes from the image, "high" from the text
    assert any("['all']" in n and "constant" in n for n in res.notes)
    assert lin[("image+text", "subset_accuracy")] > 0.9
    assert lin[("image", "subset_accuracy")] < 0.7 and lin[("text", "subset_accuracy")] < 0.7
    assert lin[("image+text", "f1_samples")] > lin[("image", "f1_samples")]
    assert mlp[("image+text", "f1_samples")] > 0.85
    assert (t["n_classes"] == 3).all()
    # baseline: "all" (prevalence 1) + "odd"/"high" (prevalence 0.5) predicted for everyone
    assert t["baseline"].min() > 0 and t["baseline"].max() <= 1


def test_single_label_mlp_reports_every_metric():
    """The MLP's test predictions give the same four metrics as the linear probe's (it used
    to report accuracy only)."""
    src = _dual_source()
    res = HumanCentric(["clip"], "toy", {**FAST, "probe": "mlp", "mlp_max_epochs": 20,
                                         "mlp_weight_decay": [0.0],
                                         "feature_sets": ["text+image"]}).run(src)
    t = res.table
    assert set(t["feature_set"]) == {"image+text"} and set(t["metric"]) == set(SINGLE_METRICS)
    v = t.set_index("metric")["value"]
    assert v["accuracy"] > 0.85 and v["f1_macro"] > 0.8
    assert not any("accuracy only" in n for n in res.notes)


def test_mlp_probes_leave_the_global_torch_rng_alone():
    """Seeded with local generators: the global RNG is neither reset nor advanced (the
    multi-label MLP used to call ``torch.manual_seed``)."""
    import torch

    src = _dual_source()
    params = {**FAST, "multi_label": "genres", "probe": "mlp", "mlp_max_epochs": 3,
              "mlp_weight_decay": [0.0], "feature_sets": ["image"]}
    torch.manual_seed(1234)
    torch.rand(3)  # a state that a reset to any seed would lose
    before = torch.get_rng_state()
    a = HumanCentric(["clip"], "toy", params, seed=0).run(src).table
    assert torch.equal(torch.get_rng_state(), before)
    b = HumanCentric(["clip"], "toy", params, seed=0).run(src).table
    assert a["value"].tolist() == b["value"].tolist()


def test_bad_params():
    for bad in ({"feature_sets": ["audio"]}, {"feature_sets": []}, {"probe": "svm"},
                {"val_fraction": 1.0}, {"Cs": [0]}, {"layer": "first"},
                {"train_split": "test"}, {"feature_sets": ["image+image"]}):
        with pytest.raises(ConfigError):
            HumanCentric(["clip"], "toy", bad)
    with pytest.raises(ConfigError, match="unknown parameter"):
        HumanCentric(["clip"], "toy", {"feature_set": ["image"]})
    src = _dual_source()
    with pytest.raises(AnalysisError, match="no descriptor 'tags'"):
        HumanCentric(["clip"], "toy", {**FAST, "multi_label": "tags"}).run(src)
    with pytest.raises(AnalysisError, match="no split 'dev'"):
        HumanCentric(["clip"], "toy", {"test_split": "dev"}).requests(src)


def _write_pairs_parquet(path, n=24, seed=0):
    """Tiny image+caption parquet: label = dominant colour channel; genres = label sets."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    words = ["red", "green", "blue"]
    images, labels, captions, genres = [], [], [], []
    for i in range(n):
        c = i % 3
        pixels = rng.integers(0, 90, size=(16, 16, 3))
        pixels[..., c] += 150
        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
        images.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
        labels.append(c)
        captions.append(f"a {words[c]} square number {i}")
        genres.append("|".join(["colour", words[c]] + (["even"] if i % 2 == 0 else [])))
    table = pa.table({"image": images, "label": labels, "caption": captions, "genres": genres})
    pq.write_table(table, path)
    return path


def test_end_to_end_through_the_runner(tmp_path):
    """Tiny random CLIP (both towers) and a ViT + BERT pair on an image+caption parquet."""
    from test_runner import spec_dict

    from vlprobe.config import parse_config
    from vlprobe.results.records import read_result_table, read_run
    from vlprobe.runner import run

    data = tmp_path / "pairs"
    data.mkdir()
    _write_pairs_parquet(data / "train.parquet", 24, 0)
    _write_pairs_parquet(data / "test.parquet", 12, 1)
    cfg = {
        "name": "m7", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "models": {"clip": spec_dict("clip", tmp_path), "vit": spec_dict("hf_vit", tmp_path),
                   "bert": spec_dict("hf_text", tmp_path)},
        "datasets": {"pairs": {"loader": "hf_parquet", "path": str(data),
                               "options": {"text_column": "caption",
                                           "descriptor_columns": ["genres"]}}},
        "analyses": [
            {"analysis": "M7", "name": "single", "models": ["clip"], "dataset": "pairs",
             "params": FAST},
            {"analysis": "M7", "name": "multi", "models": ["clip"], "dataset": "pairs",
             "params": {**FAST, "multi_label": "genres"}},
            {"analysis": "M7", "name": "pair", "models": ["vit", "bert"], "dataset": "pairs",
             "params": {**FAST, "image_model": "vit", "text_model": "bert"}},
        ],
        "extraction": {"batch_size": 12, "shard_size": 64},
    }
    run_dir = run(parse_config(cfg), progress=False, report=False)
    record = read_run(run_dir)
    assert {k: v["status"] for k, v in record["analyses"].items()} == {
        "single": "ok", "multi": "ok", "pair": "ok"}, record["analyses"]
    single = read_result_table(run_dir, "single")
    assert set(single["feature_set"]) == {"image", "text", "image+text"}
    assert set(single["site"]) == {"vision.proj", "text.proj",
                                   "vision.proj+text.proj"}
    assert single["value"].between(0, 1).all() and (single["n_test"] == 12).all()
    multi = read_result_table(run_dir, "multi")
    assert (multi["n_classes"] == 5).all() and "f1_samples" in set(multi["metric"])
    pair = read_result_table(run_dir, "pair")
    assert dict(zip(pair["feature_set"], pair["model"]))["image+text"] == "vit+bert"

"""V6 ``adversarial``: the analysis on a planted dominant-colour model (closed-form L∞
robustness), the three heads against the extraction path, the WordNet similarities, the
semantic rows, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from vision_fakes import PlantedColorAdapter, VisionSource, color_stimuli, planted_source

from tiny_models import tiny_spec
from vlprobe.analyses.vision import heads as H
from vlprobe.analyses.vision.adversarial import Adversarial
from vlprobe.analyses.vision.semantic import similarity_rows
from vlprobe.analyses.vision.wordnet import ClassSimilarity, load_wordnet, synset_of
from vlprobe.errors import AnalysisError, ConfigError
from vlprobe.models import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _value(table, metric, eps, norm="linf"):
    row = table[(table["metric"] == metric) & (table["norm"] == norm)
                & np.isclose(table["epsilon"], eps)]
    assert len(row) == 1, (metric, eps, norm)
    return float(row["value"].iloc[0])


def _min_linf(stimuli) -> np.ndarray:
    """Closed form for the planted model: flat colours, logit gap (x_y - x_j) * gain, so the
    smallest L∞ perturbation that flips item i is (x_y - max_j x_j) / 2."""
    px = PlantedColorAdapter().image_pixels(stimuli.payloads("image", range(len(stimuli))))
    rgb = px.mean(dim=(2, 3)).numpy()
    y = stimuli.labels
    top = rgb[np.arange(len(y)), y]
    others = np.where(np.eye(3, dtype=bool)[y], -np.inf, rgb).max(1)
    return (top - others) / 2


def test_accuracy_curve_meets_the_closed_form_on_the_planted_model():
    src = planted_source(margin=0.1, n_per_class=4)
    need = _min_linf(src.images["test"])
    lo, hi = float(need.min()), float(need.max())
    eps = [lo * 0.9, (lo + hi) / 2, hi * 1.1]
    result = Adversarial(["m"], "toy", {"epsilons": {"linf": eps}, "steps": 20,
                                        "n_examples": 2, "head": "own"}, seed=0).run(src)
    table, items = result.table, result.extra_tables["items"]
    assert _value(table, "accuracy", 0.0) == 1.0  # ε = 0: the clean accuracy
    assert _value(table, "attack_success_rate", eps[0]) == 0.0  # below every item's minimum
    assert _value(table, "attack_success_rate", eps[2]) == 1.0  # above every item's minimum
    mid = items[np.isclose(items["epsilon"], eps[1])].sort_values("index")
    assert list(mid["success"]) == list(need < eps[1])
    accs = [_value(table, "accuracy", e) for e in [0.0, *eps]]
    assert accs == sorted(accs, reverse=True)
    acc = table[table["metric"] == "accuracy"]
    assert (acc["ci_low"] <= acc["value"]).all() and (acc["value"] <= acc["ci_high"]).all()
    assert (items["perturbation"] <= items["epsilon"] + 1e-6).all()
    assert set(result.figures) == {"accuracy_vs_epsilon", "examples_m_linf"}
    assert any("semantic distance skipped" in n for n in result.notes)  # red/green/blue


def test_zero_epsilon_row_equals_the_heads_own_accuracy():
    src = planted_source()
    labels = src.images["test"].labels.copy()
    labels[:3] = (labels[:3] + 1) % 3  # three items the head now gets wrong
    src.images["test"].labels = labels
    result = Adversarial(["m"], "toy", {"epsilons": {"l2": [0.5]}, "steps": 2,
                                        "n_examples": 0}).run(src)
    assert _value(result.table, "accuracy", 0.0, "l2") == pytest.approx(9 / 12)
    assert set(result.extra_tables["items"]["index"]) == set(range(3, 12))  # wrong: not attacked


def test_stronger_attack_never_does_worse_in_the_analysis():
    src = planted_source(margin=0.1)
    need = _min_linf(src.images["test"])
    # no random start, steps of 0.1 ε: on flat colours k sign steps move the mean colour by
    # min(0.1 k, 1) ε, so 8 steps fool all but the most robust item, 12 fool every item
    eps = 1.2 * float(need.max())
    params = {"epsilons": {"linf": [eps]}, "step_size": 0.1, "random_start": False,
              "n_examples": 0, "early_stop": False}
    weak = Adversarial(["m"], "toy", {**params, "steps": 8}).run(src).extra_tables["items"]
    strong = Adversarial(["m"], "toy", {**params, "steps": 12}).run(src).extra_tables["items"]
    assert list(weak.sort_values("index")["success"]) == list(need < 0.8 * eps)
    assert 0 < weak["success"].sum() < len(weak)
    assert strong["success"].all()


def test_targeted_attack_rows():
    src = planted_source(margin=0.05)
    result = Adversarial(["m"], "toy", {"epsilons": {"linf": [0.2]}, "steps": 20,
                                        "targeted": True, "n_examples": 0}).run(src)
    items = result.extra_tables["items"]
    assert (items["target"] != items["head_label"]).all() and items["targeted"].all()
    assert (items.loc[items["success"], "adv_pred"] == items.loc[items["success"],
                                                                 "target"]).all()
    assert _value(result.table, "attack_success_rate", 0.2) == items["success"].mean()


def test_linear_probe_head_matches_the_extracted_features(tmp_path):
    """The probe is fitted on store features; through the differentiable path (torch pooling)
    the same pixels give the same logits as the probe on the extracted features."""
    from vlprobe.extract import ActivationStore, extract_features

    adapter = PlantedColorAdapter()
    train = color_stimuli(6, 0.05, seed=1, split="train")
    feats = extract_features(adapter, train, modality="image", sites=["vision.blocks.0"],
                             pooling="mean", store=ActivationStore(root=tmp_path))
    x = feats.features["vision.blocks.0"]
    head = H.linear_probe_head(adapter, "vision.blocks.0", "mean", x, train.labels,
                               train.label_names, [0.1, 10.0], 0.3, 0, "test")
    px = adapter.image_pixels(train.payloads("image", range(len(train))))
    from vlprobe.estimators.logistic import fit_logistic_path

    path = fit_logistic_path([x], train.labels, [head.info["C"]])
    expected = path.decision_function([x])[0][0]  # the solver's own logits [N, 3]
    with torch.no_grad():
        got = head.logits(px).numpy()
    assert np.allclose(got, expected, atol=1e-4)
    assert list(head.classes) == [0, 1, 2] and head.info["C"] in (0.1, 10.0)


def test_linear_probe_head_in_the_analysis():
    src = planted_source(margin=0.1)
    src.images["train"] = color_stimuli(6, 0.1, seed=2, split="train")
    train = src.images["train"]
    adapter = src.adapters["m"]
    from vlprobe.analyses.base import LayerFeatures

    with torch.no_grad():
        px = adapter.image_pixels(train.payloads("image", range(len(train))))
        x = adapter.forward_differentiable(px, ["vision.pooled"])["vision.pooled"].numpy()
    src.add("m", "train", LayerFeatures({"vision.pooled": x}, {"vision.pooled": None},
                                        train.labels, train.ids, train.label_names))
    result = Adversarial(["m"], "toy", {"head": "linear_probe", "epsilons": {"linf": [0.01]},
                                        "steps": 3, "n_examples": 0}).run(src)
    assert set(result.table["head"]) == {"linear_probe"}
    assert set(result.table["site"]) == {"vision.pooled"}
    assert _value(result.table, "accuracy", 0.0) == 1.0
    assert any("head linear_probe" in n and "C " in n for n in result.notes)


def test_zero_shot_head_matches_the_extraction_path(tmp_path):
    adapter = load_model(tiny_spec("clip", tmp_path))
    names = ["dog", "cat", "car"]
    templates = ["a photo of a {}", "a picture of a {}"]
    prompts = [t.format(n) for n in names for t in templates]
    text = adapter.forward(adapter.prepare(prompts, "text"), ["text.proj"]).hidden["text.proj"]
    labels = np.repeat(np.arange(3), 2)
    head = H.zero_shot_head(adapter, text.numpy(), labels, names, templates)
    images = color_stimuli(1, 0.1).payloads("image", range(3))
    image = adapter.forward(adapter.prepare(images, "image"), ["vision.proj"]).hidden[
        "vision.proj"]
    t = torch.nn.functional.normalize(text, dim=1).view(3, 2, -1).mean(1)
    t = torch.nn.functional.normalize(t, dim=1)
    expected = adapter.logit_scale()["scale"] * torch.nn.functional.normalize(image, dim=1) @ t.T
    with torch.no_grad():
        got = head.logits(adapter.image_pixels(images))
    assert torch.allclose(got, expected, atol=1e-4)
    assert head.class_names == names


def test_zero_shot_head_in_the_analysis(tmp_path):
    adapter = load_model(tiny_spec("clip", tmp_path))
    src = VisionSource(split_names=("test",))
    src.adapters["clip"] = adapter
    src.images["test"] = color_stimuli(2, 0.1)
    from vlprobe.analyses.base import LayerFeatures

    prompts = [f"a photo of a {n}." for n in ["red", "green", "blue"]]
    text = adapter.forward(adapter.prepare(prompts, "text"), ["text.proj"]).hidden["text.proj"]
    src.add("clip", "test", LayerFeatures({"text.proj": text.numpy()}, {"text.proj": None},
                                          np.arange(3), ["c0", "c1", "c2"]),
            view="class_prompts")
    analysis = Adversarial(["clip"], "toy", {"epsilons": {"linf": [0.05]}, "steps": 2,
                                             "templates": "a photo of a {}.", "n_examples": 0})
    assert analysis.head_kind(adapter) == "zero_shot"
    [request] = analysis.requests(src)
    assert request.view == "class_prompts" and request.sites == ("text.proj",)
    result = analysis.run(src)
    assert set(result.table["head"]) == {"zero_shot"}
    assert set(result.table["site"]) == {"vision.proj"}


# -- WordNet -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wordnet():
    try:
        return load_wordnet()
    except AnalysisError as exc:
        pytest.skip(f"WordNet not available: {exc}")


def test_known_wordnet_pairs_give_nltks_values(wordnet):
    """WordNet 3.0 values printed in nltk's own documentation (howto/wordnet)."""
    dog, cat = "n02084071", "n02121620"
    assert synset_of(wordnet, dog).name() == "dog.n.01"
    assert synset_of(wordnet, cat).name() == "cat.n.01"
    assert synset_of(wordnet, "n01440764").name() == "tench.n.01"
    sim = ClassSimilarity(wordnet, [dog, cat, dog])
    assert sim("path", 0, 1) == pytest.approx(0.2)
    assert sim("wup", 0, 1) == pytest.approx(0.857142857, abs=1e-8)
    assert sim("path", 0, 2) == 1.0
    # nltk's Wu-Palmer of dog with itself is 13/14, not 1 (dog has two hypernym paths and
    # nltk counts the longer one); we report nltk's values as they are
    assert sim("wup", 0, 2) == pytest.approx(13 / 14)
    hit = wordnet.synset("hit.v.01")
    slap = wordnet.synset("slap.v.01")
    assert hit.path_similarity(slap) == pytest.approx(1 / 7)  # the reader reads verbs too
    assert sim.name(1) == "cat"


def test_missing_wordnet_is_a_clear_error_or_a_note(tmp_path, wordnet):
    with pytest.raises(AnalysisError, match="apt-get install wordnet-base"):
        load_wordnet(str(tmp_path))
    src = planted_source()
    src.images["test"].label_names = ["n02084071", "n02121620", "n01440764"]
    params = {"epsilons": {"linf": [0.06]}, "steps": 5, "n_examples": 0,
              "wordnet_dir": str(tmp_path)}
    result = Adversarial(["m"], "toy", params).run(src)  # wnids: auto -> a note
    assert any("semantic distance skipped" in n and "wordnet-base" in n for n in result.notes)
    wnids = tmp_path / "wnids.json"
    wnids.write_text(json.dumps(["n02084071", "n02121620", "n01440764"]))
    with pytest.raises(AnalysisError, match="wordnet-base"):
        Adversarial(["m"], "toy", {**params, "wnids": str(wnids)}).run(src)
    # with WordNet: the similarity rows and per-item columns appear
    result = Adversarial(["m"], "toy", {**params, "wordnet_dir": None}).run(src)
    groups = set(result.table["group"].dropna())
    assert groups == {"adversarial", "clean_error", "random_class"}
    assert "wup_similarity" in result.extra_tables["items"]
    assert "semantic_similarity" in result.figures


def test_similarity_rows_by_hand():
    def sim(measure, a, b):
        return 1.0 / (1 + abs(a - b)) if measure == "path" else float(a == b)

    items = pd.DataFrame({
        "norm": ["linf"] * 4, "epsilon": [0.1] * 4, "head_label": [0, 1, 2, 3],
        "adv_pred": [1, 3, 2, 0], "success": [True, True, False, True],
        "targeted": [False] * 4, "target": [-1] * 4})
    clean = pd.DataFrame({"head_label": [0, 1, 2, 3, 4], "clean_pred": [0, 1, 4, 3, 4]})
    rows, per_item = similarity_rows(items, clean, sim, n_classes=5, n_random=50, seed=0)
    by = {(r["group"], r["metric"]): r for r in rows}
    adv = by[("adversarial", "path_similarity")]
    assert adv["value"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3) and adv["n"] == 3
    assert adv["ci_low"] <= adv["value"] <= adv["ci_high"]
    assert by[("clean_error", "path_similarity")]["value"] == pytest.approx(1 / 3)
    assert by[("clean_error", "path_similarity")]["n"] == 1
    assert by[("random_class", "wup_similarity")]["value"] == 0.0  # never the same class
    assert np.isnan(per_item["path_similarity"][2])  # a failed attack has no wrong class


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("params,match", [
    ({"epsilons": {"linf": [2.0]}}, "must lie in"),
    ({"epsilons": {"linf": ["-1/255"]}}, "must lie in"),
    ({"epsilons": {"l1": [0.1]}}, "unknown norm"),
    ({"epsilons": [0.1]}, "must map a norm"),
    ({"epsilons": {"linf": [0, "0/255"]}}, "at least one epsilon > 0"),
    ({"restarts": 3, "random_start": False}, "random_start"),
    ({"head": "softmax"}, "head must be"),
    ({"step_size": 2}, "step_size"),
    ({"steps": -1}, "steps"),
    ({"clean_items": "some"}, "clean_items"),
    ({"templates": "no placeholder"}, "templates"),
])
def test_bad_params_are_config_errors(params, match):
    with pytest.raises(ConfigError, match=match):
        Adversarial(["m"], "toy", params)


def test_models_without_a_differentiable_path_or_head(tmp_path):
    src = planted_source()
    src.adapters["text"] = load_model(tiny_spec("minilm_l6", tmp_path))
    with pytest.raises(ConfigError, match="no differentiable image path"):
        Adversarial(["text"], "toy", {"epsilons": {"linf": [0.1]}}).run(src)
    with pytest.raises(AnalysisError, match="no classifier site"):
        Adversarial(["m"], "toy", {"head": "own", "site": "vision.head",
                                   "epsilons": {"linf": [0.1]}}).run(src)
    with pytest.raises(AnalysisError, match="no split 'train'"):
        Adversarial(["m"], "toy", {"head": "linear_probe"}).requests(src)
    src.images["test"].labels = src.images["test"].labels + 5
    with pytest.raises(AnalysisError, match="head's class indices"):
        Adversarial(["m"], "toy", {"head": "own", "epsilons": {"linf": [0.1]}}).run(src)

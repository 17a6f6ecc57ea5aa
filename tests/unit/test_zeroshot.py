"""M1 zero-shot: planted dual encoder, CLIP's prompt ensemble, per-template table, logit
scale, the linear-probe gap, one text-tower pass, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dual_fakes import class_of_prompt, planted_zero_shot
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

from vlprobe.analyses import ANALYSES
from vlprobe.analyses.multimodal._common import (
    binomial_ci,
)
from vlprobe.analyses.multimodal.zeroshot import ZeroShot
from vlprobe.analyses.multimodal.zeroshot_classifier import (
    class_ranks,
    ensemble_classifier,
    rank_metrics,
    template_ranks,
)
from vlprobe.data.prompts.params import load_class_name_set
from vlprobe.errors import AnalysisError, ConfigError, DataError
from vlprobe.estimators.logistic.clip_protocol import topk_scores

TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}.", "a drawing of the {}."]
FAST_PROBE = {"coarse_Cs": [0.01, 1.0, 100.0], "refine_rounds": 0, "max_iter": 100}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(src, **params):
    params = {"templates": TEMPLATES, "probe": FAST_PROBE, **params}
    return ZeroShot(["m"], "toy", params, seed=0).run(src)


def test_registered_as_m1():
    assert ANALYSES.get("M1") is ZeroShot and ANALYSES.canonical("M1") == "zero_shot"


def test_planted_dual_encoder_is_perfect():
    src, _ = planted_zero_shot(n_classes=7)
    res = _run(src, linear_probe=False)
    t = res.table.set_index("metric")
    assert t.loc["top1_accuracy", "value"] == 1.0
    assert t.loc["top5_accuracy", "value"] == 1.0
    assert t.loc["mean_per_class_recall", "value"] == 1.0
    assert t.loc["top1_accuracy", "chance"] == pytest.approx(1 / 7)
    assert t.loc["top5_accuracy", "chance"] == pytest.approx(5 / 7)
    assert t.loc["top1_accuracy", "ci_low"] > 0.9 and t.loc["top1_accuracy", "ci_high"] == 1.0
    per = res.extra_tables["per_template"]
    assert list(per["template"]) == [*TEMPLATES, "ensemble of 3"]
    assert (per["top1_accuracy"] == 1.0).all()
    preds = res.extra_tables["predictions"]
    assert (preds["predicted"] == preds["label"]).all() and (preds["true_class_rank"] == 1).all()
    assert set(res.figures) == {"zero_shot", "per_template"}


def test_text_tower_once_per_prompt_and_image_tower_once_per_image():
    src, _ = planted_zero_shot(n_classes=5)
    a = ZeroShot(["m"], "toy", {"templates": TEMPLATES, "linear_probe": False})
    reqs = a.requests(src)
    assert len(reqs) == 2
    text = next(r for r in reqs if r.view == "class_prompts")
    image = next(r for r in reqs if r.view == "items")
    assert text.sites == ("text.proj",) and image.sites == ("vision.proj",)
    assert text.templates == tuple(TEMPLATES) and text.modality == "text"
    a.run(src)
    gets = [(c.view, c.split) for c in src.calls]
    assert sorted(gets) == [("class_prompts", "test"), ("items", "test")]  # one get each
    prompts = src.stimuli(text)
    assert len(prompts) == 5 * 3 and len(set(prompts.texts)) == 15


def test_ensemble_is_the_renormalised_mean_of_unit_prompt_embeddings():
    rng = np.random.default_rng(0)
    txt = rng.normal(size=(4 * 3, 8))
    unit = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    clf = ensemble_classifier(unit, 4, 3)
    manual = unit.reshape(4, 3, 8).mean(1)
    manual /= np.linalg.norm(manual, axis=1, keepdims=True)
    assert np.allclose(clf, manual, atol=1e-6)
    # an unnormalised mean would weight long embeddings more: not what CLIP does
    raw = txt.reshape(4, 3, 8).mean(1)
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    assert not np.allclose(clf, raw, atol=1e-3)


def test_ranks_match_sklearn_and_the_v2_tie_rule():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(60, 8))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    clf = rng.normal(size=(9, 8))
    clf /= np.linalg.norm(clf, axis=1, keepdims=True)
    clf[5] = clf[2]  # exact ties between two classes
    y = rng.integers(0, 9, 60)
    r = class_ranks(img.astype(np.float32), clf.astype(np.float32), y, scale=50.0)
    logits = img.astype(np.float32) @ clf.astype(np.float32).T
    m = rank_metrics(r["rank"], y, 3, 9)
    ref = topk_scores(logits, np.arange(9), y, 3)
    assert m["top1_accuracy"] == pytest.approx(ref["top1_accuracy"])
    assert m["top3_accuracy"] == pytest.approx(ref["top3_accuracy"])
    assert m["mean_per_class_recall"] == pytest.approx(ref["mean_per_class_recall"])
    assert (r["pred"] == ref["predictions"]).all()
    assert m["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(y, r["pred"]))
    # rows whose true class is not in the tie: sklearn's top-3 (no tie rule needed) agrees
    clear = (y != 2) & (y != 5)
    assert (r["rank"][clear] <= 3).mean() == pytest.approx(
        top_k_accuracy_score(y[clear], logits[clear], k=3, labels=np.arange(9)))
    assert (r["rank"][y == 5] >= 2).all()  # class 5 ties class 2 and ranks after it


def test_template_ranks_equal_one_classifier_per_template():
    rng = np.random.default_rng(2)
    n_cls, n_tpl = 6, 4
    txt = rng.normal(size=(n_cls * n_tpl, 8)).astype(np.float32)
    txt[4 * n_tpl + 1] = txt[1 * n_tpl + 1]  # template 1: classes 1 and 4 tie exactly
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    img = rng.normal(size=(40, 8)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    y = rng.integers(0, n_cls, 40)
    got = template_ranks(img, txt, y, n_cls, n_tpl, chunk=7)
    per_class = txt.reshape(n_cls, n_tpl, 8)
    for t in range(n_tpl):
        ref = class_ranks(img, np.ascontiguousarray(per_class[:, t]), y, probabilities=False)
        assert (got[:, t] == ref["rank"]).all()
    assert (got[y == 4, 1] >= 2).all()


def test_logit_scale_and_bias_change_probabilities_not_ranks():
    src, _ = planted_zero_shot(n_classes=4, noise=1.5)
    src.scales["m"] = {"scale": 1.0, "bias": None}
    cold = _run(src, linear_probe=False)
    src.scales["m"] = {"scale": 100.0, "bias": None}
    hot = _run(src, linear_probe=False)
    src.scales["m"] = {"scale": 10.0, "bias": -10.0}
    siglip = _run(src, linear_probe=False)
    p_cold, p_hot = cold.extra_tables["predictions"], hot.extra_tables["predictions"]
    p_sig = siglip.extra_tables["predictions"]
    for other in (p_hot, p_sig):
        assert (other["true_class_rank"] == p_cold["true_class_rank"]).all()
        assert (other["predicted"] == p_cold["predicted"]).all()
    assert (p_hot["p_predicted"] > p_cold["p_predicted"]).all()  # a sharper softmax
    assert (p_hot["p_predicted"] <= 1.0).all() and (p_hot["p_true"] <= p_hot["p_predicted"]).all()
    assert not np.allclose(p_sig["p_predicted"], p_hot["p_predicted"])  # sigmoid, not softmax
    assert any("100 * cos;" in n and "softmax over classes" in n for n in hot.notes)
    assert any("sigmoid" in n for n in siglip.notes)
    assert (hot.table["logit_scale"] == 100.0).all()


def test_per_template_table_shows_which_prompts_help():
    def spoil(texts):  # "a drawing of the {}." points at a random direction
        rng = np.random.default_rng(3)
        return np.stack([(rng.normal(size=16) * 20 if t.startswith("a drawing") else
                          np.zeros(16)) for t in texts])

    src, _ = planted_zero_shot(n_classes=6, text_offset=spoil)
    per = _run(src, linear_probe=False).extra_tables["per_template"].set_index("template")
    assert per.loc["a photo of a {}.", "top1_accuracy"] == 1.0
    assert per.loc["a drawing of the {}.", "top1_accuracy"] < 0.6
    assert per.loc["ensemble of 3", "top1_accuracy"] > per.loc["a drawing of the {}.",
                                                                 "top1_accuracy"]


def test_linear_probe_gap_on_the_same_features():
    src, centroids = planted_zero_shot(n_per_class=10, n_classes=4, noise=0.3)
    names = src.splits_["test"].label_names
    # every prompt points at the NEXT class' centroid: zero-shot is always wrong
    src.text_fn = lambda s: centroids[(class_of_prompt(s.texts, s.label_names) + 1) % 4]
    res = _run(src)
    t = res.table.set_index("metric")
    zs = t.loc["top1_accuracy", "value"]
    lp = t.loc["linear_probe_top1_accuracy", "value"]
    assert zs == 0.0 and lp == 1.0  # the prompts name the wrong class; labels fix it
    assert t.loc["linear_probe_minus_zero_shot_top1_accuracy", "value"] == pytest.approx(lp - zs)
    assert t.loc["linear_probe_top1_accuracy", "site"] == "vision.proj"
    probe_calls = [c for c in src.calls if c.split == "train"]
    assert probe_calls and all(c.sites == ("vision.proj",) for c in probe_calls)
    assert any("linear_probe_minus_zero_shot" in n for n in res.notes)
    assert names == ["class0", "class1", "class2", "class3"]


def test_linear_probe_takes_the_v2_solver_options_and_notes():
    """M1's probe is V2's: raw features by default (recorded), ``standardize`` and
    ``solver_memory_gb`` reach the solver, unconverged fits are counted by stop reason."""
    src, _ = planted_zero_shot(n_per_class=10, n_classes=4, noise=0.3)
    res = _run(src, probe={**FAST_PROBE, "max_iter": 2, "solver_memory_gb": 0.25})
    lp = res.table[res.table["classifier"] == "linear_probe"]
    assert len(lp) and not lp["standardized"].any()
    note = next(n for n in res.notes if "did not reach" in n)
    assert note.startswith("zero_shot: model 'm': linear probe: ") and "max_iter (2)" in note
    assert any("peak memory estimate" in n and "budget 0.25 GiB" in n for n in res.notes)
    std = _run(src, probe={**FAST_PROBE, "standardize": True})
    assert std.table[std.table["classifier"] == "linear_probe"]["standardized"].all()


def test_linear_probe_auto_skips_without_a_train_split():
    src, _ = planted_zero_shot(splits=("test",))
    res = _run(src)
    assert not res.table["metric"].str.startswith("linear_probe").any()
    assert any("no linear probe" in n for n in res.notes)
    with pytest.raises(AnalysisError, match="no split 'train'"):
        _run(src, linear_probe=True)


def test_class_names_replace_the_dataset_names():
    src, _ = planted_zero_shot(n_classes=3)
    res = _run(src, class_names=["cat", "dog", "bird"], linear_probe=False)
    prompts = next(c for c in src.calls if c.view == "class_prompts")
    assert prompts.class_names == ("cat", "dog", "bird")
    assert set(res.extra_tables["predictions"]["label_name"]) == {"cat", "dog", "bird"}


def test_class_names_file_and_template_file(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("cat\n\ndog\nbird\n")
    tpl = tmp_path / "templates.json"
    tpl.write_text(json.dumps({"templates": ["a {} here.", "the {c}."]}))
    a = ZeroShot(["m"], "toy", {"class_names": str(names), "templates": str(tpl)})
    assert a.class_names == ["cat", "dog", "bird"] and a.templates == ["a {} here.", "the {c}."]
    lines = tmp_path / "t.txt"
    lines.write_text("# CLIP-style\na photo of a {}.\n")
    assert ZeroShot(["m"], "toy", {"templates": str(lines)}).templates == ["a photo of a {}."]


def test_packaged_sets():
    a = ZeroShot(["m"], "toy", {"class_names": "imagenet"})
    assert len(a.class_names) == 1000 and len(a.templates) == 80
    assert len({n.casefold() for n in a.class_names}) == 1000
    c = ZeroShot(["m"], "toy", {"class_names": "cifar10", "templates": "cifar10"})
    assert c.class_names == load_class_name_set("cifar10") and len(c.templates) == 18


@pytest.mark.parametrize("names, match", [
    (["cat", "", "dog"], "class name #1 is ''"),
    (["cat", "  "], "#1"),
    (["cat", "dog", "Cat "], "#0 'cat' and #2 'Cat '"),
    ([], "no class names"),
])
def test_bad_class_names_are_config_errors(names, match):
    with pytest.raises(ConfigError, match=match):
        ZeroShot(["m"], "toy", {"class_names": names})


def test_duplicate_class_name_in_a_file_names_the_file(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("cat\ndog\ncat\n")
    with pytest.raises(ConfigError, match=r"names\.txt.*#0 'cat' and #2 'cat'"):
        ZeroShot(["m"], "toy", {"class_names": str(f)})
    with pytest.raises(ConfigError, match="neither a packaged class-name set"):
        ZeroShot(["m"], "toy", {"class_names": str(tmp_path / "missing.txt")})


@pytest.mark.parametrize("templates, match", [
    ("a photo of a cat", "not a template"),
    (["a photo of a {}.", "a photo"], r"#1 'a photo' must contain"),
    (["a {} and a {}"], "exactly once"),
    (["a {name} photo {}"], "brace other than"),
    (["a {}.", "a {}."], "given twice"),
    ([], "no templates"),
])
def test_bad_templates_are_config_errors(templates, match):
    with pytest.raises(ConfigError, match=match):
        ZeroShot(["m"], "toy", {"templates": templates})


def test_other_bad_params():
    with pytest.raises(ConfigError, match="probe: unknown key"):
        ZeroShot(["m"], "toy", {"probe": {"layer": "all"}})
    with pytest.raises(ConfigError, match="zero_shot: probe: transfer: coarse_Cs"):
        ZeroShot(["m"], "toy", {"probe": {"coarse_Cs": [-1]}})
    with pytest.raises(ConfigError, match="linear_probe"):
        ZeroShot(["m"], "toy", {"linear_probe": "yes"})
    with pytest.raises(ConfigError, match="must differ"):
        ZeroShot(["m"], "toy", {"train_split": "test"})
    ZeroShot(["m"], "toy", {"train_split": "test", "linear_probe": False})  # fine without probe


def test_model_without_a_text_tower_is_a_clear_error():
    src, _ = planted_zero_shot()
    src.modalities["vit"] = ("image",)
    a = ZeroShot(["vit"], "toy", {"templates": TEMPLATES})
    with pytest.raises(AnalysisError, match=r"model 'vit' \(image\) has no text tower"):
        a.requests(src)
    with pytest.raises(AnalysisError, match="dual encoder"):
        a.run(src)


def test_unlabelled_data_and_a_class_count_mismatch():
    src, _ = planted_zero_shot(n_classes=3)
    with pytest.raises(DataError, match="3 classes but 2 class names"):
        _run(src, class_names=["cat", "dog"], linear_probe=False)
    src.splits_["test"].labels = None
    with pytest.raises(AnalysisError, match="no labels"):
        _run(src, linear_probe=False)


def test_binomial_interval_is_clopper_pearson():
    from scipy.stats import beta

    lo, hi = binomial_ci(7, 20, 0.95)
    assert lo == pytest.approx(beta.ppf(0.025, 7, 14)) and hi == pytest.approx(beta.ppf(0.975,
                                                                                          8, 13))


def test_class_prompt_stimuli_with_class_names():
    from vlprobe.data import class_prompt_stimuli
    from vlprobe.data.stimuli import Stimuli

    split = Stimuli("toy", "test", ["a", "b", "c"], texts=["x", "y", "z"],
                    labels=np.array([0, 2, 1]))  # labels without names
    prompts = class_prompt_stimuli(split, ["a {}.", "the {c}!"], ["cat", "dog", "owl"])
    assert prompts.texts == ["a cat.", "the cat!", "a dog.", "the dog!", "a owl.", "the owl!"]
    assert prompts.label_names == ["cat", "dog", "owl"] and list(prompts.labels) == [0, 0, 1, 1,
                                                                                     2, 2]
    with pytest.raises(DataError, match="has label 2 but only 2 class names"):
        class_prompt_stimuli(split, ["a {}."], ["cat", "dog"])
    with pytest.raises(DataError, match="no class names"):
        class_prompt_stimuli(split, ["a {}."])

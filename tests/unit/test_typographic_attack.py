"""M3 typographic attack: metrics against a planted model, the defence prompt variant, targets,
bad input, and the real path (tiny CLIP, rendered stimuli through the activation store)."""

from __future__ import annotations

import numpy as np
import pytest
from test_dual_fakes import DualFakeSource, image_split

from vlprobe.analyses import ANALYSES
from vlprobe.analyses.multimodal.typographic import METRICS, TypographicAttack
from vlprobe.data.typography import FONT_PACKAGE, find_font
from vlprobe.errors import AnalysisError, ConfigError, DataError

NAMES = ["cat", "dog", "car", "ship"]
C = len(NAMES)
FAST = {"n_boot": 200, "n_examples": 2}


@pytest.fixture(autouse=True, scope="module")
def _font():
    try:
        find_font()
    except DataError as exc:
        pytest.skip(f"no font: {exc}")


def visual_class(i, y):
    """The planted model sees image i as class y, except every fifth image (as y + 1)."""
    return y if i % 5 != 4 else (y + 1) % C


def planted(stim, modality, site):
    """Embeddings [visual class one-hot ; written class one-hot] (2C dims).

    Text: a plain prompt of class c is (e_c, e_c) (the picture AND the word), a defence prompt
    ("not the text") is (e_c, 0). Images: (e_v, w e_t) with t the written class; w = 2 on even
    images (the word wins: a flip under plain prompts), 0.5 on odd ones (no flip); controls
    and clean images carry no word."""
    out = np.zeros((len(stim.ids), 2 * C))
    if modality == "text":
        for i, (c, text) in enumerate(zip(stim.labels, stim.texts)):
            out[i, c] = 1.0
            if "not the text" not in text:
                out[i, C + c] = 1.0
        return out
    d = stim.descriptors
    for i in range(len(stim.ids)):
        b = d["base_index"][i]
        out[i, visual_class(b, stim.labels[i])] = 1.0
        if d["kind"][i] == "attack":
            out[i, C + d["target"][i]] = 2.0 if b % 2 == 0 else 0.5
    return out


def _source(n=20, modalities=("image", "text"), names=NAMES):
    stim = image_split(np.arange(n) % len(names), names, size=16)
    return DualFakeSource({"test": stim}, {"m": planted}, modalities={"m": modalities})


def test_registered():
    assert ANALYSES.get("M3") is TypographicAttack
    assert ANALYSES.canonical("M3") == "typographic_attack"


def test_metrics_match_the_planted_model():
    src = _source()
    res = TypographicAttack(["m"], "toy", {**FAST, "n_images": None}, seed=0).run(src)
    t = res.table
    # expected values, straight from the planted rule
    img = np.arange(20)
    y = img % C
    v = np.array([visual_class(i, y[i]) for i in img])
    pairs = [(i, c) for i in img for c in range(C) if c != y[i]]
    pi = np.array([i for i, _ in pairs])
    tgt = np.array([c for _, c in pairs])
    flip = (pi % 2 == 0) | (v[pi] == tgt)  # the word wins, or the picture already says t
    pred_attack = np.where(flip, tgt, v[pi])
    expect = {
        "clean_accuracy": np.mean(v == y),
        "attack_accuracy": np.mean(pred_attack == y[pi]),
        "control_accuracy": np.mean(v[pi] == y[pi]),
        "flip_rate": np.mean(flip),
        "control_target_rate": np.mean(v[pi] == tgt),
    }
    expect["accuracy_drop"] = np.mean(v[pi] == y[pi]) - expect["attack_accuracy"]
    expect["control_accuracy_drop"] = 0.0
    expect["typographic_effect"] = expect["flip_rate"] - expect["control_target_rate"]
    ok = v[pi] == y[pi]
    expect["flip_rate_clean_correct"] = np.mean(flip[ok])
    plain = t[t["prompts"] == "plain"].set_index("metric")
    assert list(plain.index) == list(METRICS)
    for metric, value in expect.items():
        assert plain.loc[metric, "value"] == pytest.approx(value), metric
        lo, hi = plain.loc[metric, ["ci_low", "ci_high"]]
        assert lo - 1e-12 <= value <= hi + 1e-12, metric
    assert plain.loc["flip_rate", "n"] == len(pairs) == 60
    assert plain.loc["clean_accuracy", "n"] == 20
    # the defence prompts ignore the written word: no flip beyond the picture's own
    defence = t[t["prompts"] == "defence"].set_index("metric")
    assert defence.loc["flip_rate", "value"] == pytest.approx(np.mean(v[pi] == tgt))
    assert defence.loc["typographic_effect", "value"] == pytest.approx(0.0)
    change = t[t["metric"] == "flip_rate_change"].iloc[0]
    assert change["prompts"] == "defence-plain"
    assert change["value"] == pytest.approx(np.mean(v[pi] == tgt) - np.mean(flip))
    assert change["ci_high"] < 0
    per = res.extra_tables["per_target"]
    assert set(per["written"]) == set(NAMES) and (per.groupby("prompts")["n"].sum() == 60).all()
    pairs_table = res.extra_tables["pairs"]
    assert len(pairs_table) == 120 and (pairs_table["control_text"] != pairs_table["written"]).all()
    assert set(res.figures) == {"summary", "examples_m"}
    assert any("not implemented" in n and "Defense-Prefix" in n for n in res.notes)


def test_targets_subsample_and_no_defence():
    src = _source()
    res = TypographicAttack(["m"], "toy", {**FAST, "n_images": 8, "targets": 1,
                                           "defence_templates": []}, seed=3).run(src)
    t = res.table
    assert set(t["prompts"]) == {"plain"} and "flip_rate_change" not in set(t["metric"])
    row = t.set_index("metric").loc["flip_rate"]
    assert row["n"] == 8 and row["n_images"] == 8
    rendered = [c for c in src.calls if c[2] == "image"]
    assert len(rendered) == 1  # one extraction of all renderings
    again = TypographicAttack(["m"], "toy", {**FAST, "n_images": 8, "targets": 1,
                                             "defence_templates": []}, seed=3).run(src)
    assert again.table.equals(t)


def test_bad_input():
    with pytest.raises(AnalysisError, match="no text tower"):
        TypographicAttack(["m"], "toy", FAST).run(_source(modalities=("image",)))
    with pytest.raises(DataError, match="empty"):
        TypographicAttack(["m"], "toy", FAST).run(_source(names=["cat", " ", "car", "ship"]))
    with pytest.raises(DataError, match="duplicates"):
        TypographicAttack(["m"], "toy", FAST).run(_source(names=["cat", "dog", "Cat", "ship"]))
    with pytest.raises(AnalysisError, match="at least 2"):
        TypographicAttack(["m"], "toy", FAST).run(_source(names=["cat"]))
    with pytest.raises(DataError, match=FONT_PACKAGE):
        TypographicAttack(["m"], "toy", {**FAST, "font": "NoSuchFont.ttf"}).run(_source())
    for bad in ({"size": 0}, {"position": "left"}, {"colour": "nocolour"}, {"targets": 0},
                {"templates": ["a photo"]}, {"templates": []}, {"n_images": 0}, {"ci": 1.5},
                {"defence_templates": "a photo"}):
        with pytest.raises(ConfigError):
            TypographicAttack(["m"], "toy", bad)
    # templates are read as M1 reads them: one template, a packaged set, a file or a list
    one = TypographicAttack(["m"], "toy", {"defence_templates": "a {}, not the text."})
    assert one.params["defence_templates"] == ["a {}, not the text."]
    assert len(TypographicAttack(["m"], "toy", {"templates": "cifar10"}).params["templates"]) == 18


def test_tiny_clip_through_the_store(tmp_path):
    """The real path: rendered images and class prompts through a tiny CLIP and the
    activation store; a second source over the same cache runs no forward pass."""
    from test_runner import spec_dict, write_image_folder

    from vlprobe.config import parse_config
    from vlprobe.feature_source import RunFeatureSource

    images = write_image_folder(tmp_path / "images", n_train=1, n_test=4)
    cfg = parse_config({
        "name": "m3", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "cache_dir": str(tmp_path / "cache"),
        "models": {"clip": spec_dict("clip", tmp_path)},
        "datasets": {"colours": {"loader": "image_folder", "path": str(images)}},
        "analyses": [{"analysis": "M3", "models": ["clip"], "dataset": "colours"}],
        "extraction": {"batch_size": 8, "shard_size": 64},
    })
    params = {"n_boot": 20, "n_examples": 1, "min_size": 64}
    first = RunFeatureSource(cfg, progress=False)
    res = TypographicAttack(["clip"], "colours", params).run(first)
    n_pairs = 4 * 3 * 2  # 12 images x 2 wrong classes
    assert (res.table.set_index("metric").loc["flip_rate", "n"] == n_pairs).all()
    t = res.table
    known = t[t["metric"] != "flip_rate_clean_correct"]
    assert known["value"].between(-1, 1).all()  # a random model: any rate, but a number
    derived = [e for e in first.log if e.view == "derived"]
    assert len(derived) == 1 and derived[0].n_items == 12 + 2 * n_pairs
    assert derived[0].n_items_computed == derived[0].n_items
    second = RunFeatureSource(cfg, progress=False)
    again = TypographicAttack(["clip"], "colours", params).run(second)
    assert second.forward_batches() == 0
    assert again.table.equals(res.table)

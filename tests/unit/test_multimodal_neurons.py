"""M5 multimodal neurons: the selectivity index, a planted cross-modal unit ranks first (and
single-modality units do not), the permutation null, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from test_dual_fakes import DualFakeSource, image_split

from vlprobe.analyses import ANALYSES
from vlprobe.analyses.multimodal.neurons import MultimodalNeurons, selectivity
from vlprobe.data.typography import find_font
from vlprobe.errors import AnalysisError, ConfigError, DataError

NAMES = ["cat", "dog", "car", "ship"]
U = 24
FAST = {"n_renders": 4, "n_show": 2, "n_top_images": 2, "card_size": 48, "n_permutations": 10}


@pytest.fixture(autouse=True, scope="module")
def _font():
    try:
        find_font()
    except DataError as exc:
        pytest.skip(f"no font: {exc}")


def planted(stim, modality, site):
    """Unit noise; unit 5 fires for dog pictures AND the word 'dog'; unit 9 for cat pictures
    only; unit 7 for the word 'car' only; unit 11 for any text (every card)."""
    rng = np.random.default_rng(len(stim.ids) + (site == "vision.blocks.0"))
    x = rng.normal(size=(len(stim.ids), U))
    if "concept" in stim.descriptors:  # word cards
        c = np.asarray(stim.descriptors["concept"])
        x[c == NAMES.index("dog"), 5] += 2.5
        x[c == NAMES.index("car"), 7] += 4.0
        x[:, 11] += 5.0
    else:
        x[stim.labels == NAMES.index("dog"), 5] += 2.5
        x[stim.labels == NAMES.index("cat"), 9] += 4.0
    if site == "vision.blocks.0":
        x[:, 5] = rng.normal(size=len(stim.ids))  # the early layer has no such unit
    return x


def _source(n=60, modalities=("image",), names=NAMES):
    stim = image_split(np.arange(n) % len(names), names, size=16)
    return DualFakeSource({"test": stim}, {"m": planted}, modalities={"m": modalities})


def test_registered():
    assert ANALYSES.get("M5") is MultimodalNeurons
    assert ANALYSES.canonical("M5") == "multimodal_neurons"


def test_selectivity_is_cohens_d():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3))
    m = np.arange(30) < 12
    a, b = x[m], x[~m]
    pooled = np.sqrt((11 * a.var(0, ddof=1) + 17 * b.var(0, ddof=1)) / 28)
    assert np.allclose(selectivity(x, m), (a.mean(0) - b.mean(0)) / pooled)
    x[:, 1] = 3.0  # a constant unit: no selectivity, no division by zero
    assert selectivity(x, m)[1] == 0.0
    assert np.all(selectivity(x, np.zeros(30, bool)) == 0.0)


def test_planted_cross_modal_unit_ranks_first():
    res = MultimodalNeurons(["m"], "toy", FAST, seed=0).run(_source())
    t = res.table
    top = t[(t.metric == "cross_modal") & (t["rank"] == 1)].set_index("concept")
    assert top.loc["dog", "unit"] == 5
    sel = res.extra_tables["selectivity"]
    assert sel.nlargest(1, "cross_modal")[["unit", "concept"]].values.tolist() == [[5, "dog"]]
    by = sel.set_index(["concept", "unit"])
    # one-modality units: high d in one set, but not cross-modal
    assert by.loc[("cat", 9), "d_image"] > 2 and by.loc[("cat", 9), "cross_modal"] < 1
    assert by.loc[("car", 7), "d_text"] > 2 and by.loc[("car", 7), "cross_modal"] < 1
    # a unit that fires for all text is not selective to any written name
    assert by.xs(11, level="unit")["d_text"].abs().max() < 1
    dog = t[t.concept == "dog"].set_index("metric")
    assert dog.loc["max_cross_modal", "value"] > dog.loc["null_cross_modal_q95", "value"]
    assert dog.loc["n_units_above_null", "value"] >= 1
    assert t[(t.concept == "dog") & (t.metric == "cross_modal")]["rank"].tolist() == list(
        range(1, 11))
    assert set(t["site"]) == {"vision.blocks.1"} and set(t["layer"]) == {1}
    assert set(res.figures) == {"selectivity_m", "top_units_m"}
    assert "Cohen's d" in res.notes[0] and "random letter strings" in res.notes[0]


def test_layer_concepts_and_controls():
    src = _source()
    res = MultimodalNeurons(["m"], "toy", {**FAST, "layer": 0, "concepts": ["dog", "cat"],
                                           "nonword_controls": False}).run(src)
    t = res.table
    assert set(t["site"]) == {"vision.blocks.0"} and set(t["concept"]) == {"dog", "cat"}
    top = t[(t.metric == "cross_modal") & (t["rank"] == 1)].set_index("concept")
    assert top.loc["dog", "unit"] != 5  # no planted unit in the early layer
    cards = [c for c in src.calls if c[1] == "cards"]
    assert cards and "random letter" not in res.notes[0]
    emb = MultimodalNeurons(["m"], "toy", {**FAST, "site": "vision.proj"}).run(src).table
    assert set(emb["site"]) == {"vision.proj"} and emb["layer"].isna().all()


def test_bad_input():
    with pytest.raises(AnalysisError, match="no image tower"):
        MultimodalNeurons(["m"], "toy", FAST).run(_source(modalities=("text",)))
    with pytest.raises(AnalysisError, match="not classes"):
        MultimodalNeurons(["m"], "toy", {**FAST, "concepts": ["dog", "zebra"]}).run(_source())
    with pytest.raises(DataError, match="duplicates"):
        MultimodalNeurons(["m"], "toy", FAST).run(_source(names=["cat", "dog", "Dog", "ship"]))
    with pytest.raises(AnalysisError, match="at least 2"):
        MultimodalNeurons(["m"], "toy", FAST).run(_source(n=5))
    for bad in ({"concepts": ["dog", "dog"]}, {"concepts": ["dog", ""]}, {"concepts": ["dog"]},
                {"concepts": "dog"}, {"layer": "all"}, {"layer": [1, 2]}, {"n_renders": 0},
                {"background": "nocolour"}, {"n_images": 1}, {"site": 3}):
        with pytest.raises(ConfigError):
            MultimodalNeurons(["m"], "toy", bad)

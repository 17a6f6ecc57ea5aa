"""The analysis-result cache: a rerun fits nothing; any change to what a result depends on
(params, seed, analysis version, data, pooling) recomputes it; --force recomputes."""

from __future__ import annotations

import copy
import logging
import shutil
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_runner import spec_dict, write_image_folder

from vlprobe.analyses.base import Analysis, FeatureRequest, LayerFeatures, Result
from vlprobe.analyses.vision.fewshot import FewShot
from vlprobe.analyses.vision.probe import LayerProbe
from vlprobe.config import parse_config
from vlprobe.results.cache import (
    RecordingSource,
    ResultCache,
    collect_result_garbage,
    current_read,
    plan_key_dict,
)
from vlprobe.results.records import read_result_table, read_run
from vlprobe.runner import run


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A tiny image dataset, model and a first run whose cache the tests share."""
    root = tmp_path_factory.mktemp("result_cache")
    images = write_image_folder(root / "images")
    config = {
        "name": "cached",
        "seed": 0,
        "output_dir": str(root / "runs"),
        "cache_dir": str(root / "cache"),
        "models": {"vit": spec_dict("hf_vit", root)},
        "datasets": {"colours": {"loader": "image_folder", "path": str(images)}},
        "analyses": [
            {"analysis": "V3", "models": ["vit"], "dataset": "colours",
             "params": {"shots": [1, 5], "trials": 3}},
            {"analysis": "V1", "models": ["vit"], "dataset": "colours",
             "params": {"Cs": [1.0], "layers": "last"}},
        ],
        "extraction": {"batch_size": 8, "shard_size": 16},
    }
    first = run(parse_config(config), progress=False, report=False)
    return root, config, first


def caches(run_dir) -> dict[str, str]:
    return {name: a.get("cache") for name, a in read_run(run_dir)["analyses"].items()}


def _fail_if_run(self, source):
    raise AssertionError("the analysis ran although its result is cached")


def test_first_run_computes_and_caches(shared):
    _, _, first = shared
    record = read_run(first)
    assert record["status"] == "ok", record["analyses"]
    assert set(caches(first).values()) == {"computed"}
    assert all(a["cache_key"] for a in record["analyses"].values())
    assert record["cache"]["results_computed"] == 2


def test_rerun_fits_nothing_reuses_files_and_other_run_dirs_share_results(shared, monkeypatch):
    _, config, first = shared
    monkeypatch.setattr(LayerProbe, "run", _fail_if_run)
    monkeypatch.setattr(FewShot, "run", _fail_if_run)
    figure = next((first / "figures").glob("V1_colours__*.png"))
    written = figure.stat().st_mtime_ns
    again = run(parse_config(config), progress=False, report=True)
    assert again == first
    record = read_run(again)
    assert record["status"] == "ok", record["analyses"]
    assert set(caches(again).values()) == {"hit"}
    assert record["forward_batches"] == 0 and record["extractions"] == []
    assert figure.stat().st_mtime_ns == written  # this directory already held the result

    other = run(parse_config({**config, "name": "elsewhere"}), progress=False, report=False)
    assert other != first
    assert set(caches(other).values()) == {"hit"}
    for name in ("V1_colours", "V3_colours"):
        a = read_result_table(first, name).drop(columns=["run_id", "config_hash"])
        b = read_result_table(other, name).drop(columns=["run_id", "config_hash"])
        pd.testing.assert_frame_equal(a, b)
    assert (other / "figures").is_dir() and any((other / "figures").iterdir())


def test_force_recomputes(shared, monkeypatch):
    _, config, _ = shared
    monkeypatch.setattr(FewShot, "run", _fail_if_run)
    forced = run(parse_config(config), progress=False, force=True, report=False)
    record = read_run(forced)
    assert record["analyses"]["V3_colours"]["status"] == "failed"
    assert "although its result is cached" in record["analyses"]["V3_colours"]["error"]
    assert record["analyses"]["V1_colours"]["cache"] == "recomputed (--force)"


@pytest.mark.parametrize("change", ["params", "seed", "version", "pooling"])
def test_what_changes_a_result_recomputes_it(shared, change, monkeypatch):
    _, config, _ = shared
    config = copy.deepcopy(config)
    if change == "params":
        config["analyses"][0]["params"]["trials"] = 4
    elif change == "seed":
        config["seed"] = 1
    elif change == "version":
        monkeypatch.setattr(FewShot, "version", "2")
    elif change == "pooling":
        config["extraction"]["pooling"] = "max"
    record = read_run(run(parse_config(config), progress=False, report=False))
    assert record["analyses"]["V3_colours"]["cache"] == "computed", change
    unchanged = "hit" if change in ("params", "version") else "computed"
    assert record["analyses"]["V1_colours"]["cache"] == unchanged, change


def test_changed_data_content_recomputes(shared):
    root, config, _ = shared
    copy_dir = root / "images_copy"
    shutil.copytree(config["datasets"]["colours"]["path"], copy_dir)
    config = copy.deepcopy(config)
    config["datasets"]["colours"]["path"] = str(copy_dir)
    config["analyses"] = config["analyses"][:1]
    assert caches(run(parse_config(config), progress=False, report=False)) == {
        "V3_colours": "computed"}
    assert caches(run(parse_config(config), progress=False, report=False)) == {
        "V3_colours": "hit"}
    first = sorted((copy_dir / "test" / "red").glob("*.png"))[0]
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(first)  # same path, new pixels
    assert caches(run(parse_config(config), progress=False, report=False)) == {
        "V3_colours": "computed"}


# -- the cache itself, without models ---------------------------------------------------------
class _Toy(Analysis):
    name = "toy"
    catalogue = ("X",)
    defaults: ClassVar[dict] = {"k": 1}

    def requests(self, source):
        return [FeatureRequest("m", "d", "train")]

    def run(self, source):
        feats = source.get(FeatureRequest("m", "d", "train"))
        table = pd.DataFrame({"model": ["m"], "value": [float(feats.features["s"].sum())]})
        return Result("toy", ("X",), table)


class _Source:
    device = "cpu"

    def __init__(self):
        self.key = "k1"

    def get(self, request):
        return LayerFeatures({"s": np.ones((2, 3), np.float32)}, {"s": 0}, None, ["a", "b"],
                             keys={"s": self.key})

    def feature_keys(self, request):
        return {"s": self.key}

    def stimuli_key(self, request):
        return "stim"

    def extract(self, model, stimuli, modality, sites, pooling=None):
        return LayerFeatures({"s": np.ones((2, 3), np.float32)}, {"s": 0}, None, ["a", "b"],
                             keys={"s": "derived-" + self.model})

    def model_key(self, model):
        return self.model

    model = "weights-1"


class _Derived(_Toy):
    """Reads features of stimuli it built itself (rendered images, prompts)."""

    name = "derived"

    def run(self, source):
        feats = source.extract("m", None, "image", ("s",))
        table = pd.DataFrame({"model": ["m"], "value": [float(feats.features["s"].sum())]})
        return Result("derived", ("X",), table)


def test_derived_features_record_the_model_identity(tmp_path):
    """An analysis that reads only features of stimuli it built (FeatureSource.extract)
    misses the cache once the model changes (its identity is recorded with the result)."""
    cache, source = ResultCache(tmp_path), _Source()
    analysis = _Derived(["m"], "d", {"k": 2})
    plan = plan_key_dict(analysis, "cpu", {"vlprobe": "0.1.0"})
    recorder = RecordingSource(source)
    result = analysis.run(recorder)
    assert recorder.reads == [{"kind": "model", "model": "m", "identity": "weights-1"}]
    cache.store(plan, recorder.reads, result, 1.0)

    def current(read):
        return current_read(source, read)

    assert cache.lookup(plan, current) is not None
    source.model = "weights-2"
    assert cache.lookup(plan, current) is None


def test_lookup_rechecks_the_recorded_reads(tmp_path, caplog):
    cache, source = ResultCache(tmp_path), _Source()
    analysis = _Toy(["m"], "d", {"k": 2})
    plan = plan_key_dict(analysis, "cpu", {"vlprobe": "0.1.0", "numpy": "2"})
    recorder = RecordingSource(source)
    result = analysis.run(recorder)
    assert recorder.reads[0]["keys"] == {"s": "k1"}
    key = cache.store(plan, recorder.reads, result, 1.5)

    def current(read):
        return current_read(source, read)

    hit = cache.lookup(plan, current)
    assert hit is not None and hit.key == key and hit.seconds == 1.5
    pd.testing.assert_frame_equal(hit.result.table, result.table)
    # other versions, device or params: another plan, no hit
    assert cache.lookup({**plan, "versions": {"vlprobe": "0.2.0"}}, current) is None
    assert plan_key_dict(analysis, "cuda:1", {}) != plan_key_dict(analysis, "cpu", {})
    assert plan_key_dict(analysis, "cuda:1", {}) == plan_key_dict(analysis, "cuda:0", {})
    # a feature the result read now has another store key: a miss
    source.key = "k2"
    assert cache.lookup(plan, current) is None
    source.key = "k1"
    # a damaged pickle is a miss with a warning, not a crash
    (cache.root / next(iter(p.name for p in cache.root.iterdir())) / key / "result.pkl"
     ).write_bytes(b"not a pickle")
    with caplog.at_level(logging.WARNING, logger="vlprobe"):
        assert cache.lookup(plan, current) is None
    assert "does not load" in caplog.text


def test_gc_removes_stale_and_unused_results(tmp_path):
    cache, source = ResultCache(tmp_path), _Source()
    analysis = _Toy(["m"], "d")
    old = plan_key_dict(analysis, "cpu", {"vlprobe": "0.0.1"})
    now = plan_key_dict(analysis, "cpu", {"vlprobe": __import__("vlprobe").__version__})
    for plan in (old, now):
        recorder = RecordingSource(source)
        cache.store(plan, recorder.reads, analysis.run(recorder), 0.1)
    dry = collect_result_garbage(cache, stale=True, dry_run=True)
    assert [a.reason for a in dry] == ["stale (vlprobe 0.0.1)"] and not dry[0].removed
    assert dry[0].path.exists()
    done = collect_result_garbage(cache, stale=True)
    assert len(done) == 1 and not done[0].path.exists()
    assert len(collect_result_garbage(cache, older_than_days=-1)) == 1
    assert not any(cache.root.iterdir())


def test_request_round_trip_keeps_tuples():
    """Recorded requests come back equal (and hashable) with attention and class names."""
    from vlprobe.results.cache import request_dict, request_from_dict

    request = FeatureRequest("m", "d", "test", sites=("fusion.blocks.0.attn",),
                             attention=("reduce:mass", "raw"), view="class_prompts",
                             class_names=("cat", "dog"))
    back = request_from_dict(request_dict(request))
    assert back == request and hash(back) == hash(request)

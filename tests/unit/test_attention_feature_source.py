"""Analyses ask for attention statistics through FeatureRequest / the run's FeatureSource:
prefetch merges them into the hidden-state pass (one forward per batch), get() reads them
back with block layer indexes; the run config's raw attention limit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from _helpers import record_forwards, tiny_model_entry
from vlprobe.analyses.base import FeatureRequest
from vlprobe.config import parse_config
from vlprobe.errors import ConfigError
from vlprobe.extract import RaggedArray
from vlprobe.feature_source import RunFeatureSource

N_PER_CLASS = 7  # 3 classes: 21 train images -> shards of 16 + 5, batches of 8


def config(tmp_path, **extraction) -> dict:
    rng = np.random.default_rng(0)
    for c, name in enumerate(("red", "green", "blue")):
        folder = tmp_path / "images" / "train" / name
        folder.mkdir(parents=True)
        for i in range(N_PER_CLASS):
            pixels = rng.integers(0, 90, size=(32, 32, 3))
            pixels[..., c] += 150
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    model = tiny_model_entry("hf_vit", tmp_path / "vit")
    return {
        "name": "att", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
        "models": {"vit": model},
        "datasets": {"colours": {"loader": "image_folder", "path": str(tmp_path / "images")}},
        "analyses": [{"analysis": "V1", "models": ["vit"], "dataset": "colours"}],
        "extraction": {"batch_size": 8, "shard_size": 16, **extraction},
    }


def spy(source: RunFeatureSource, model: str) -> list[tuple[tuple[str, ...], int]]:
    return record_forwards(source, (model,), lambda _, batch, sites, __: (tuple(sites),
                                                                         len(batch)))


def test_prefetch_merges_attention_reducers_into_the_hidden_state_pass(tmp_path):
    source = RunFeatureSource(parse_config(config(tmp_path)), progress=False)
    assert source.attention_sites("vit", "image") == ["vision.blocks.0.attn",
                                                      "vision.blocks.1.attn"]
    calls = spy(source, "vit")
    hidden = FeatureRequest("vit", "colours", "train")
    entropy = FeatureRequest("vit", "colours", "train",
                             sites=("vision.blocks.0.attn", "vision.blocks.1.attn"),
                             attention=("reduce:entropy",))
    raw = FeatureRequest("vit", "colours", "train", sites=("vision.blocks.1.attn",),
                         attention=("reduce:distance", "raw"))
    mixed = FeatureRequest("vit", "colours", "train",
                           sites=("vision.blocks.1", "vision.blocks.0.attn"),
                           attention=("reduce:mass",))
    assert source.prefetch([hidden, entropy, raw, mixed]) == []
    n_batches = 2 + 1  # shard of 16 -> 2 batches, shard of 5 -> 1
    probe = [c for c in calls if c[1] == 1]
    assert len(probe) == 1 and probe[0][0] == ("vision.blocks.1.attn",)  # sizes raw attention
    passes = [c for c in calls if c[1] > 1]
    assert len(passes) == n_batches
    every = {*source.layer_sites("vit", "image"), "vision.pooled", "vision.blocks.0.attn",
             "vision.blocks.1.attn"}
    assert all(set(sites) == every for sites, _ in passes)
    assert source.forward_batches() == n_batches + 1

    calls.clear()
    got = {name: source.get(r) for name, r in
           (("hidden", hidden), ("entropy", entropy), ("raw", raw), ("mixed", mixed))}
    assert calls == []  # everything was cached by the one pass
    ent = got["entropy"]
    assert ent.attention_features("reduce:entropy") == ["vision.blocks.0.attn@entropy",
                                                        "vision.blocks.1.attn@entropy"]
    assert ent.layers["vision.blocks.1.attn@entropy"] == 2  # like vision.blocks.1
    assert ent.features["vision.blocks.0.attn@entropy"].shape == (3 * N_PER_CLASS, 2)
    assert ent.layer_sites() == []  # no hidden-state layer asked
    assert isinstance(got["raw"].features["vision.blocks.1.attn@raw"], RaggedArray)
    assert got["raw"].features["vision.blocks.1.attn@raw"][0].shape == (2, 17, 17)
    mixed_lf = got["mixed"]
    assert mixed_lf.layer_sites() == ["vision.blocks.1"]
    assert mixed_lf.features["vision.blocks.0.attn@mass"].shape == (3 * N_PER_CLASS, 2, 3, 3)
    assert mixed_lf.layers["vision.blocks.0.attn@mass"] == 1
    assert got["hidden"].layer_sites() == source.layer_sites("vit", "image")


def test_attention_requests_are_checked(tmp_path):
    source = RunFeatureSource(parse_config(config(tmp_path)), progress=False)
    no_method = FeatureRequest("vit", "colours", "train", sites=("vision.blocks.0.attn",))
    with pytest.raises(ConfigError, match=r"needs a method.*reduce:mass"):
        source.get(no_method)
    no_site = FeatureRequest("vit", "colours", "train", attention=("reduce:mass",))
    with pytest.raises(ConfigError, match=r"none of its sites is an attention site"):
        source.get(no_site)
    bad = FeatureRequest("vit", "colours", "train", sites=("vision.blocks.0.attn",),
                         attention=("reduce:entropie",))
    errors = source.prefetch([bad])
    assert len(errors) == 1 and "Did you mean entropy" in errors[0]


def test_run_config_raw_attention_limit(tmp_path):
    import copy

    data = config(tmp_path, raw_attention_limit_gb=1e-9)  # 1 byte
    cfg = parse_config(data)
    assert cfg.extraction.raw_attention_limit_gb == 1e-9
    plain = copy.deepcopy(data)
    del plain["extraction"]["raw_attention_limit_gb"]
    assert parse_config(plain).extraction.raw_attention_limit_gb == 2.0
    assert cfg.config_hash() == parse_config(plain).config_hash()  # a guard, not a result
    source = RunFeatureSource(cfg, progress=False)
    request = FeatureRequest("vit", "colours", "train", sites=("vision.blocks.0.attn",),
                             attention=("raw",))
    with pytest.raises(ConfigError, match=r"over the limit of 1 bytes.*raw_attention_limit_gb"):
        source.get(request)
    for bad in (0, -1.0, "2", True):
        wrong = copy.deepcopy(data)
        wrong["extraction"]["raw_attention_limit_gb"] = bad
        with pytest.raises(ConfigError, match=r"extraction\.raw_attention_limit_gb"):
            parse_config(wrong)

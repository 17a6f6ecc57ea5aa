"""RunConfig validation: every bad field gets a message that names it."""

from __future__ import annotations

import pytest

from vlprobe.config import apply_overrides, load_config, parse_config
from vlprobe.errors import ConfigError


def base_config() -> dict:
    return {
        "name": "t",
        "models": {"m": {"adapter": "hf_vit", "random_init": True, "config": "/x"}},
        "datasets": {"d": {"loader": "image_folder", "path": "/data"}},
        "analyses": [{"analysis": "V1", "models": ["m"], "dataset": "d"}],
    }


def test_valid_config_parses_and_names_analyses():
    cfg = parse_config(base_config())
    assert cfg.analyses[0].name == "V1_d"
    assert cfg.models["m"].random_init is True
    assert len(cfg.config_hash()) == 10


def test_config_hash_ignores_output_location_but_not_seed():
    a = parse_config(base_config())
    b = parse_config({**base_config(), "output_dir": "/elsewhere"})
    c = parse_config({**base_config(), "seed": 1})
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != c.config_hash()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.update(sed=1), "unknown key 'sed' (did you mean 'seed'?)"),
        (lambda c: c["models"]["m"].update(adaptor="x"), "models.m: unknown key 'adaptor'"),
        (lambda c: c["models"]["m"].update(adapter="hf_vitt"), "Did you mean 'hf_vit'"),
        (lambda c: c["datasets"]["d"].update(loader="imagefolder"), "Did you mean 'image_folder'"),
        (lambda c: c["analyses"][0].update(analysis="V99"), "analyses[0].analysis: unknown"),
        (lambda c: c["analyses"][0].update(models=["n"]), "analyses[0].models[0]: 'n' is not"),
        (lambda c: c["analyses"][0].update(dataset="e"), "analyses[0].dataset: 'e' is not"),
        (lambda c: c["analyses"][0].update(params={"bogus": 1}), "unknown parameter(s) 'bogus'"),
        (lambda c: c["datasets"]["d"].update(subsample={"train": -1}), "subsample.train"),
        (lambda c: c["datasets"]["d"].update(test_fraction=2), "test_fraction"),
        (lambda c: c.update(name="a b"), "name: 'a b' may only contain"),
        (lambda c: c.pop("analyses"), "missing required key 'analyses'"),
        (lambda c: c.update(extraction={"batch_size": 0}), "extraction.batch_size"),
        (lambda c: c.update(extraction={"text_shard_size": 0}), "extraction.text_shard_size"),
        (lambda c: c["models"]["m"].update(dtype="float8"), "models.m.dtype"),
    ],
)
def test_invalid_configs_name_the_field(mutate, message):
    cfg = base_config()
    mutate(cfg)
    with pytest.raises(ConfigError) as info:
        parse_config(cfg)
    assert message in str(info.value)


def test_overrides_set_nested_fields_and_list_items():
    data = apply_overrides(
        base_config(), ["seed=3", "analyses.0.params.probe=linear", "models.m.seed=7"]
    )
    assert data["seed"] == 3
    assert data["analyses"][0]["params"] == {"probe": "linear"}
    assert data["models"]["m"]["seed"] == 7
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides(base_config(), ["analyses.5.name=x"])
    with pytest.raises(ConfigError, match=r"expected key\.path=value"):
        apply_overrides(base_config(), ["seed"])


def test_load_config_reports_yaml_problems(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(listy)


def test_unique_analysis_names():
    cfg = base_config()
    cfg["analyses"].append(dict(cfg["analyses"][0]))
    parsed = parse_config(cfg)
    assert [a.name for a in parsed.analyses] == ["V1_d", "V1_d_2"]
    cfg["analyses"][0]["name"] = "same"
    cfg["analyses"][1]["name"] = "same"
    with pytest.raises(ConfigError, match="used twice"):
        parse_config(cfg)


def test_text_shard_size_is_a_speed_guard_used_only_for_pooled_text():
    """Texts are length-sorted within a shard, so text-only pooled extractions use the larger
    ``text_shard_size``; token-level outputs, attention and other modalities keep
    ``shard_size``. It changes no number, so it is not part of the config hash."""
    from vlprobe.feature_source import shard_size_for

    plain = parse_config(base_config())
    assert plain.extraction.text_shard_size == 4096
    cfg = base_config()
    cfg["extraction"] = {"shard_size": 100, "text_shard_size": 700}
    ex = parse_config(cfg).extraction
    assert parse_config(cfg).config_hash() == parse_config(
        dict(cfg, extraction={"shard_size": 100})).config_hash()
    assert shard_size_for(ex, "text", None, {}) == 700
    assert shard_size_for(ex, "text", "mean", None) == 700
    assert shard_size_for(ex, "text", "none", {}) == 100  # token-level buffers
    assert shard_size_for(ex, "text", {"text.blocks.0": "none"}, {}) == 100
    assert shard_size_for(ex, "text", "mean", {"text.blocks.0.attn": ["raw"]}) == 100
    assert shard_size_for(ex, "image", "mean", {}) == 100
    assert shard_size_for(ex, "pair", "mean", {}) == 100


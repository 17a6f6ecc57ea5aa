"""Model paths in configs expand ``~``, environment variables and ``${reference}``."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

from tiny_models import tiny_spec
from vlprobe.errors import ConfigError
from vlprobe.models import load_model


@pytest.mark.parametrize("adapter", ["clip", "hf_vit"])
def test_reference_placeholder_in_a_random_init_config(adapter, tmp_path, monkeypatch):
    spec = tiny_spec(adapter, tmp_path / "tiny")
    source = spec.config or spec.checkpoint
    kit = tmp_path / "kit"
    shutil.copytree(source, kit / "model_configs" / "tiny")
    monkeypatch.setenv("VLPROBE_REFERENCE", str(kit))
    placeholder = replace(spec, config="${reference}/model_configs/tiny", checkpoint=None)
    adapter_obj = load_model(placeholder)
    assert adapter_obj.sites()

    monkeypatch.delenv("VLPROBE_REFERENCE")
    with pytest.raises(ConfigError, match="VLPROBE_REFERENCE"):
        load_model(placeholder)

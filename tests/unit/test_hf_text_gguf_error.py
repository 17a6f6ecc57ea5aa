"""hf_text: converting a GGUF file the model does not have is a clear error (no assert)."""

from __future__ import annotations

import pytest

from _helpers import tiny_adapter
from vlprobe.errors import ModelLoadError


def test_converted_dir_without_gguf_is_a_model_load_error(tmp_path):
    adapter = tiny_adapter("hf_text", tmp_path)
    assert adapter.source.gguf is None
    with pytest.raises(ModelLoadError, match="has no GGUF file"):
        adapter._converted_dir()

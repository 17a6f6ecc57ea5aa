"""Tiny, fully deterministic architectures + tokenizers for tests (``Adapter.tiny_spec``).

Tokenizers are word-level (or WordPiece for BERT) over a fixed vocabulary built with the
``tokenizers`` library, so they need no download and no training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_WORD_TEXT = (
    "a an the of to in on at with and or is are was were be this that it its photo picture "
    "image cat dog kitten puppy bird car house tree man woman child red blue green big small "
    "sits runs stands looks black white stock market price rises falls today very quite one "
    "two three , . ! ?"
)
WORDS = tuple(_WORD_TEXT.split())


def write_tiny_tokenizer(
    directory: str | Path,
    *,
    style: str,
    model_max_length: int = 64,
) -> dict[str, int]:
    """Write a tiny tokenizer to ``directory`` and return its special-token ids.

    Styles: ``"bert"`` (WordPiece, ``[CLS] x [SEP]``, pad ``[PAD]``), ``"clip"``
    (``<|startoftext|> x <|endoftext|>``, pad = eos like OpenAI CLIP), ``"gpt2"`` (no special
    tokens added, eos ``<|endoftext|>``, no pad), ``"llama"`` (``<s> x``, eos ``</s>``).
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel, WordPiece
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if style == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    elif style == "clip":
        specials = ["<|startoftext|>", "<|endoftext|>", "<unk>"]
    elif style == "gpt2":
        specials = ["<|endoftext|>"]
    elif style == "llama":
        specials = ["<unk>", "<s>", "</s>"]
    else:  # pragma: no cover
        raise ValueError(style)
    vocab = {tok: i for i, tok in enumerate([*specials, *WORDS])}
    if style == "bert":
        tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    else:
        unk = {"clip": "<unk>", "gpt2": "<|endoftext|>", "llama": "<unk>"}[style]
        tok = Tokenizer(WordLevel(vocab, unk_token=unk))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
        )
    kwargs: dict[str, Any] = {"model_max_length": model_max_length}
    if style == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        kwargs.update(
            pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
            mask_token="[MASK]",
        )
    elif style == "clip":
        tok.post_processor = processors.TemplateProcessing(
            single="<|startoftext|> $A <|endoftext|>",
            special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)],
        )
        kwargs.update(
            bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
            unk_token="<unk>",
        )
    elif style == "gpt2":
        kwargs.update(eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                      unk_token="<|endoftext|>")
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 1)]
        )
        kwargs.update(bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    fast.save_pretrained(str(directory))
    return {name: vocab[name] for name in specials} | {"vocab_size": len(vocab)}


def write_config(directory: str | Path, config: Any) -> Path:
    """Save a transformers config (or a plain dict) as ``directory/config.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if hasattr(config, "save_pretrained"):
        config.save_pretrained(str(directory))
    else:
        (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory

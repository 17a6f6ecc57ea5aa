"""The word-level caption vocabulary of the trained captioners.

Words, not sub-words: the classic Flickr8k captioners (Karpathy & Fei-Fei 2015; Show, Attend
and Tell, Xu et al. 2015) predict words from a vocabulary of the TRAIN captions' words seen at
least 5 times (about 2,500 on Flickr8k). A word vocabulary keeps the output layer small (fast
on CPUs) and makes every generated token a word, so per-token cross-attention is per-word
attention (the grounding analyses of seed 003 need no sub-word merging).

Normalisation (Karpathy's ``prepro``): lowercase, delete ASCII punctuation
(``string.punctuation``: "tri-colored" -> "tricolored", "dog's" -> "dogs"), split on
whitespace. :func:`caption_words` does it in Python; the tokenizer built by
:func:`build_tokenizer` (a ``tokenizers`` WordLevel model wrapped as a transformers
``PreTrainedTokenizerFast``, saved with the checkpoint) does the same with character offsets.

Special tokens (fixed ids): ``<pad>`` 0, ``<bos>`` 1 (the decoder's start token), ``<eos>`` 2,
``<unk>`` 3 (a word below the count threshold). The tokenizer adds none of them itself; the
decoder input of a caption is ``[<bos>] + words`` and its target ``words + [<eos>]``.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable
from typing import Any

from vlprobe.errors import DataError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
_DELETE = str.maketrans("", "", string.punctuation)
#: the same characters as a regex class for the tokenizers library (ranges of ASCII punctuation)
_PUNCT_REGEX = r"[!-/:-@\[-`{-~]"


def caption_words(text: str) -> list[str]:
    """Lowercased words of ``text`` with ASCII punctuation deleted."""
    return str(text).lower().translate(_DELETE).split()


def count_words(captions: Iterable[str]) -> Counter:
    """Word counts over captions (after :func:`caption_words`)."""
    counts: Counter = Counter()
    for caption in captions:
        counts.update(caption_words(caption))
    return counts


def vocabulary(captions: Iterable[str], min_count: int = 5) -> list[str]:
    """Special tokens, then the words seen at least ``min_count`` times, most frequent first
    (ties alphabetical: the same captions always give the same ids)."""
    if min_count < 1:
        raise DataError(f"vocabulary: min_count must be >= 1, got {min_count}")
    counts = count_words(captions)
    words = sorted((w for w, n in counts.items() if n >= min_count and w not in SPECIALS),
                   key=lambda w: (-counts[w], w))
    if not words:
        raise DataError(f"vocabulary: no word occurs {min_count} times in the training captions")
    return [*SPECIALS, *words]


def build_tokenizer(vocab: list[str], max_length: int) -> Any:
    """A transformers ``PreTrainedTokenizerFast`` over ``vocab`` (from :func:`vocabulary`):
    :func:`caption_words` normalisation, unknown words -> ``<unk>``, no special tokens added,
    right padding with ``<pad>``; ``model_max_length`` = ``max_length`` decoder positions."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
        raise DataError(f"vocabulary must start with {SPECIALS}, got {vocab[:4]}")
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.Replace(Regex(_PUNCT_REGEX), "")]
    )
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        model_max_length=int(max_length), padding_side="right",
    )
    return fast


def load_tokenizer(directory: Any) -> Any:
    """The tokenizer saved in a checkpoint directory (``save_pretrained`` files)."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(directory))
    ids = [tok.convert_tokens_to_ids(s) for s in SPECIALS]
    if ids != list(range(len(SPECIALS))):
        raise DataError(f"{directory}: tokenizer special ids {ids}, expected 0..3 for {SPECIALS}")
    tok.padding_side = "right"
    return tok

"""The check that keeps a silently empty transformers tokenizer out of every adapter.

transformers (5.x) builds a tokenizer from a directory that holds only a model config (no
vocabulary files) without any error: an "empty" vocabulary of its special tokens (5 ids for
BERT, 1 for GPT-2), so every word becomes ``[UNK]`` (or nothing at all) and every text looks
the same to the model. :func:`tokenizer_problem` says what is wrong with such a tokenizer;
:func:`load_checked_tokenizer` (every transformers adapter's own tokenizer) and the fusion
models' tokenizer search (:func:`vlprobe.models._fusion.load_bert_tokenizer`) refuse a
tokenizer it objects to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlprobe.errors import ModelLoadError
from vlprobe.models.hf_source import Source, hub_errors

#: files that hold a vocabulary (fast: tokenizer.json; WordPiece: vocab.txt; BPE: vocab.json +
#: merges.txt; SentencePiece: *.model).
VOCAB_FILES = (
    "tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model",
    "spiece.model", "sentencepiece.bpe.model",
)
#: a tokenizer with fewer ids than this fraction of the config's ``vocab_size`` is refused.
#: Real checkpoints pad ``vocab_size`` by at most a few percent (Qwen2: 151,936 vs 151,665 ids;
#: phi-1.5: 51,200 vs 50,295); an empty vocabulary has a handful of ids.
MIN_VOCAB_FRACTION = 0.5


def vocabulary_files(directory: str | Path) -> list[str]:
    """The :data:`VOCAB_FILES` present in ``directory``."""
    directory = Path(directory)
    return [name for name in VOCAB_FILES if (directory / name).is_file()]


def config_vocab_size(config: Any) -> int | None:
    """A transformers config's ``vocab_size`` (of its text / decoder sub-config for a
    composite model such as CLIP or a VisionEncoderDecoder); None where it has none."""
    for cfg in (config, getattr(config, "text_config", None), getattr(config, "decoder", None)):
        value = getattr(cfg, "vocab_size", None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def no_files_message(directory: Path) -> str:
    """The problem of a directory without any of :data:`VOCAB_FILES`."""
    return f"{str(directory)!r} holds no tokenizer files (none of {', '.join(VOCAB_FILES)})"


def tokenizer_problem(tokenizer: Any, vocab_size: int | None, directory: Path | None) -> str | None:
    """Why ``tokenizer`` cannot be the tokenizer of a model with ``vocab_size`` ids (None if
    it can). ``directory``: the local directory it was loaded from (None for a hub id).

    Refused: a tokenizer with fewer than :data:`MIN_VOCAB_FRACTION` x ``vocab_size`` ids that
    was loaded from a directory without vocabulary files (:data:`VOCAB_FILES`) or from the hub;
    and, where the config has no ``vocab_size``, any directory without a tokenizer file. A
    small vocabulary whose files are present is the user's choice and accepted.
    """
    n = len(tokenizer)
    no_files = directory is not None and not vocabulary_files(directory)
    if vocab_size and n < MIN_VOCAB_FRACTION * vocab_size and (no_files or directory is None):
        problem = f"the tokenizer has {n} ids but the model's vocab_size is {vocab_size}"
        if no_files:
            return f"{problem}: {no_files_message(directory)}"
        return f"{problem} (an incomplete vocabulary)"
    if not vocab_size and no_files and not (directory / "tokenizer_config.json").is_file():
        return no_files_message(directory)
    return None


def load_checked_tokenizer(
    name: str, ref: str, source: Source, revision: str | None, vocab_size: int | None
) -> Any:
    """``AutoTokenizer.from_pretrained(ref)``, refused (:func:`tokenizer_problem`) where it is
    missing or silently empty.

    Raises:
        ModelLoadError: naming the model, ``ref``, what is missing and how to fix it.
    """
    from transformers import AutoTokenizer

    fix = (
        "Put the model's tokenizer files (tokenizer.json, or vocab.txt / vocab.json + "
        "merges.txt / tokenizer.model) next to its config"
    )
    directory = Path(ref) if Path(ref).is_dir() else None
    with hub_errors(source, revision, "tokenizer"):
        try:
            tok = AutoTokenizer.from_pretrained(ref, revision=revision)
        except (OSError, ValueError, TypeError) as exc:
            problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if directory is not None and not vocabulary_files(directory):
                problem = f"{no_files_message(directory)} ({problem})"
            raise ModelLoadError(
                f"{name}: no usable tokenizer at {ref!r}: {problem}. {fix}."
            ) from exc
    problem = tokenizer_problem(tok, vocab_size, directory)
    if problem:
        raise ModelLoadError(f"{name}: no usable tokenizer at {ref!r}: {problem}. {fix}.")
    return tok

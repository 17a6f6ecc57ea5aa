"""gensim skip-gram (``Word2Vec(sg=1)``, negative sampling) with some word vectors frozen.

:func:`train_skipgram` builds the vocabulary, optionally overwrites the input vectors
(``wv.vectors``) of some words and freezes them through gensim's per-word lock factors:
``model.wv.vectors_lockf`` is by default a 1-element array of 1.0 applied to every word; we
replace it with ``np.ones(len(wv))`` and set the frozen words' entries to 0.0, which
multiplies their gradient updates by 0 (gensim's ``word2vec_inner``: ``syn0[word] +=
lockf[word] * update``), so they stay bit-for-bit unchanged while the output vectors
(``syn1neg``) and all other words learn around them.

Words in ``keep_words`` stay in the vocabulary even below ``min_count`` (gensim ``trim_rule``),
as the thesis extended its 20k vocabulary with the visual words. Pass the same
``keep_words`` to the grounded and the baseline model so that both share one vocabulary.
Determinism: ``workers=1`` and a fixed ``seed`` give identical vectors run to run (gensim 4
initialises vectors with ``numpy.random.default_rng(seed)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from vlprobe.errors import ConfigError


def train_skipgram(
    sentences: list[list[str]],
    *,
    vector_size: int = 300,
    window: int = 5,
    epochs: int = 5,
    min_count: int = 5,
    negative: int = 5,
    alpha: float = 0.025,
    sample: float = 1e-3,
    seed: int = 0,
    frozen: Mapping[str, np.ndarray] | None = None,
    keep_words: Iterable[str] = (),
    workers: int = 1,
) -> Any:
    """Train a skip-gram model; the vectors in ``frozen`` are set before training and locked.

    Args:
        sentences: tokenised sentences.
        vector_size, window, epochs, min_count, negative, alpha, sample, seed, workers:
            gensim ``Word2Vec`` settings (``sg=1``, ``hs=0``).
        frozen: word -> vector (length ``vector_size``) to set and freeze; every word must be
            in the vocabulary (add it to ``keep_words``).
        keep_words: words kept in the vocabulary whatever their count (if they occur).

    Returns:
        the trained ``gensim.models.Word2Vec``.
    """
    from gensim.models import Word2Vec
    from gensim.utils import RULE_DEFAULT, RULE_KEEP

    keep = set(keep_words) | set(frozen or {})

    def trim_rule(word, count, min_count):
        return RULE_KEEP if word in keep else RULE_DEFAULT

    model = Word2Vec(vector_size=int(vector_size), window=int(window), min_count=int(min_count),
                     negative=int(negative), hs=0, sg=1, alpha=float(alpha),
                     sample=float(sample), seed=int(seed), workers=int(workers),
                     epochs=int(epochs))
    model.build_vocab(sentences, trim_rule=trim_rule if keep else None)
    if frozen:
        missing = sorted(w for w in frozen if w not in model.wv.key_to_index)
        if missing:
            raise ConfigError(f"frozen words not in the corpus vocabulary: {missing[:10]}")
        idx = np.asarray([model.wv.key_to_index[w] for w in frozen], dtype=np.int64)
        vecs = np.stack([np.asarray(v, dtype=np.float32) for v in frozen.values()])
        if vecs.shape[1] != model.wv.vector_size:
            raise ConfigError(f"frozen vectors have {vecs.shape[1]} dims, the model "
                              f"{model.wv.vector_size}")
        model.wv.vectors[idx] = vecs
        lockf = np.ones(len(model.wv), dtype=np.float32)
        lockf[idx] = 0.0
        model.wv.vectors_lockf = lockf
    model.train(sentences, total_examples=model.corpus_count, epochs=model.epochs)
    return model

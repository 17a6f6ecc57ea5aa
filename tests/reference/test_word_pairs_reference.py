"""The reference kit's word-pair sets read with the documented pair counts."""

from __future__ import annotations

import numpy as np
import pytest

from vlprobe.analyses.text.text_eval.data import REFERENCE_PAIR_FILES, pair_file
from vlprobe.analyses.text.text_eval.pairs import SCORE_COLUMN, read_word_pairs

# name -> (pairs, exact duplicate rows dropped, score range)
EXPECTED = {
    "men": (3000, 0, (0.0, 50.0)),
    "simlex999": (999, 0, (0.0, 10.0)),
    "wordsim353": (353, 0, (0.0, 10.0)),
    "simverb3500": (3500, 0, (0.0, 10.0)),
    "rg65": (65, 1, (0.0, 4.0)),
    "mc30": (30, 1, (0.0, 4.0)),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reference_pair_counts(reference_dir, name):
    found = pair_file(name, reference_dir)
    assert found is not None
    path, origin = found
    if not path.is_file() or origin != "reference":
        pytest.skip(f"{REFERENCE_PAIR_FILES[name]} not in the reference kit")
    wp = read_word_pairs(path, name, score_col=SCORE_COLUMN.get(name, 2))
    n, dups, (lo, hi) = EXPECTED[name]
    assert len(wp) == n
    assert wp.n_duplicates == dups
    assert lo <= wp.scores.min() and wp.scores.max() <= hi
    assert all(w == w.lower() and " " not in w for w in wp.word1 + wp.word2)


def test_reference_and_gensim_wordsim_agree(reference_dir):
    ref = read_word_pairs(pair_file("wordsim353", reference_dir)[0], "wordsim353")
    gen = read_word_pairs(pair_file("wordsim353", None)[0], "wordsim353")
    a = dict(zip(zip(ref.word1, ref.word2, strict=True), ref.scores, strict=True))
    b = dict(zip(zip(gen.word1, gen.word2, strict=True), gen.scores, strict=True))
    assert a.keys() == b.keys()
    np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a])

"""METEOR through pycocoevalcap's Java METEOR 1.5 (slow: the JVM loads a 60 MB paraphrase
table, about a minute on a busy machine). The no-Java path is a unit test."""

from __future__ import annotations

import pytest

pytest.importorskip("pycocoevalcap.meteor.meteor")

from vlprobe.captioning import metrics as M

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not M.java_available(), reason="METEOR needs Java (not installed)"),
]


def test_meteor_of_identical_and_unrelated_captions():
    refs = {"a": ["a dog runs on the grass ."], "b": ["two men play football in a park"]}
    got = M.score_runs({"same": {"a": "A dog runs on the grass", "b": "two men play football "
                                 "in a park"},
                        "other": {"a": "a red car", "b": "an old house"}}, refs, meteor=True)
    assert got["same"].scores["METEOR"] == pytest.approx(1.0, abs=1e-6)
    assert got["other"].scores["METEOR"] < 0.2
    assert got["same"].tokenizer == "ptb" and len(got["same"].per_image["METEOR"]) == 2

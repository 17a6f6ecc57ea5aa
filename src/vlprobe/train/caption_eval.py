"""The one test evaluation of a trained captioner: every test image decoded with each beam
width of ``decode.beams`` (1 = greedy), scored against all its references, and one control.

Control ``shuffled_images``: greedy captions of the test images' features in a seeded
random order, scored against the TRUE references: what the decoder's language prior earns
without the right image (a caption that ignored the image would score the same as greedy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlprobe.train.captioner import CaptionSplit


def decoding_name(num_beams: int) -> str:
    return "greedy" if num_beams == 1 else f"beam{num_beams}"


def evaluate_test(decoder: Any, tokenizer: Any, test: CaptionSplit, decode: Any, seed: int,
                  progress: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({"test": {decoding: scores}, "controls": {...}, "metric_notes": [...],
    "decoding": {...}}, {"test": {decoding: {image_id: caption}}})``."""
    from vlprobe.captioning.decoding import decode_grid
    from vlprobe.captioning.metrics import score_runs

    runs: dict[str, dict[str, str]] = {}
    for beams in decode.beams:
        name = decoding_name(beams)
        texts = decode_grid(decoder, tokenizer, test.grid, max_length=decode.max_length,
                            num_beams=beams, batch_size=decode.batch_size, progress=progress,
                            desc=f"test {name}")
        runs[name] = dict(zip(test.image_ids, texts))
    perm = np.random.default_rng([int(seed), 7]).permutation(len(test.image_ids))
    shuffled = decode_grid(decoder, tokenizer, test.grid, max_length=decode.max_length,
                           num_beams=1, batch_size=decode.batch_size, rows=perm)
    runs["shuffled_images"] = dict(zip(test.image_ids, shuffled))
    refs = dict(zip(test.image_ids, test.captions))
    scored = score_runs(runs, refs, meteor=decode.meteor)
    notes = next(iter(scored.values())).notes
    tokenizer_used = next(iter(scored.values())).tokenizer
    record = {
        "test": {name: scored[name].scores for name in runs if name != "shuffled_images"},
        "controls": {"shuffled_images_greedy": scored["shuffled_images"].scores},
        "metric_notes": notes, "metric_tokenizer": tokenizer_used,
        "metric_scale": "pycocoevalcap raw values (BLEU/METEOR/ROUGE-L in [0, 1], CIDEr in "
                        "[0, 10]); papers print 100 x",
        "decoding": {"max_length": decode.max_length, "max_length_counts": "<bos> included",
                     "beam_search": "transformers generate, length_penalty 1.0, "
                                    "early_stopping False", "mean_words": {
                         name: float(np.mean([len(t.split()) for t in texts.values()]))
                         for name, texts in runs.items()}},
    }
    generations = {"test": {name: runs[name] for name in runs if name != "shuffled_images"}}
    return record, generations

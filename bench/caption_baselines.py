"""Non-neural caption baselines on the Flickr8k 1k test images, scored like the trained
captioner (pycocoevalcap against the 5 references; never run by the tests):

- ``most_frequent``: one caption for every image, the most frequent TRAIN caption
  (lower-cased, final period dropped): what the metrics give a caption that ignores the image;
- ``nn_consensus``: nearest-neighbour retrieval (Devlin et al. 2015, "Language models for
  image captioning: the quirks and what works"): the ``k`` training images closest to the
  test image (cosine of EfficientNet-Lite0's pooled head, i.e. the mean of the same cached
  ``vision.head`` grid7 features the captioner reads) pool their captions, and the caption
  with the highest mean unigram+bigram F1 against the others (a consensus reranking; hand
  written: it is a few lines, and pycocoevalcap per candidate pair would take hours) is
  returned.

Features come from the activation store through the captioner config's own extraction
(:func:`vlprobe.train.caption_run.caption_splits`), so nothing is recomputed after training.

Usage::

    VLPROBE_REFERENCE=/work/shared/reference .venv/bin/python bench/caption_baselines.py \
        [examples/train_captioner.yaml] [--k 5] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from itertools import pairwise
from pathlib import Path

import numpy as np


def _norm(caption: str) -> str:
    return " ".join(caption.lower().replace(" .", "").rstrip(".").split())


def _grams(words: list[str]) -> Counter:
    return Counter(words) + Counter(pairwise(words))


def _f1(a: Counter, b: Counter) -> float:
    overlap = sum((a & b).values())
    if not overlap:
        return 0.0
    p, r = overlap / sum(a.values()), overlap / sum(b.values())
    return 2 * p * r / (p + r)


def consensus(captions: list[str]) -> str:
    """The caption with the highest mean n-gram F1 against the other captions."""
    grams = [_grams(_norm(c).split()) for c in captions]
    scores = [np.mean([_f1(g, h) for j, h in enumerate(grams) if j != i])
              for i, g in enumerate(grams)]
    return _norm(captions[int(np.argmax(scores))])


def pooled(grid: np.ndarray, cells: int) -> np.ndarray:
    """``[N, C*g*g]`` channel-major grid -> L2-normalised ``[N, C]`` mean over cells."""
    x = np.asarray(grid, np.float32).reshape(len(grid), -1, cells).mean(axis=2)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def main() -> None:
    from dataclasses import asdict

    from vlprobe.captioning.metrics import score_runs
    from vlprobe.extract import ActivationStore
    from vlprobe.models import ModelSpec, load_model
    from vlprobe.pooling import grid_size
    from vlprobe.settings import cache_dir
    from vlprobe.train import load_train_config
    from vlprobe.train.caption_run import caption_splits

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="examples/train_captioner.yaml")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cfg = load_train_config(args.config)
    tower = load_model(ModelSpec(**asdict(cfg.image_tower.model)))
    data, _ = caption_splits(cfg, tower, ActivationStore(root=cache_dir() / "activations"),
                             progress=False)
    train, test = data["train"], data["test"]
    cells = grid_size(cfg.image_tower.pooling) ** 2
    counts = Counter(_norm(c) for caps in train.captions for c in caps)
    frequent, n_frequent = counts.most_common(1)[0]
    sims = pooled(test.grid, cells) @ pooled(train.grid, cells).T  # [N_test, N_train]
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, : args.k]
    runs = {
        "most_frequent": {i: frequent for i in test.image_ids},
        "nn_consensus": {i: consensus([c for j in row for c in train.captions[j]])
                         for i, row in zip(test.image_ids, nearest)},
    }
    scored = score_runs(runs, dict(zip(test.image_ids, test.captions)), meteor=True)
    out = {name: {"scores": s.scores, "mean_words": float(np.mean(
        [len(t.split()) for t in runs[name].values()]))} for name, s in scored.items()}
    out["most_frequent"]["caption"] = f"{frequent} ({n_frequent} x in train)"
    out["nn_consensus"]["k"] = args.k
    for name, res in out.items():
        print(name, ", ".join(f"{k} {100 * v:.1f}" for k, v in res["scores"].items()
                              if v is not None), {k: v for k, v in res.items() if k != "scores"})
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

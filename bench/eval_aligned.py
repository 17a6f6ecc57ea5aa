"""Controls and out-of-domain retrieval of trained dual encoders (issue 11; never run by the
tests): for each checkpoint and each dataset, Recall@1/5/10 both ways of the trained heads,
of the untrained heads (the seeded initialisation training started from, same train-split
standardisation) and of chance (exact expectation), via
:func:`vlprobe.train.evaluate.evaluate_checkpoint`.

Datasets (reference kit, ``VLPROBE_REFERENCE``):

- ``flickr8k``: the official 1k test images x 5k captions (in domain; recomputes the training
  record's test numbers from the checkpoint alone);
- ``coco_val``: the COCO val2017 images of the kit (159) with ALL their captions
  (``captions_val2017_full.json``): out of domain;
- ``coco_train``: the kit's 80 COCO train2017 images with their captions: out of domain.

Usage::

    VLPROBE_REFERENCE=/work/shared/reference .venv/bin/python bench/eval_aligned.py \
        /work/models/aligned_effnet_minilm [/work/models/devise_effnet_minilm ...] \
        [--datasets flickr8k coco_val coco_train] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DATASETS = {
    "flickr8k": ({"loader": "flickr8k", "path": "captions/flickr8k"}, "test"),
    "coco_val": ({"loader": "coco_captions", "path": "captions/coco_mini",
                  "options": {"annotations": {"val": "annotations/captions_val2017_full.json"},
                              "splits": ["val"]}}, "validation"),
    "coco_train": ({"loader": "coco_captions", "path": "captions/coco_mini",
                    "options": {"splits": ["train"]}}, "train"),
}


def main() -> None:
    from vlprobe.data import DatasetSpec, load_dataset
    from vlprobe.settings import reference_dir
    from vlprobe.train.evaluate import evaluate_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--gallery", type=int, default=None,
                    help="also report the trained heads on 20 random galleries of this many "
                         "images (e.g. 159: Flickr8k at the size of the COCO val gallery)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    ref = reference_dir()
    out: dict[str, dict[str, object]] = {}
    for ckpt in args.checkpoints:
        out[ckpt] = {}
        for name in args.datasets:
            entry, split = DATASETS[name]
            spec = DatasetSpec(name=name, **{**entry, "path": str(Path(ref) / entry["path"])})
            t0 = time.perf_counter()
            res = evaluate_checkpoint(ckpt, load_dataset(spec)[split], progress=False,
                                      gallery=args.gallery)
            res["seconds"] = time.perf_counter() - t0
            out[ckpt][name] = res
            row = ", ".join(f"{k} {v:.1f}" for k, v in res["trained"].items())
            print(f"{Path(ckpt).name} {name} ({res['n_images']} images, {res['n_texts']} "
                  f"captions): {row}", flush=True)
            if "trained_at_gallery" in res:
                g = res["trained_at_gallery"]
                print(f"    trained, {g['n_images']}-image galleries (mean +- sd of 20): " +
                      ", ".join(f"{k} {v:.1f} +- {g['sd'][k]:.1f}"
                                for k, v in g["mean"].items()))
            for ctl in ("untrained_heads", "chance"):
                print(f"    {ctl}: " + ", ".join(f"{k} {v:.2f}" for k, v in res[ctl].items()))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
